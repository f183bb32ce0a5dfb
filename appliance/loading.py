"""Load a base model for training, merging or chatting: 4-bit NF4 (QLoRA) or 16-bit (LoRA).

    method, why = pick_method(cfg.method, device)         # "qlora" on CUDA, "lora" on CPU for "auto"
    dtype = pick_dtype(cfg.dtype, device)                  # bf16 on capable GPUs, fp32 on CPU
    model = load_base(path, method, dtype, device)
    tok = load_tokenizer(path)

QLoRA uses bitsandbytes NF4 with double quantization; the 4-bit weights are stored in the compute
dtype (`bnb_4bit_quant_storage`) so that FSDP can shard them like any other parameter.
"""

from __future__ import annotations

from pathlib import Path

from appliance.errors import ConfigError, MissingDependencyError


def pick_method(method: str, device: str) -> tuple[str, str]:
    """The training method to use and a sentence saying why."""
    if method == "qlora":
        why = "asked for qlora"
        if device != "cuda":
            why += " (bitsandbytes NF4 on CPU works but is slow)"
        return "qlora", why
    if method == "lora":
        return "lora", "asked for lora (16-bit base)"
    if device == "cuda":
        return "qlora", "auto: a CUDA GPU is present, so the base is loaded in 4-bit NF4 (QLoRA)"
    return "lora", "auto: no CUDA GPU, so plain LoRA on a 16/32-bit base (NF4 on CPU is slow)"


def pick_dtype(dtype: str, device: str):
    """The compute dtype: bf16 on GPUs that support it (else fp16), fp32 on CPU unless asked."""
    import torch

    if dtype != "auto":
        return getattr(torch, dtype)
    if device == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def load_tokenizer(path: str | Path):
    from transformers import AutoTokenizer

    # BPE tokenizers must not "clean up" spaces before punctuation (transformers warns on every load)
    tok = AutoTokenizer.from_pretrained(str(path), clean_up_tokenization_spaces=False)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    if not getattr(tok, "chat_template", None):
        raise ConfigError([f"{path}: the tokenizer has no chat template"], source="model",
                          hint="use an instruct/chat model (its tokenizer_config.json or chat_template.jinja sets one)")
    return tok


def load_base(path: str | Path, method: str, dtype, device: str | None = None):
    """A freshly loaded base model; 4-bit NF4 for qlora, `dtype` weights for lora.

    `device` is where the weights go ("cuda:0", "cpu"); None leaves the choice to transformers.
    """
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # one "Loading weights" bar per load floods logs
    kwargs: dict = {"dtype": dtype}
    if device is not None:
        kwargs["device_map"] = {"": device}
    if method == "qlora":
        kwargs["quantization_config"] = nf4_config(dtype)
    return AutoModelForCausalLM.from_pretrained(str(path), **kwargs)


def nf4_config(dtype):
    try:
        import bitsandbytes  # noqa: F401
    except ImportError as e:
        raise MissingDependencyError("QLoRA needs bitsandbytes", "pip install bitsandbytes==0.50.2, or use --method lora") from e
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=dtype,
        bnb_4bit_quant_storage=dtype,
    )


def load_with_adapter(base_path: str | Path, adapter_path: str | Path, dtype, device: str | None = None):
    """A 16-bit base with a LoRA adapter applied (unmerged): for chat, scoring and merge checks."""
    from peft import PeftModel

    base = load_base(base_path, "lora", dtype, device)
    return PeftModel.from_pretrained(base, str(adapter_path))
