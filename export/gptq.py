"""GPTQ W4A16 (symmetric int4 weights, groups) with llm-compressor; output in compressed-tensors."""

from __future__ import annotations

from pathlib import Path

from export.compress import compress, w4a16_scheme


def recipe(model, group_size: int) -> list:
    from llmcompressor.modifiers.gptq import GPTQModifier

    return [GPTQModifier(config_groups={"group_0": w4a16_scheme(group_size, symmetric=True)}, ignore=["lm_head"])]


def export_gptq(src: Path, out: Path, texts: list[str], group_size: int = 0, max_seq_length: int | None = None) -> dict:
    """Quantize the HF folder `src` into `out`; returns {"group_size", "calibration_samples", "seconds"}."""
    return compress(src, out, recipe, texts, group_size=group_size, max_seq_length=max_seq_length)
