"""GPU correctness of the speed-ups: loss and LoRA gradients of each recipe against an fp32 reference.

A small random-init Qwen2 (and Llama) on a 4-bit NF4 base; the same batch, the same LoRA init:
  ref  : kernels: off with fp32 compute (peft's prep, HF loss) - the reference
  off  : kernels: off in bf16 (the plain transformers + peft recipe users had)
  ours : what `appliance train` picks on CUDA (no upcast, compiled layers with the recompute
         inside the graph and CUDA graphs, fused linear CE, fused LoRA), bf16
Each recipe takes three steps of two accumulated micro-batches (with CUDA graphs the third step
replays recorded graphs) and reports the third step's loss and gradients.
Each recipe runs in its own process (Liger patches classes). Prints one line per model and SAME
when ours is as close to the reference as the plain bf16 recipe is (within 2x, or under 1%).

    python bench/qlora_speed/check_equivalence.py [qwen2] [llama]
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from types import SimpleNamespace

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


def one(kind: str, recipe: str, path: str, out: str) -> None:
    sys.path.insert(0, ROOT)
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    from appliance import speedups

    compute = torch.float32 if recipe == "ref" else torch.bfloat16
    plan = speedups.choose(SimpleNamespace(kernels="off" if recipe != "ours" else "auto",
                                           gradient_checkpointing="on"), "cuda", True)
    speedups.before_load(plan, kind)
    q = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                           bnb_4bit_compute_dtype=compute, bnb_4bit_quant_storage=compute)
    model = AutoModelForCausalLM.from_pretrained(path, quantization_config=q, dtype=compute, device_map={"": 0},
                                                 attn_implementation="sdpa")
    model = speedups.after_load(model, plan)
    torch.manual_seed(1)
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear",
                                             task_type="CAUSAL_LM", init_lora_weights=False))
    model.train()
    g = torch.Generator().manual_seed(5)
    micro = []  # two micro-batches per step, accumulated as the trainer does
    for _ in range(2):
        ids = torch.randint(0, model.config.vocab_size, (2, 512), generator=g).cuda()
        labels = ids.clone()
        labels[0, :100] = -100
        micro.append((ids, labels))
    params = [p for p in model.parameters() if p.requires_grad]
    speedups.prepare_grads(params, plan)
    for _ in range(3):  # CUDA graphs: step 1 warms up, step 2 records, step 3 replays
        for p in params:
            p.grad = None if not plan.cuda_graphs else p.grad.zero_()
        loss = 0.0
        for ids, labels in micro:
            speedups.step_begin(plan)
            micro_loss = model(input_ids=ids, labels=labels).loss
            micro_loss.backward()
            loss += micro_loss.item()
    grads = {n: p.grad.float().cpu() for n, p in model.named_parameters() if p.requires_grad}
    torch.save({"loss": loss, "grads": grads, "plan": plan.describe()}, out)


def compare(kind: str, tmp: str) -> bool:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    path = os.path.join(tmp, kind)
    cfg = AutoConfig.for_model(kind, vocab_size=8192, hidden_size=512, intermediate_size=1408, num_hidden_layers=4,
                               num_attention_heads=8, num_key_value_heads=2, tie_word_embeddings=False)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16).save_pretrained(path)
    res = {}
    for recipe in ("ref", "off", "ours"):
        out = os.path.join(tmp, f"{kind}-{recipe}.pt")
        subprocess.run([sys.executable, __file__, "one", kind, recipe, path, out], check=True)
        res[recipe] = torch.load(out)

    def err(r):
        a, b = res[r]["grads"], res["ref"]["grads"]
        num = sum(float((a[n] - b[n]).norm() ** 2) for n in b) ** 0.5
        den = sum(float(b[n].norm() ** 2) for n in b) ** 0.5
        return abs(res[r]["loss"] - res["ref"]["loss"]) / abs(res["ref"]["loss"]), num / den

    (lo, go), (lu, gu) = err("off"), err("ours")
    same = lu <= max(2 * lo, 1e-2) and gu <= max(2 * go, 1e-2) and len(res["ours"]["grads"]) == len(res["ref"]["grads"])
    print("RESULT", json.dumps({"mode": "equivalence", "model": kind, "loss_ref": round(res["ref"]["loss"], 5),
                                "loss_rel_err": {"off_bf16": lo, "ours_bf16": lu},
                                "grad_rel_err": {"off_bf16": go, "ours_bf16": gu},
                                "ours_plan": res["ours"]["plan"], "same": same}), flush=True)
    return same


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "one":
        one(*sys.argv[2:6])
        return
    with tempfile.TemporaryDirectory() as tmp:
        ok = all([compare(kind, tmp) for kind in (sys.argv[1:] or ["qwen2", "llama"])])
    print("SAME" if ok else "DIFFERENT")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
