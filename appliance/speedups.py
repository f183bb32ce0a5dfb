"""Training speed-ups chosen per machine: what `appliance train` applies and prints at start.

The trainer calls, in order:

    plan = choose(cfg, device, quantized, processes)  # decide (no side effects)
    before_load(plan, model_type)          # class-level patches (fused kernels) before from_pretrained
    model = after_load(model, plan)        # checkpointing, input grads (k-bit prep only when asked)
    print(plan.describe())
    kind = pick_optimizer(plan, n_trainable)   # what `optimizer: auto` means here
    prepare_grads(params, plan)            # then, per micro-batch: step_begin(plan); forward; backward
    zero_grad(optimizer, plan)             # after each optimizer step

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
- recompute inside the compiled graph: the checkpointed layer is traced with its recompute, so
  each layer runs one compiled forward and one compiled backward (every op must-recompute: the
  memory of plain checkpointing).
- CUDA graphs: the compiled training calls replay as CUDA graphs. At batch 1 the GPU sat idle
  more than half of each step waiting for Python; with graphs it is ~94% busy (7.3k -> 10.3k
  tok/s, 7B). Needs gradients in stable buffers (`prepare_grads`, zeroed in place), a
  `step_begin` per micro-batch and few batch widths (`pad_to_multiple`). `APPLIANCE_CUDA_GRAPHS=0`
  turns it off.
- loss chunks: Liger's fused loss in ~1024-token chunks instead of its default ~48 rows.
- fused AdamW: one multi-tensor kernel per step instead of paged 8-bit AdamW's launch per tensor,
  while its fp32 states fit in 2 GiB.
- selective checkpointing: `checkpoint_skip` decoder layers keep their activations instead of
  recomputing them (off by default; for users with memory to spare).

With several processes (FSDP) the plan keeps peft's LoRA forward and no compile / CUDA graphs.

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
    checkpoint_in_graph: bool = False  # recompute inside the compiled layer's backward graph
    cuda_graphs: bool = False  # compiled layers replay as CUDA graphs (mode="reduce-overhead")
    loss_chunk_tokens: int = 0  # fused loss: tokens per logits chunk (0 = Liger's default)
    optimizer: str = ""  # what optimizer "auto" means on this machine ("" = the trainer's own default)
    pad_to_multiple: int = 1  # batch widths rounded up to this (each new width is a new CUDA graph)
    notes: list[str] = field(default_factory=list)

    def describe(self) -> str:
        on = [n for n, v in (("gradient checkpointing", self.gradient_checkpointing),
                             ("fp32 upcast of norms", self.upcast_fp32),
                             ("fused kernels (Liger)", self.fused_kernels),
                             ("fused linear cross-entropy", self.fused_loss),
                             ("fused LoRA path", self.fused_lora),
                             (f"no recompute in last {self.checkpoint_skip} layers", self.checkpoint_skip > 0),
                             ("compiled decoder layers (first steps slower)", self.compile_layers),
                             ("recompute inside the compiled graph", self.checkpoint_in_graph),
                             ("CUDA graphs", self.cuda_graphs),
                             (f"loss in {self.loss_chunk_tokens}-token chunks", self.loss_chunk_tokens > 0)) if v]
        text = f"speed-ups on {self.device}: {', '.join(on) if on else 'none'}"
        return text + "".join(f"\n  - {n}" for n in self.notes)


def liger_available() -> bool:
    """liger-kernel and triton importable (a CUDA torch ships triton; the CPU build does not)."""
    return importlib.util.find_spec("liger_kernel") is not None and importlib.util.find_spec("triton") is not None


def choose(cfg, device: str, quantized: bool, processes: int = 1) -> SpeedPlan:
    """Decide the speed-ups for `cfg` on `device` ('cuda' / 'cpu' / 'mps') and `processes`
    training processes (FSDP when > 1); no side effects."""
    kernels = getattr(cfg, "kernels", "auto")
    ckpt = {"on": True, "off": False}.get(getattr(cfg, "gradient_checkpointing", "auto"), device == "cuda")
    plan = SpeedPlan(device=device, quantized=quantized, gradient_checkpointing=ckpt)
    if kernels == "off":
        # the plain transformers + peft QLoRA recipe; FSDP cannot flatten the fp32-upcast norms
        # next to bf16 weights in one unit ("Must flatten tensors with uniform dtype"), so not there
        plan.upcast_fp32 = quantized and processes == 1
        plan.notes.append("kernels: off -> plain transformers + peft path")
        return plan
    if device != "cuda":
        return plan
    if processes > 1:
        # FSDP: LoRA weights live in their own FSDP units, gathered only when peft calls those
        # modules (the fused LoRA path reads them directly: illegal memory access, seen on 2 H200);
        # compiled layers and CUDA graphs are not verified under FSDP
        plan.notes.append(f"{processes} processes (FSDP): peft's LoRA forward, no compiled layers or CUDA graphs")
        if liger_available():
            plan.fused_loss = plan.fused_kernels = True
            plan.loss_chunk_tokens = 1024
        return plan
    plan.fused_lora = True
    plan.compile_layers = os.environ.get("APPLIANCE_COMPILE", "1") != "0"
    plan.checkpoint_in_graph = plan.compile_layers and plan.gradient_checkpointing
    plan.cuda_graphs = plan.compile_layers and os.environ.get("APPLIANCE_CUDA_GRAPHS", "1") != "0"
    plan.optimizer = "adamw_fused"  # pick_optimizer falls back to paged 8-bit for large adapters
    plan.pad_to_multiple = 128 if plan.cuda_graphs else 1
    if liger_available():
        plan.fused_loss = True
        plan.fused_kernels = not plan.compile_layers
        plan.loss_chunk_tokens = 1024
    else:
        plan.notes.append("fused loss unavailable: `pip install liger-kernel` for ~35% less memory")
    return plan


# states of torch's fused AdamW (fp32 m and v) up to this size beat paged 8-bit AdamW: one
# multi-tensor kernel instead of one launch per LoRA tensor (bench: 48 ms -> ~2 ms per step at 7B)
FUSED_ADAMW_MAX_STATE_BYTES = 2 * 2**30


def pick_optimizer(plan: SpeedPlan, trainable_params: int) -> str:
    """What `optimizer: auto` means for this plan and adapter size (recorded in the plan)."""
    if plan.device != "cuda":
        return "adamw"
    state = 8 * trainable_params
    if plan.optimizer == "adamw_fused" and state > FUSED_ADAMW_MAX_STATE_BYTES:
        plan.optimizer = "paged_adamw_8bit"
        plan.notes.append(f"paged 8-bit AdamW: fused AdamW's fp32 states would take {state / 2**30:.1f} GiB")
    return plan.optimizer or "paged_adamw_8bit"


def prepare_grads(params, plan: SpeedPlan) -> None:
    """With CUDA graphs, gradients must live in buffers allocated outside the graphs: a .grad that
    autograd took from a graph's output is overwritten by the next replay (gradient accumulation
    would read freed memory). Allocate them once; the trainer zeroes them in place."""
    if not plan.cuda_graphs:
        return
    import torch

    for p in params:
        if p.requires_grad and p.grad is None:
            p.grad = torch.zeros_like(p)


def zero_grad(optimizer, plan: SpeedPlan) -> None:
    """After each optimizer step: CUDA graphs keep the buffers of `prepare_grads` (zeroed in place)."""
    optimizer.zero_grad(set_to_none=not plan.cuda_graphs)


def step_begin(plan: SpeedPlan) -> None:
    """Call before each forward pass that is followed by a backward (one per micro-batch)."""
    if plan.cuda_graphs:
        import torch

        torch.compiler.cudagraph_mark_step_begin()


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
    if plan.fused_loss:
        loss_chunks(plan.loss_chunk_tokens)
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
        compile_layers(model, plan.compile_backend, checkpoint_in_graph=plan.checkpoint_in_graph,
                       cuda_graphs=plan.cuda_graphs)
    return model


def compile_layers(model, backend: str = "inductor", checkpoint_in_graph: bool = False,
                   cuda_graphs: bool = False) -> int:
    """torch.compile every decoder layer in place (traced lazily at the first call, so LoRA
    modules injected later by peft are part of the graph). Returns how many were compiled.

    `checkpoint_in_graph`: a checkpointed layer's recompute moves into its compiled backward
    graph (torch.utils.checkpoint traced by dynamo) instead of re-running the compiled forward
    from Python under saved-tensor hooks: one forward and one backward graph per layer and step.
    Only the layer's inputs are kept, as with transformers' own checkpointing.
    `cuda_graphs`: the compiled graphs replay as CUDA graphs (one launch per graph)."""
    import functools
    import types

    import torch
    import torch._dynamo

    cfg = torch._dynamo.config
    for knob in ("cache_size_limit", "recompile_limit", "accumulated_cache_size_limit"):
        if hasattr(cfg, knob):
            setattr(cfg, knob, max(getattr(cfg, knob), 256))
    cfg.suppress_errors = True  # a layer that cannot compile runs eagerly instead of failing the run
    layers = decoder_layers(model)
    for layer in layers:
        recompute = checkpoint_in_graph and getattr(layer, "gradient_checkpointing", False)
        if not (recompute or cuda_graphs):
            layer._compiled_call_impl = torch.compile(layer._call_impl, backend=backend)
            continue
        train_call = layer._call_impl
        if recompute:
            layer.gradient_checkpointing = False  # transformers' wrapper off: the graph recomputes
            train_call = types.MethodType(_checkpointed_call, layer)
        # training calls and no-grad calls (evaluation) get separate compiled functions: CUDA
        # graphs only where a backward follows, plain compiled code elsewhere
        train = torch.compile(train_call, backend=backend, mode="reduce-overhead" if cuda_graphs else None)
        infer = torch.compile(layer._call_impl, backend=backend)
        layer._compiled_call_impl = functools.partial(_dispatch, layer, train, infer)
    return len(layers)


def _dispatch(layer, train, infer, *args, **kwargs):
    import torch

    return (train if layer.training and torch.is_grad_enabled() else infer)(*args, **kwargs)


def _checkpointed_call(self, *args, **kwargs):
    """A decoder layer's call with its activations recomputed in backward (traced by dynamo).

    Every op is marked must-recompute: left to its own cost model the partitioner keeps the
    outputs of ops it may not recompute (the 4-bit GEMMs are custom ops), which measured +170 MiB
    per 7B layer at 2048 tokens, i.e. no checkpointing at all for those tensors."""
    import functools

    import torch
    import torch.utils.checkpoint as ckpt

    if not (self.training and torch.is_grad_enabled()):
        return self._call_impl(*args, **kwargs)
    policy = functools.partial(ckpt.create_selective_checkpoint_contexts, _recompute_everything)
    return ckpt.checkpoint(functools.partial(self._call_impl, **kwargs), *args, use_reentrant=False,
                           context_fn=policy)


def _recompute_everything(ctx, op, *args, **kwargs):
    from torch.utils.checkpoint import CheckpointPolicy

    return CheckpointPolicy.MUST_RECOMPUTE


def loss_chunks(tokens: int) -> None:
    """Liger's fused linear cross-entropy in chunks of about `tokens` rows (0 = Liger's default).

    Liger bounds the transient logits to BT x H elements, i.e. chunks of BT*H/V rows: 48 rows
    for Qwen2.5-7B at 2048 tokens, so the 1 GiB lm_head is read 2 x 43 times per step at M=48.
    Larger chunks read it a few times at full GEMM efficiency for ~tokens x V x 2 bytes of memory."""
    import functools

    import liger_kernel.transformers.functional as lf

    original = getattr(lf.liger_fused_linear_cross_entropy, "_appliance_original", lf.liger_fused_linear_cross_entropy)
    if tokens <= 0:
        lf.liger_fused_linear_cross_entropy = original
        return

    @functools.wraps(original)
    def chunked(input, weight, *args, **kwargs):
        if "chunk_mem_const" not in kwargs and input.dim() == 2:
            kwargs["chunk_mem_const"] = liger_chunk_const(*input.shape, weight.shape[0], tokens)
        return original(input, weight, *args, **kwargs)

    chunked._appliance_original = original
    lf.liger_fused_linear_cross_entropy = chunked


def liger_chunk_const(rows: int, hidden: int, vocab: int, tokens: int) -> int:
    """Liger's `chunk_mem_const` that splits `rows` into max(1, rows // tokens) chunks
    (Liger: chunks = ceil(vocab / (const * hidden)), chunk = next_pow2(ceil(rows / chunks)))."""
    chunks = max(1, rows // tokens)
    return -(-vocab // (hidden * chunks))


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
