"""Training speed-ups chosen per machine: what `appliance train` applies and prints at start.

The trainer calls, in order:

    plan = choose(cfg, device, quantized)  # decide (no side effects)
    before_load(plan, model_type)          # class-level patches (fused kernels) before from_pretrained
    model = after_load(model, plan)        # checkpointing, input grads (k-bit prep only when asked)
    print(plan.describe())

What a CUDA plan turns on (each measured in bench/results/qlora_speed.md):

- no fp32 upcast: peft's `prepare_model_for_kbit_training` casts every bf16 norm / embedding /
  lm_head to fp32, which costs memory and time; bf16 needs no such help. Off = that upcast is
  skipped, gradient checkpointing and input grads are set up directly.
- compiled decoder layers: `torch.compile` of each decoder layer (one graph reused by all of
  them). At batch 1 plain eager training is bound by Python / launch overhead, not the GPU;
  compiling fuses the norms, rotary, SwiGLU and LoRA glue and cuts that overhead (1.7x at batch 1).
  The first steps are slower while it compiles. A layer that fails to compile runs eagerly.
  `APPLIANCE_COMPILE=0` turns it off.
- fused loss (Liger's fused linear cross-entropy, where installed and the model type is
  supported): never materialises the (tokens x vocab) fp32 logits. Used when the trainer calls
  the model with `labels=` in training mode.
- fused kernels (Liger RMSNorm, SwiGLU, RoPE): used when layers are not compiled (Inductor fuses
  these itself, and Liger's RMSNorm does not trace under it).
- fused LoRA path: peft computes each LoRA delta in fp32 on the full output width (cast x,
  two fp32 matmuls, scale, cast back, add, plus a defensive clone of the 4-bit output). We keep
  the fp32 adapter weights (the optimizer's master copy) but run the delta in the compute dtype
  and add it inside one GEMM: `addmm(base_out, x @ (s*A)^T, B^T)`. Plain vanilla LoRA only; any
  other case (DoRA, several adapters, merged, mixed-batch) takes peft's own forward.
- selective checkpointing: `checkpoint_skip` decoder layers keep their activations instead of
  recomputing them (off by default; for users with memory to spare).

`kernels: off` in the config gives the plain transformers + peft path (fp32 upcast, no fusion).
On CPU everything stays off except what is plainly correct there (no fp32 upcast: the CPU path
computes in fp32 already).
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass, field

# transformers model_type -> liger-kernel patch function name (liger_kernel.transformers)
LIGER_PATCHES = {
    "llama": "apply_liger_kernel_to_llama",
    "qwen2": "apply_liger_kernel_to_qwen2",
    "qwen3": "apply_liger_kernel_to_qwen3",
    "mistral": "apply_liger_kernel_to_mistral",
    "gemma": "apply_liger_kernel_to_gemma",
    "gemma2": "apply_liger_kernel_to_gemma2",
    "phi3": "apply_liger_kernel_to_phi3",
    "granite": "apply_liger_kernel_to_granite",
    "olmo2": "apply_liger_kernel_to_olmo2",
}


@dataclass
class SpeedPlan:
    device: str = "cpu"
    quantized: bool = False
    gradient_checkpointing: bool = False
    upcast_fp32: bool = False  # peft's prepare_model_for_kbit_training upcasts norms/embeddings to fp32
    fused_kernels: bool = False  # Liger RMSNorm / SwiGLU / RoPE
    fused_loss: bool = False  # Liger fused linear cross-entropy (no fp32 logits)
    fused_lora: bool = False  # LoRA delta in the compute dtype, added in the base GEMM's epilogue
    checkpoint_skip: int = 0  # last N decoder layers run without recompute (needs memory)
    compile_layers: bool = False  # torch.compile each decoder layer
    compile_backend: str = "inductor"
    notes: list[str] = field(default_factory=list)

    def describe(self) -> str:
        on = [n for n, v in (("gradient checkpointing", self.gradient_checkpointing),
                             ("fp32 upcast of norms", self.upcast_fp32),
                             ("fused kernels (Liger)", self.fused_kernels),
                             ("fused linear cross-entropy", self.fused_loss),
                             ("fused LoRA path", self.fused_lora),
                             (f"no recompute in last {self.checkpoint_skip} layers", self.checkpoint_skip > 0),
                             ("compiled decoder layers (first steps slower)", self.compile_layers)) if v]
        text = f"speed-ups on {self.device}: {', '.join(on) if on else 'none'}"
        return text + "".join(f"\n  - {n}" for n in self.notes)


def liger_available() -> bool:
    """liger-kernel and triton importable (a CUDA torch ships triton; the CPU build does not)."""
    return importlib.util.find_spec("liger_kernel") is not None and importlib.util.find_spec("triton") is not None


def choose(cfg, device: str, quantized: bool) -> SpeedPlan:
    """Decide the speed-ups for `cfg` on `device` ('cuda' / 'cpu' / 'mps'); no side effects."""
    kernels = getattr(cfg, "kernels", "auto")
    ckpt = {"on": True, "off": False}.get(getattr(cfg, "gradient_checkpointing", "auto"), device == "cuda")
    plan = SpeedPlan(device=device, quantized=quantized, gradient_checkpointing=ckpt)
    if kernels == "off":
        plan.upcast_fp32 = quantized  # the plain transformers + peft QLoRA recipe
        plan.notes.append("kernels: off -> plain transformers + peft path")
        return plan
    if device != "cuda":
        return plan
    plan.fused_lora = True
    plan.compile_layers = os.environ.get("APPLIANCE_COMPILE", "1") != "0"
    if liger_available():
        plan.fused_loss = True
        plan.fused_kernels = not plan.compile_layers
    else:
        plan.notes.append("fused loss unavailable: `pip install liger-kernel` for ~35% less memory")
    return plan


def before_load(plan: SpeedPlan, model_type: str) -> None:
    """Class-level patches that must happen before the model is instantiated."""
    fast_lora(plan.fused_lora)
    if not (plan.fused_kernels or plan.fused_loss):
        return
    name = LIGER_PATCHES.get(model_type)
    if name is None:
        plan.fused_kernels = plan.fused_loss = False
        plan.notes.append(f"Liger: model type {model_type!r} not supported, using plain modules and loss")
        return
    import inspect

    import liger_kernel.transformers as lk

    patch = getattr(lk, name)
    k = plan.fused_kernels
    wanted = {"rope": k, "rms_norm": k, "swiglu": k, "geglu": k, "cross_entropy": False,
              "fused_linear_cross_entropy": plan.fused_loss}
    params = inspect.signature(patch).parameters
    patch(**{k: v for k, v in wanted.items() if k in params})
    parts = (["RMSNorm", "SwiGLU", "RoPE"] if k else []) + (["fused linear cross-entropy"] if plan.fused_loss else [])
    plan.notes.append(f"Liger {name.removeprefix('apply_liger_kernel_to_')}: {', '.join(parts)}")


def after_load(model, plan: SpeedPlan):
    """Prepare a freshly loaded (possibly 4-bit) base model for LoRA training."""
    if plan.upcast_fp32:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=plan.gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False})
    elif plan.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    if plan.gradient_checkpointing and plan.checkpoint_skip > 0:
        layers = decoder_layers(model)
        for layer in layers[len(layers) - plan.checkpoint_skip:]:
            layer.gradient_checkpointing = False
    if hasattr(model, "config"):
        model.config.use_cache = False
    if plan.compile_layers:
        compile_layers(model, plan.compile_backend)
    return model


def compile_layers(model, backend: str = "inductor") -> int:
    """torch.compile every decoder layer in place (traced lazily at the first call, so LoRA
    modules injected later by peft are part of the graph). Returns how many were compiled."""
    import torch._dynamo

    cfg = torch._dynamo.config
    for knob in ("cache_size_limit", "recompile_limit", "accumulated_cache_size_limit"):
        if hasattr(cfg, knob):
            setattr(cfg, knob, max(getattr(cfg, knob), 256))
    cfg.suppress_errors = True  # a layer that cannot compile runs eagerly instead of failing the run
    layers = decoder_layers(model)
    for layer in layers:
        layer.compile(backend=backend)
    return len(layers)


def decoder_layers(model) -> list:
    """The model's checkpointable decoder layers, in order."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    return [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]


# ------------------------------------------------------------------------------------ fused LoRA

def fast_lora(enabled: bool) -> None:
    """Swap peft's LoRA Linear / Linear4bit forward for the fused one (or restore peft's)."""
    import peft.tuners.lora.layer as layer

    classes = [layer.Linear]
    try:
        from peft.tuners.lora.bnb import Linear4bit

        classes.append(Linear4bit)
    except ImportError:  # bitsandbytes not installed
        pass
    for cls in classes:
        original = cls.__dict__.get("_peft_forward", cls.__dict__["forward"])
        if enabled:
            cls._peft_forward = original
            cls.forward = _make_fused_forward(original)
        elif "_peft_forward" in cls.__dict__:
            cls.forward = original
            del cls._peft_forward


def _make_fused_forward(peft_forward):
    import torch
    import torch.nn.functional as F

    def forward(self, x, *args, **kwargs):
        adapters = self.active_adapters
        if (args or kwargs or self.disable_adapters or self.merged or len(adapters) != 1
                or adapters[0] not in self.lora_A or adapters[0] in self.lora_variant
                or getattr(self.lora_B[adapters[0]], "bias", None) is not None):
            return peft_forward(self, x, *args, **kwargs)
        name = adapters[0]
        result = self.base_layer(x)
        dtype = result.dtype
        a = (self.lora_A[name].weight * self.scaling[name]).to(dtype)
        b = self.lora_B[name].weight.to(dtype)
        xa = F.linear(self.lora_dropout[name](x).to(dtype), a)
        out = torch.addmm(result.reshape(-1, result.shape[-1]), xa.reshape(-1, xa.shape[-1]), b.t())
        return out.view(result.shape)

    forward.__doc__ = "LoRA forward fused by appliance.speedups (falls back to peft's for non-vanilla cases)."
    return forward
