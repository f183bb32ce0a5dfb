"""Merge a run's LoRA adapter into its base model, re-loaded in 16-bit (never into 4-bit weights).

    appliance merge [--run R] [--force]          # -> merged/<run>/
    path = merge(ws, run="my-run")

`merged/<run>/` is written atomically and holds bf16 safetensors, the tokenizer with the run's chat
template, generation_config.json and merge.json (run, adapter digest, base digest, max logit diff).
Before saving, the merged model is checked against base + adapter (unmerged, same dtype) on a few
prompts; the largest absolute logit difference is printed and recorded.
"""

from __future__ import annotations

import argparse
import json
from datetime import datetime, timezone
from pathlib import Path

from appliance.errors import ArtifactError, RunNotFoundError
from appliance.workspace import Workspace, atomic_dir

CHECK_PROMPTS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "user", "content": "Write one sentence about the sea."}],
    [{"role": "system", "content": "Reply with JSON only."}, {"role": "user", "content": "It was 12 degrees in Oslo."}],
]


def run_cli(args: argparse.Namespace, ws: Workspace) -> int:
    out = merge(ws, run=args.run, force=args.force)
    print(f"merged model: {out}\n  next: appliance chat --model {out}   |   appliance export --run {out.name}")
    return 0


def merge(ws: Workspace, run: str | None = None, force: bool = False) -> Path:
    """Merge runs/<run>/adapter into its 16-bit base; returns merged/<run>/."""
    import torch

    from appliance.loading import load_tokenizer, load_with_adapter
    from appliance.models import folder_digest

    run_dir = ws.run_dir(run)
    adapter = run_dir / "adapter"
    if not (adapter / "adapter_config.json").is_file():
        raise RunNotFoundError(f"run '{run_dir.name}' has no adapter yet (it has not finished)",
                               f"finish it with `appliance train --resume --run-name {run_dir.name}`")
    out = ws.merged / run_dir.name
    if out.exists() and not force:
        raise ArtifactError(f"{out} already exists", "pass --force to replace it")
    base_path, base_digest = base_of(run_dir, ws)

    dtype = torch.bfloat16
    print(f"merging {adapter} into {base_path} (bf16)", flush=True)
    tokenizer = load_tokenizer(adapter)
    model = load_with_adapter(base_path, adapter, dtype).eval()  # a 16-bit load of its own: eval mode is safe
    before = prompt_logits(model, tokenizer)
    merged = model.merge_and_unload()
    after = prompt_logits(merged, tokenizer)
    diff = max(float((a - b).abs().max()) for a, b in zip(before, after))
    scale = max(float(a.abs().max()) for a in before)
    same = sum(int((a.argmax(-1) == b.argmax(-1)).sum()) for a, b in zip(before, after))
    agree = same / sum(a.shape[1] for a in before)
    # bf16 keeps 8 bits of mantissa: rounding W + BA once differs from adding BA x on the fly by a
    # few units in the last place per layer, so differences of a few percent of the logit scale are normal.
    print(f"max |logit difference| merged vs base+adapter: {diff:.4g} (logits up to {scale:.3g}, bf16); "
          f"same next token at {agree:.1%} of {sum(a.shape[1] for a in before)} positions", flush=True)

    with atomic_dir(out, overwrite=force) as tmp:
        merged.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if merged.generation_config is not None:
            merged.generation_config.save_pretrained(tmp)
        (tmp / "merge.json").write_text(json.dumps({
            "run": run_dir.name,
            "adapter_digest": folder_digest(adapter),
            "base_model": str(base_path),
            "base_digest": base_digest,
            "dtype": "bfloat16",
            "max_logit_diff": diff,
            "max_abs_logit": scale,
            "top1_agreement": agree,
            "check_prompts": len(CHECK_PROMPTS),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }, indent=2))
    return out


def base_of(run_dir: Path, ws: Workspace) -> tuple[Path, str]:
    """The run's base model folder and its digest, checked against what the run trained on."""
    from appliance.models import folder_digest, resolve_model

    info = json.loads((run_dir / "run.json").read_text()) if (run_dir / "run.json").is_file() else {}
    base = info.get("base_model") or {}
    path = Path(base["path"]) if base.get("path") and Path(base["path"]).is_dir() else None
    if path is None:
        ref = base.get("ref") or json.loads((run_dir / "adapter/adapter_config.json").read_text()).get("base_model_name_or_path")
        if not ref:
            raise RunNotFoundError(f"run '{run_dir.name}' does not record its base model", "retrain it with `appliance train`")
        path = resolve_model(ref, ws)
    digest = folder_digest(path)
    if base.get("digest") and base["digest"] != digest:
        raise ArtifactError(
            f"the base model in {path} is not the one run '{run_dir.name}' trained on "
            f"(digest {digest[:12]} != {base['digest'][:12]})",
            "restore the original base model folder, or retrain on this one",
        )
    return path, digest


def prompt_logits(model, tokenizer) -> list:
    """Float32 logits of the check prompts (rendered with the chat template)."""
    import torch

    device = next(model.parameters()).device
    out = []
    with torch.no_grad():
        for messages in CHECK_PROMPTS:
            text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"].to(device)
            out.append(model(input_ids=ids).logits.float().cpu())
    return out
