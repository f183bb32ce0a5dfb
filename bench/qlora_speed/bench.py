"""QLoRA speed / memory / learning bench for OUR trainer path (appliance.speedups + the trainer's
4-bit loading), run on the lent GPU beside ../shared/gpu/anchor_qlora.py in the same call.

One process = one recipe (Liger patches are class-level, so recipes never share a process):

    python bench/qlora_speed/bench.py speed  --recipe ours  --shapes 2048x1,2048x4 [--profile]
    python bench/qlora_speed/bench.py speed  --recipe off   --shapes 2048x1        # kernels: off
    python bench/qlora_speed/bench.py loss   --recipe ours  --steps 50             # loss curve
    python bench/qlora_speed/bench.py pack   --recipe ours                         # padded vs packed

Recipes: `off` = kernels: off (peft's fp32 upcast; the anchor recipe through our code),
`bf16` = no upcast, no Liger, `ours` = what `appliance train` picks on CUDA (speedups.choose),
then `+flag` modifiers (see FLAGS): `+adamw` / `+paged` optimizer, `+chunk` / `+nochunk` loss
chunks, `+ckg` / `+nockg` recompute inside the compiled graph, `+cg` / `+nocg` CUDA graphs,
`+eager` no compiled layers, `+nofl` peft's own LoRA forward, `+skipN` last N layers not recomputed.
Random-init models (speed and memory do not depend on weight
values): `--model qwen7b` (Qwen2.5-7B shape) or `llama8b` (Llama-3.1-8B shape).
Every result is one JSON line starting with RESULT.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import sys
import time
from types import SimpleNamespace

import torch

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..")))
from appliance import speedups  # noqa: E402

SHAPES = {
    "qwen7b": dict(model_type="qwen2", vocab_size=152064, hidden_size=3584, intermediate_size=18944,
                   num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4,
                   max_position_embeddings=32768, rope_theta=1e6, rms_norm_eps=1e-6, tie_word_embeddings=False),
    "llama8b": dict(model_type="llama", vocab_size=128256, hidden_size=4096, intermediate_size=14336,
                    num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
                    max_position_embeddings=32768, rope_theta=5e5, rms_norm_eps=1e-5, tie_word_embeddings=False),
}
PATHS = {"qwen7b": "/tmp/q7", "llama8b": "/tmp/l8"}  # /tmp/q7 is the anchor script's model too


def log(kind: str, **r) -> None:
    print(kind, json.dumps(r), flush=True)


def ensure_model(name: str) -> str:
    from transformers import AutoConfig, AutoModelForCausalLM

    path = PATHS[name]
    if not os.path.exists(path + "/config.json"):
        t = time.time()
        spec = dict(SHAPES[name])
        cfg = AutoConfig.for_model(spec.pop("model_type"), **spec)
        with torch.device("cuda"):
            m = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16)
        m.save_pretrained(path, max_shard_size="5GB")
        del m
        gc.collect()
        torch.cuda.empty_cache()
        log("INFO", msg=f"random {name} saved in {time.time() - t:.0f}s")
    return path


FLAGS = {  # recipe modifiers: ours+adamw+chunk ... (each one SpeedPlan change)
    "adamw": dict(optimizer="adamw_fused"), "paged": dict(optimizer="paged_adamw_8bit"),
    "chunk": dict(loss_chunk_tokens=1024), "nochunk": dict(loss_chunk_tokens=0),
    "ckg": dict(checkpoint_in_graph=True), "nockg": dict(checkpoint_in_graph=False),
    "cg": dict(cuda_graphs=True), "nocg": dict(cuda_graphs=False),
    "nofl": dict(fused_lora=False),
}


def recipe_plan(recipe: str):
    """`off` (kernels: off), `bf16` (no upcast, nothing fused) or `ours` (what `appliance train`
    picks on CUDA), then `+flag` modifiers: ours+adamw+chunk+ckg+cg, ours+eager, ours+skip4 ..."""
    base, *flags = recipe.split("+")
    kernels = "off" if base == "off" else "auto"
    plan = speedups.choose(SimpleNamespace(kernels=kernels, gradient_checkpointing="on"), "cuda", True)
    if base == "bf16":
        plan.fused_kernels = plan.fused_loss = plan.fused_lora = False
    for flag in flags:
        if flag == "eager":
            plan.compile_layers, plan.fused_kernels = False, plan.fused_loss
            plan.checkpoint_in_graph = plan.cuda_graphs = False
        elif flag.startswith("skip"):
            plan.checkpoint_skip = int(flag.removeprefix("skip"))
        else:
            for k, v in FLAGS[flag].items():
                setattr(plan, k, v)
    return plan


def load(name: str, recipe: str, seed: int = 0):
    """The trainer's recipe: plan -> before_load -> 4-bit load -> after_load -> LoRA."""
    from peft import LoraConfig, get_peft_model

    from appliance.loading import load_base  # the trainer's loader: NF4, double quant, storage = bf16

    path = ensure_model(name)
    plan = recipe_plan(recipe)
    speedups.before_load(plan, SHAPES[name]["model_type"])
    t = time.time()
    model = load_base(path, "qlora", torch.bfloat16, "cuda:0")
    load_s = time.time() - t
    model = speedups.after_load(model, plan)
    torch.manual_seed(seed)
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0,
                                             target_modules="all-linear", task_type="CAUSAL_LM"))
    model.train()
    log("INFO", recipe=recipe, plan=plan.describe(), load_s=round(load_s, 1))
    return model, plan


def optimizer(model, plan):
    """What the trainer builds for `optimizer: auto` (speedups.pick_optimizer)."""
    params = [p for p in model.parameters() if p.requires_grad]
    kind = speedups.pick_optimizer(plan, sum(p.numel() for p in params))
    speedups.prepare_grads(params, plan)
    if kind == "adamw_fused":
        return torch.optim.AdamW(params, lr=1e-4, fused=True)
    import bitsandbytes as bnb

    return bnb.optim.PagedAdamW8bit(params, lr=1e-4)


def step(model, opt, batch, plan) -> float:
    """One optimizer step as the trainer takes it."""
    speedups.step_begin(plan)
    out = model(**batch)
    out.loss.backward()
    opt.step()
    speedups.zero_grad(opt, plan)
    return out.loss


def speed(args) -> None:
    model, plan = load(args.model, args.recipe)
    vocab = SHAPES[args.model]["vocab_size"]
    for k, shape in enumerate(args.shapes.split(",")):
        seq, bs = map(int, shape.split("x"))
        opt = None
        try:
            gc.collect()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            opt = optimizer(model, plan)
            g = torch.Generator(device="cuda").manual_seed(0)
            x = torch.randint(0, vocab, (bs, seq), device="cuda", generator=g)
            batch = {"input_ids": x, "labels": x}
            times = []
            for _ in range(args.warm + args.steps):
                torch.cuda.synchronize()
                t0 = time.perf_counter()
                step(model, opt, batch, plan)
                torch.cuda.synchronize()
                times.append(time.perf_counter() - t0)
            med = sorted(times[args.warm:])[len(times[args.warm:]) // 2]
            log("RESULT", mode="speed", model=args.model, recipe=args.recipe, seq=seq, bs=bs,
                tok_per_s=round(bs * seq / med), step_s=round(med, 4), first_step_s=round(times[0], 1),
                peak_alloc_GiB=round(torch.cuda.max_memory_allocated() / 2**30, 2),
                peak_reserved_GiB=round(torch.cuda.max_memory_reserved() / 2**30, 2))
            if args.profile and k == 0:
                profile(model, opt, batch, med, plan)
        except torch.cuda.OutOfMemoryError:
            log("RESULT", mode="speed", model=args.model, recipe=args.recipe, seq=seq, bs=bs, oom=True)
        del opt
        batch = x = None
        model.zero_grad(set_to_none=True)


def profile(model, opt, batch, step_s: float, plan) -> None:
    """Where one step's time goes: the GPU's busy time (union of kernel intervals) over the step,
    the top kernels, and dynamo's graph / break counts."""
    from torch._dynamo.utils import counters
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile as tprof

    with tprof(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        step(model, opt, batch, plan)
        torch.cuda.synchronize()
        wall = time.perf_counter() - t0
    kernels = [e for e in prof.events() if e.device_type == DeviceType.CUDA]
    spans = sorted((e.time_range.start, e.time_range.end) for e in kernels)
    busy, end = 0.0, -1.0
    for a, b in spans:
        if b > end:
            busy += b - max(a, end)
            end = b
    by_name: dict = {}
    for e in kernels:
        t, n = by_name.get(e.name, (0.0, 0))
        by_name[e.name] = (t + e.time_range.elapsed_us(), n + 1)
    top = sorted(by_name.items(), key=lambda kv: -kv[1][0])[:20]
    log("PROFILE", step_s=round(step_s, 4), profiled_step_s=round(wall, 4), kernels=len(kernels),
        gpu_busy_s=round(busy / 1e6, 4), busy_frac=round(busy / 1e6 / wall, 3),
        dynamo={k: dict(v) for k, v in counters.items() if k in ("stats", "graph_break")},
        cudagraph_skips=dict(counters.get("inductor", {})).get("cudagraph_skips", 0),
        top=[(k[:80], round(t / 1e3, 1), n) for k, (t, n) in top])


def loss(args) -> None:
    """Same data, same seed, `--steps` optimizer steps: the loss curve to compare across recipes.

    Data: rows that repeat a random 64-token motif drawn from 100 token ids, so a LoRA on a random
    base has something to learn (unigram floor ln(100) = 4.6); the same rows for every recipe.
    The random base is made once per call: compare curves from the same call only."""
    model, plan = load(args.model, args.recipe, seed=0)
    opt = optimizer(model, plan)
    for g in opt.param_groups:
        g["lr"] = args.lr
    gen = torch.Generator().manual_seed(1234)
    losses = []
    for i in range(args.steps):
        motif = torch.randint(0, 100, (args.bs, 64), generator=gen)
        x = motif.repeat(1, args.seq // 64).cuda()
        losses.append(float(step(model, opt, {"input_ids": x, "labels": x}, plan).detach()))
    log("RESULT", mode="loss", model=args.model, recipe=args.recipe, seq=args.seq, bs=args.bs, lr=args.lr,
        losses=[round(v, 5) for v in losses])


def pack(args) -> None:
    """Padded vs packed on a long-tailed length mix: real tokens/s, and the summed token loss
    of the same examples both ways (fixed weights)."""
    from appliance.packing import collate, pack as pack_rows

    model, plan = load(args.model, args.recipe)
    opt = optimizer(model, plan)
    vocab = SHAPES[args.model]["vocab_size"]
    gen = torch.Generator().manual_seed(7)
    lengths = torch.exp(torch.randn(args.examples, generator=gen) * 1.0 + math.log(args.median))
    lengths = lengths.clamp(16, args.seq).long().tolist()
    examples = []
    for n in lengths:
        ids = torch.randint(0, vocab, (n,), generator=gen).tolist()
        examples.append({"input_ids": ids, "labels": list(ids)})
    real = sum(lengths)
    m = plan.pad_to_multiple  # the trainer's widths (CUDA graphs: few distinct shapes)
    padded = [collate(examples[i:i + args.bs], 0, packing=False, pad_to_multiple=m) for i in range(0, len(examples), args.bs)]
    rows = pack_rows(examples, args.seq)
    packed = [collate(rows[i:i + args.bs], 0, packing=True, four_d_mask=False, pad_to_multiple=m)
              for i in range(0, len(rows), args.bs)]
    result = {"mode": "pack", "recipe": args.recipe, "examples": len(examples), "real_tokens": real,
              "median_len": sorted(lengths)[len(lengths) // 2], "max_len": max(lengths), "bs": args.bs,
              "padded_batches": len(padded), "packed_batches": len(packed)}
    on_gpu = {name: [{k: v.cuda() for k, v in b.items()} for b in batches]
              for name, batches in (("padded", padded), ("packed", packed))}
    for name, batches in on_gpu.items():  # summed token loss of the same examples, same (initial) weights
        total = 0.0
        with torch.no_grad():  # train mode (no recompiles); dropout is 0, so this is the eval loss
            for b in batches:
                n = int((b["labels"][:, 1:] != -100).sum())
                total += float(model(**b).loss) * n
        result[name + "_loss_sum"] = round(total, 2)
    for name, batches in on_gpu.items():
        torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        for _ in range(args.warm_passes):  # compile every shape, then record its CUDA graph
            for b in batches:
                step(model, opt, b, plan)
        torch.cuda.synchronize()
        result[name + "_warmup_passes_s"] = round(time.perf_counter() - t0, 1)
        t0 = time.perf_counter()
        for b in batches:
            step(model, opt, b, plan)
        torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        result[name + "_tok_per_s"] = round(real / dt)
        result[name + "_peak_GiB"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        result[name + "_slots"] = sum(b["input_ids"].numel() for b in batches)
    result["speedup"] = round(result["packed_tok_per_s"] / result["padded_tok_per_s"], 2)
    result["loss_rel_diff"] = abs(result["packed_loss_sum"] - result["padded_loss_sum"]) / abs(result["padded_loss_sum"])
    log("RESULT", **result)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("mode", choices=["speed", "loss", "pack"])
    p.add_argument("--recipe", default="ours")
    p.add_argument("--model", default="qwen7b", choices=sorted(SHAPES))
    p.add_argument("--shapes", default="2048x1")
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--warm", type=int, default=3)
    p.add_argument("--seq", type=int, default=2048)
    p.add_argument("--bs", type=int, default=1)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--examples", type=int, default=128)
    p.add_argument("--median", type=int, default=300)
    p.add_argument("--profile", action="store_true")
    p.add_argument("--warm-passes", type=int, default=2, help="pack: untimed passes before the timed one")
    args = p.parse_args()
    import transformers, peft  # noqa: E401

    log("INFO", torch=torch.__version__, transformers=transformers.__version__, peft=peft.__version__,
        gpu=torch.cuda.get_device_name(), mode=args.mode, recipe=args.recipe, model=args.model)
    {"speed": speed, "loss": loss, "pack": pack}[args.mode](args)


if __name__ == "__main__":
    main()
