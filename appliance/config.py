"""Typed configuration for train / export / serve.

Each section is a dataclass whose fields carry their documentation (`doc(...)`). A config comes
from defaults, then an optional YAML file, then `--set key=value` overrides, and is validated as a
whole: every problem is reported at once, naming the key and where it came from.

    cfg = load(TrainConfig, "examples/train.yaml", ["lr=1e-4", "max_steps=40"])

A YAML file may hold the section's keys at top level, or under a `train:` / `export:` / `serve:`
key (so one file can configure every command).
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

from appliance.errors import ConfigError

DEFAULT_MODEL = "embedded:smollm2-135m-instruct"
SAMPLE_DATASET = "sample"


def doc(default: Any, text: str, **kw: Any) -> Any:
    """A dataclass field with its documentation attached (shown by `appliance <cmd> --help-config`)."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata={"doc": text, **kw})
    return field(default=default, metadata={"doc": text, **kw})


@dataclass
class TrainConfig:
    """QLoRA / LoRA supervised fine-tuning."""

    model: str = doc(DEFAULT_MODEL, "Base model: a local HF folder, a hub id (online only), or embedded:smollm2-135m-instruct.")
    dataset: str = doc(SAMPLE_DATASET, "Training JSONL file (messages, ShareGPT or Alpaca rows), or 'sample' for the bundled demo data.")
    eval_dataset: Optional[str] = doc(None, "Held-out JSONL for eval loss and score. Default: the sample's held-out split, or eval_fraction of dataset.")
    eval_fraction: float = doc(0.05, "Fraction of dataset held out for eval when eval_dataset is not given (0 disables).")
    format: Literal["auto", "messages", "sharegpt", "alpaca"] = doc("auto", "Dataset format; 'auto' detects it per file.")
    skip_invalid: bool = doc(False, "Drop invalid rows (and report how many) instead of failing.")
    run_name: Optional[str] = doc(None, "Name of the run directory under runs/. Default: <model>-<timestamp>.")
    method: Literal["auto", "qlora", "lora"] = doc("auto", "qlora = 4-bit NF4 base (bitsandbytes) + LoRA; lora = 16-bit base + LoRA; auto = qlora on GPU, lora on CPU.")
    lora_r: int = doc(16, "LoRA rank.")
    lora_alpha: int = doc(32, "LoRA alpha (scale = alpha / r).")
    lora_dropout: float = doc(0.0, "Dropout on the LoRA path.")
    target_modules: str = doc("all-linear", "Modules that get LoRA: 'all-linear' or a comma-separated list of names.")
    max_seq_len: int = doc(1024, "Longest tokenized example; longer ones are truncated (and counted).")
    packing: bool = doc(False, "Pack several examples per row; attention never crosses example boundaries, position ids restart.")
    batch_size: int = doc(8, "Micro-batch size (rows per forward pass).")
    grad_accum: int = doc(1, "Gradient accumulation steps per optimizer step.")
    epochs: float = doc(1.0, "Passes over the training data (ignored when max_steps > 0).")
    max_steps: int = doc(-1, "Optimizer steps to run; -1 = derive from epochs.")
    lr: float = doc(2e-4, "Peak learning rate.")
    warmup_ratio: float = doc(0.05, "Fraction of steps with linear warmup.")
    lr_scheduler: Literal["cosine", "linear", "constant"] = doc("cosine", "Learning-rate schedule after warmup.")
    weight_decay: float = doc(0.0, "AdamW weight decay.")
    max_grad_norm: float = doc(1.0, "Gradient clipping norm (0 disables).")
    optimizer: Literal["auto", "adamw", "paged_adamw_8bit"] = doc("auto", "auto = fused AdamW on GPU (paged 8-bit AdamW when its fp32 states would pass 2 GiB), torch AdamW on CPU.")
    gradient_checkpointing: Literal["auto", "on", "off"] = doc("auto", "Recompute activations in backward to save memory; auto = on for GPU QLoRA.")
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = doc("auto", "Compute dtype; auto = bfloat16 on GPUs that support it, float32 on CPU.")
    kernels: Literal["auto", "off"] = doc("auto", "Speed-ups (fused kernels, no fp32 upcasts) where the hardware allows; printed at start.")
    eval_every: int = doc(0, "Evaluate every N optimizer steps (0 = only at the end).")
    save_every: int = doc(50, "Save a checkpoint every N optimizer steps (0 = only at the end).")
    keep_last: int = doc(2, "Checkpoints to keep (oldest deleted first).")
    log_every: int = doc(1, "Log metrics every N optimizer steps.")
    seed: int = doc(42, "Random seed (data order, LoRA init).")
    gpus: int = doc(1, "GPUs to train on; >1 launches FSDP + QLoRA through accelerate.")


@dataclass
class ExportConfig:
    """Export a merged model to deployable, signed artifacts."""

    formats: list[str] = doc(["gguf:q4_k_m"], "Formats to write: gguf:q4_k_m, gguf:q8_0, gguf:f16, awq, gptq, hf (plain copy of the HF folder).")
    calibration_samples: int = doc(64, "Rows of the run's training data used to calibrate AWQ / GPTQ.")
    group_size: int = doc(0, "AWQ/GPTQ quantization group size; 0 = the largest of 128/64/32 that divides every Linear input width.")
    eval_samples: int = doc(50, "Held-out rows used to score each artifact (0 skips scoring).")
    sign: bool = doc(True, "Sign each artifact with the workspace key (created on first use).")


@dataclass
class ServeConfig:
    """Gateway + engine."""

    host: str = doc("127.0.0.1", "Gateway bind address (use 0.0.0.0 in a container).")
    port: int = doc(8000, "Gateway port.")
    strategy: Literal["auto", "blue-green", "reload", "restart"] = doc(
        "auto", "Hot-swap strategy: blue-green (two engines side by side), reload (in-place weights), restart (hold requests); auto picks by memory.")
    max_model_len: int = doc(2048, "Engine context length.")
    dtype: str = doc("auto", "Engine dtype (vLLM --dtype).")
    gpu_memory_utilization: float = doc(0.85, "vLLM GPU memory share for one engine (split between two during blue-green).")
    cpu_kv_cache_gib: int = doc(1, "vLLM-CPU KV cache size in GiB.")
    drain_timeout_s: float = doc(60.0, "How long in-flight requests on the old engine may run before it is stopped.")
    start_timeout_s: float = doc(300.0, "How long a candidate engine may take to become healthy.")
    enable_lora: bool = doc(True, "Start vLLM with runtime LoRA loading (deploy --adapter).")
    max_lora_rank: int = doc(16, "Largest LoRA rank the engine accepts at runtime.")


SECTIONS: dict[type, str] = {TrainConfig: "train", ExportConfig: "export", ServeConfig: "serve"}


# --------------------------------------------------------------------------------------------- load

def load(cls: type, path: str | Path | None = None, overrides: list[str] | None = None, **values: Any):
    """Defaults <- YAML file <- `key=value` overrides <- keyword values; all problems reported at once."""
    problems: list[str] = []
    raw: dict[str, tuple[Any, str]] = {}
    if path:
        for k, v in _read_yaml(cls, Path(path)).items():
            raw[k] = (v, f"{path}: '{k}'")
    for item in overrides or []:
        if "=" not in item:
            problems.append(f"--set {item!r}: expected key=value")
            continue
        k, v = item.split("=", 1)
        k = k.strip()
        section = SECTIONS.get(cls, "")
        if section and k.startswith(section + "."):
            k = k[len(section) + 1:]
        raw[k] = (_parse_scalar(v), f"--set {k}")
    for k, v in values.items():
        if v is not None:
            raw[k] = (v, f"--{k.replace('_', '-')}")

    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for key, (value, where) in raw.items():
        if key not in fields:
            close = difflib.get_close_matches(key, fields, n=1)
            problems.append(f"{where}: unknown key" + (f" (did you mean '{close[0]}'?)" if close else ""))
            continue
        try:
            kwargs[key] = _coerce(value, hints[key])
        except ValueError as e:
            problems.append(f"{where}: {e}")
    cfg = cls(**kwargs)  # keys with type problems keep their defaults, so the checks below still run
    problems += validate(cfg)
    if problems:
        raise ConfigError(problems, source=cls.__name__,
                          hint=f"see `appliance {SECTIONS.get(cls, '')} --help-config` for every key")
    return cfg


def _read_yaml(cls: type, path: Path) -> dict[str, Any]:
    import yaml

    if not path.is_file():
        raise ConfigError([f"{path}: file not found"], source="config")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError([f"{path}: not valid YAML: {e}"], source="config") from None
    if not isinstance(data, dict):
        raise ConfigError([f"{path}: expected a mapping of keys to values"], source="config")
    section = SECTIONS.get(cls)
    if section and isinstance(data.get(section), dict):
        return data[section]
    others = set(SECTIONS.values()) - {section}
    return {k: v for k, v in data.items() if k not in others}


def _parse_scalar(text: str) -> Any:
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def _coerce(value: Any, tp: Any) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0])
    if origin is Literal:
        if isinstance(value, bool) and ("on" if value else "off") in args:
            value = "on" if value else "off"  # YAML 1.1 reads a bare on/off as a boolean
        if value not in args:
            raise ValueError(f"{value!r} is not one of {', '.join(map(str, args))}")
        return value
    if origin is list:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list):
            raise ValueError(f"expected a list, got {value!r}")
        return [_coerce(v, args[0]) for v in value]
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "1", "on", "false", "no", "0", "off"):
            return value.lower() in ("true", "yes", "1", "on")
        raise ValueError(f"expected true/false, got {value!r}")
    if tp in (int, float) and isinstance(value, str):
        try:  # YAML 1.1 reads "1e-4" as a string; accept what Python accepts as a number
            value = float(value) if tp is float else int(value)
        except ValueError:
            pass
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
            raise ValueError(f"expected an integer, got {value!r}")
        return int(value)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, (str, int, float)):
            raise ValueError(f"expected a string, got {value!r}")
        return str(value)
    return value


def validate(cfg: Any) -> list[str]:
    """Cross-field checks; returns every problem found (empty when valid)."""
    p: list[str] = []
    if isinstance(cfg, TrainConfig):
        for name in ("lora_r", "lora_alpha", "max_seq_len", "batch_size", "grad_accum", "gpus"):
            if getattr(cfg, name) < 1:
                p.append(f"{name}: must be >= 1 (got {getattr(cfg, name)})")
        if not 0 <= cfg.eval_fraction < 1:
            p.append(f"eval_fraction: must be in [0, 1) (got {cfg.eval_fraction})")
        if not 0 <= cfg.warmup_ratio < 1:
            p.append(f"warmup_ratio: must be in [0, 1) (got {cfg.warmup_ratio})")
        if not 0 <= cfg.lora_dropout < 1:
            p.append(f"lora_dropout: must be in [0, 1) (got {cfg.lora_dropout})")
        if cfg.lr <= 0:
            p.append(f"lr: must be > 0 (got {cfg.lr})")
        if cfg.max_steps == 0 or cfg.max_steps < -1:
            p.append(f"max_steps: must be -1 (use epochs) or >= 1 (got {cfg.max_steps})")
        if cfg.max_steps == -1 and cfg.epochs <= 0:
            p.append(f"epochs: must be > 0 when max_steps is -1 (got {cfg.epochs})")
        if cfg.keep_last < 1:
            p.append(f"keep_last: must be >= 1 (got {cfg.keep_last})")
        if cfg.run_name and ("/" in cfg.run_name or cfg.run_name.startswith(".")):
            p.append(f"run_name: must be a plain directory name (got {cfg.run_name!r})")
    elif isinstance(cfg, ExportConfig):
        allowed = {"gguf:q4_k_m", "gguf:q8_0", "gguf:f16", "awq", "gptq", "hf"}
        bad = [f for f in cfg.formats if f not in allowed]
        if bad:
            p.append(f"formats: unknown {', '.join(bad)}; choose from {', '.join(sorted(allowed))}")
        if not cfg.formats:
            p.append("formats: give at least one format")
        if cfg.calibration_samples < 1:
            p.append(f"calibration_samples: must be >= 1 (got {cfg.calibration_samples})")
        if cfg.group_size not in (0, 32, 64, 128):
            p.append(f"group_size: must be 0 (auto), 32, 64 or 128 (got {cfg.group_size})")
    elif isinstance(cfg, ServeConfig):
        if not 0 < cfg.port < 65536:
            p.append(f"port: must be 1-65535 (got {cfg.port})")
        if not 0 < cfg.gpu_memory_utilization <= 1:
            p.append(f"gpu_memory_utilization: must be in (0, 1] (got {cfg.gpu_memory_utilization})")
    return p


def describe(cls: type) -> str:
    """Every key of a section with its type, default and documentation."""
    hints = typing.get_type_hints(cls)
    lines = [f"{SECTIONS.get(cls, cls.__name__)}: {cls.__doc__.strip()}"]
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        tp = hints[f.name]
        tname = getattr(tp, "__name__", None) or str(tp).replace("typing.", "")
        lines.append(f"  {f.name} ({tname}, default {default!r})\n      {f.metadata.get('doc', '')}")
    return "\n".join(lines)


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)
