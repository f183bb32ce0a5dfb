"""llm-compressor plumbing shared by the AWQ and GPTQ exporters: calibration data, group size, oneshot.

    texts = calibration_texts(tokenizer, examples, n=32)     # the run's own rows, in its chat template
    compress(src_dir, out_dir, recipe_for(model, group_size), texts)

Output is a compressed-tensors folder (W4A16, int4 weights in groups) that vLLM loads directly and
transformers decompresses on load. llm-compressor (compressed-tensors 0.19) and vLLM (0.17) cannot
share one environment (FACTS.md): this runs in the appliance venv, vLLM reads the result in its own.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Callable, Iterator

from appliance.errors import ArtifactError, MissingDependencyError

GROUP_SIZES = (128, 64, 32)
DEFAULT_MAX_SEQ_LENGTH = 512  # calibration rows are truncated to this many tokens


def pick_group_size(model, requested: int = 0) -> int:
    """`requested` if it divides every quantized Linear's input width, else the largest of 128/64/32 that does."""
    import torch

    widths = {m.in_features for name, m in model.named_modules()
              if isinstance(m, torch.nn.Linear) and not name.endswith("lm_head")}
    if requested:
        bad = sorted(w for w in widths if w % requested)
        if bad:
            raise ArtifactError(f"group_size {requested} does not divide the Linear input widths {bad}",
                                "use --set group_size=0 to pick one automatically")
        return requested
    for g in GROUP_SIZES:
        if all(w % g == 0 for w in widths):
            return g
    raise ArtifactError(f"no group size in {GROUP_SIZES} divides every Linear input width {sorted(widths)}",
                        "this model cannot be exported as W4A16 in groups; use a GGUF format instead")


def w4a16_scheme(group_size: int, *, symmetric: bool):
    """compressed-tensors' W4A16 preset (int4 weights, 16-bit activations) with our group size."""
    from compressed_tensors.quantization import preset_name_to_scheme

    scheme = preset_name_to_scheme("W4A16" if symmetric else "W4A16_ASYM", ["Linear"])
    scheme.weights.group_size = group_size
    return scheme


def calibration_texts(tokenizer, examples: list, n: int) -> list[str]:
    """The first `n` conversations (whole, assistant turns included) rendered with the chat template."""
    from appliance.data import render

    msgs = [e.messages if hasattr(e, "messages") else e for e in examples[:n]]
    return [render(tokenizer, m) for m in msgs]


def compress(src: Path, out: Path, make_recipe: Callable[[object, int], list], texts: list[str], *,
             group_size: int = 0, max_seq_length: int | None = None) -> dict:
    """Run llm-compressor `oneshot` on the HF folder `src` and save compressed-tensors to `out`.

    `make_recipe(model, group_size)` returns the modifiers. Returns {"group_size", "calibration_samples", "seconds"}.
    """
    try:
        import torch
        from datasets import Dataset
        from llmcompressor import oneshot
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ModuleNotFoundError as e:
        raise MissingDependencyError(f"AWQ/GPTQ export needs '{e.name}' (llmcompressor)",
                                     "run `bash bootstrap.sh` (the appliance venv has llmcompressor)") from None
    if not texts:
        raise ArtifactError("no calibration rows for AWQ/GPTQ", "the run's training data is empty; pass --run with data")
    max_seq_length = max_seq_length or DEFAULT_MAX_SEQ_LENGTH
    t0 = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(src)
    model = AutoModelForCausalLM.from_pretrained(src, dtype="auto")  # keep the merged model's 16-bit dtype
    if torch.cuda.is_available():
        model = model.to("cuda")
    group = pick_group_size(model, group_size)
    enc = tokenizer(texts, add_special_tokens=False, truncation=True, max_length=max_seq_length)
    dataset = Dataset.from_dict({"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]})
    with _cpu_safe_pinning():
        oneshot(model=model, tokenizer=tokenizer, dataset=dataset, recipe=make_recipe(model, group),
                max_seq_length=max_seq_length, num_calibration_samples=len(texts), shuffle_calibration_samples=False)
    model.save_pretrained(out, save_compressed=True)
    tokenizer.save_pretrained(out)
    return {"group_size": group, "calibration_samples": len(texts), "seconds": round(time.perf_counter() - t0, 1)}


@contextlib.contextmanager
def _cpu_safe_pinning() -> Iterator[None]:
    """AWQ pins cached activations for faster host-to-device copies. On a CPU-only torch pinning raises
    "Cannot access accelerator device" (FACTS.md). With no accelerator there is no transfer to speed up,
    so pinning becomes a no-op for the duration of the call (and is restored after)."""
    import torch
    from llmcompressor.pipelines.cache import IntermediatesCache

    if torch.accelerator.is_available():
        yield
        return
    original = IntermediatesCache.pin_memory
    IntermediatesCache.pin_memory = lambda self, batch_index, input_names=None: None
    try:
        yield
    finally:
        IntermediatesCache.pin_memory = original
