"""Training speed-ups chosen per machine: what `appliance train` applies and prints at start.

The trainer calls, in order:

    plan = choose(cfg, device)            # decide (no side effects)
    before_load(plan, model_type)         # class-level patches (e.g. fused kernels) before from_pretrained
    model = after_load(model, plan)       # k-bit prep, gradient checkpointing, input grads
    print(plan.describe())

On CPU everything stays off except what is plainly correct there.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class SpeedPlan:
    device: str = "cpu"
    quantized: bool = False
    gradient_checkpointing: bool = False
    upcast_fp32: bool = False  # peft's prepare_model_for_kbit_training upcasts norms/embeddings to fp32
    fused_kernels: bool = False  # Liger RMSNorm / SwiGLU / RoPE / fused linear cross-entropy
    notes: list[str] = field(default_factory=list)

    def describe(self) -> str:
        on = [n for n, v in (("gradient checkpointing", self.gradient_checkpointing),
                             ("fp32 upcast of norms", self.upcast_fp32),
                             ("fused kernels", self.fused_kernels)) if v]
        text = f"speed-ups on {self.device}: {', '.join(on) if on else 'none'}"
        return text + "".join(f"\n  - {n}" for n in self.notes)


def choose(cfg, device: str, quantized: bool) -> SpeedPlan:
    ckpt = {"on": True, "off": False}.get(cfg.gradient_checkpointing, device == "cuda")
    return SpeedPlan(device=device, quantized=quantized, gradient_checkpointing=ckpt)


def before_load(plan: SpeedPlan, model_type: str) -> None:
    """Class-level patches that must happen before the model is instantiated."""


def after_load(model, plan: SpeedPlan):
    """Prepare a freshly loaded (possibly 4-bit) base model for LoRA training."""
    if plan.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    if hasattr(model, "config"):
        model.config.use_cache = False
    return model
