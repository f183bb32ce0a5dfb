"""AWQ W4A16 (activation-aware scaling, then asymmetric int4 weights in groups) with llm-compressor.

AutoAWQ is deprecated upstream; llm-compressor's AWQ transform + QuantizationModifier replaces it and
writes compressed-tensors, which vLLM loads. On a CPU-only torch, export.compress turns off the
activation pinning that otherwise fails there.
"""

from __future__ import annotations

from pathlib import Path

from export.compress import compress, w4a16_scheme


def recipe(model, group_size: int) -> list:
    from llmcompressor.modifiers.quantization import QuantizationModifier
    from llmcompressor.modifiers.transform import AWQModifier

    return [AWQModifier(duo_scaling=True),
            QuantizationModifier(config_groups={"group_0": w4a16_scheme(group_size, symmetric=False)},
                                 ignore=["lm_head"])]


def export_awq(src: Path, out: Path, texts: list[str], group_size: int = 0, max_seq_length: int | None = None) -> dict:
    """Quantize the HF folder `src` into `out`; returns {"group_size", "calibration_samples", "seconds"}."""
    return compress(src, out, recipe, texts, group_size=group_size, max_seq_length=max_seq_length)
