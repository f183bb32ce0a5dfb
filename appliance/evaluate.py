"""Score a model on held-out chat rows: task score (exact / JSON-field match) and reference perplexity.

    rows = eval_rows(sample_eval_path())
    result = score_model(model_dir, rows)            # {"score": 0.85, "n": 40, "perplexity": 1.9, ...}
    score_answers(["{\"city\": \"Oslo\", \"temp_c\": 3}"], ["{\"city\": \"Oslo\", \"temp_c\": 3}"])  # 1.0

A row's prompt is every message before its last assistant turn; the reference is that turn's text.
`eval_rows`, `score_answers` and `generate_hf` know nothing about runs or workspaces, so exporters can
score any artifact with them. `run_cli` is `appliance eval`: base vs base+adapter of a run.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

from appliance.data import Example, load_examples, resolve_dataset, sample_eval_path, tokenize_example
from appliance.errors import ApplianceError
from appliance.packing import IGNORE, collate


# ------------------------------------------------------------------------------------------ rows

def eval_rows(path: str | Path) -> list[Example]:
    """Held-out rows of a JSONL file (any supported format); rows that are invalid are skipped."""
    return load_examples(path, skip_invalid=True)


def prompt_and_reference(example: Example) -> tuple[list[dict], str]:
    """(messages before the last assistant turn, that turn's content)."""
    last = max(i for i, m in enumerate(example.messages) if m["role"] == "assistant")
    return example.messages[:last], example.messages[last]["content"]


# --------------------------------------------------------------------------------------- scoring

def score_answers(answers: list[str], references: list[str]) -> float:
    """Mean per-row score in [0, 1].

    A reference that is a JSON object is matched field by field: the answer's first JSON object must
    have the same keys and equal values (strings compared case- and space-insensitively, numbers
    numerically). Any other reference needs a normalised exact match (case, spacing, final period).
    """
    if len(answers) != len(references):
        raise ValueError(f"{len(answers)} answers for {len(references)} references")
    if not references:
        return 0.0
    return sum(answer_correct(a, r) for a, r in zip(answers, references)) / len(references)


def answer_correct(answer: str, reference: str) -> bool:
    ref = _json_object(reference)
    if ref is not None:
        got = _json_object(answer)
        return got is not None and set(got) == set(ref) and all(_same_value(got[k], ref[k]) for k in ref)
    return _norm(answer) == _norm(reference)


def _json_object(text: str) -> dict | None:
    start = text.find("{")
    while start >= 0:
        try:
            obj, _ = json.JSONDecoder().raw_decode(text[start:])
            if isinstance(obj, dict):
                return obj
        except json.JSONDecodeError:
            pass
        start = text.find("{", start + 1)
    return None


def _same_value(got: Any, want: Any) -> bool:
    if isinstance(want, (int, float)) and not isinstance(want, bool):
        try:
            return math.isclose(float(got), float(want), rel_tol=0, abs_tol=1e-9)
        except (TypeError, ValueError):
            return False
    if isinstance(want, str):
        return isinstance(got, str) and _norm(got) == _norm(want)
    return got == want


def _norm(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip().rstrip(".").strip().casefold()


# ------------------------------------------------------------------------------------ generation

def generate_hf(model, tokenizer, prompts: list[list[dict]], max_new_tokens: int = 64, batch_size: int = 8) -> list[str]:
    """Greedy answers of a transformers model: chat template + generation prompt, left-padded batches."""
    import torch

    pad_id = pad_token_id(model, tokenizer)
    stop_ids = stop_token_ids(model, tokenizer)
    encoded = [tokenizer(tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True),
                         add_special_tokens=False)["input_ids"] for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: len(encoded[i]))  # similar lengths share a batch
    answers: dict[int, str] = {}
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        for b in range(0, len(order), batch_size):
            idx = order[b:b + batch_size]
            width = max(len(encoded[i]) for i in idx)
            ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
            mask = torch.zeros((len(idx), width), dtype=torch.long)
            for row, i in enumerate(idx):
                n = len(encoded[i])
                ids[row, width - n:] = torch.tensor(encoded[i])
                mask[row, width - n:] = 1
            with torch.no_grad():
                out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), do_sample=False,
                                     max_new_tokens=max_new_tokens, pad_token_id=pad_id, eos_token_id=stop_ids)
            for row, i in enumerate(idx):
                answers[i] = tokenizer.decode(out[row, width:], skip_special_tokens=True).strip()
    finally:
        model.train(was_training)
    return [answers[i] for i in range(len(prompts))]


def pad_token_id(model, tokenizer) -> int:
    for value in (tokenizer.pad_token_id, getattr(model.generation_config, "pad_token_id", None), tokenizer.eos_token_id):
        if isinstance(value, int):
            return value
    return 0


def stop_token_ids(model, tokenizer) -> list[int]:
    """The model's end-of-sequence ids plus the end-of-turn tokens common chat templates use."""
    ids: list[int] = []
    eos = getattr(model.generation_config, "eos_token_id", None)
    ids += eos if isinstance(eos, list) else [eos]
    ids.append(tokenizer.eos_token_id)
    vocab = tokenizer.get_vocab()
    ids += [vocab[t] for t in ("<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|end|>") if t in vocab]
    return sorted({i for i in ids if isinstance(i, int)})


# -------------------------------------------------------------------------------------- scoring a model

def load_model(model_dir: str | Path):
    """(model, tokenizer) from an HF folder, in float32 on CPU (bf16 on GPU), in eval mode."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dtype = torch.bfloat16 if torch.cuda.is_available() else torch.float32
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype)
    if torch.cuda.is_available():
        model = model.to("cuda")
    return model.eval(), tokenizer


def score_model(model: Any, rows: list[Example], limit: int | None = None, max_new_tokens: int | None = None) -> dict:
    """{"score", "n", "perplexity", "samples"} of a model folder or a (model, tokenizer) pair on `rows`.

    Answers are greedy, at most `max_new_tokens` long (default: the longest reference + 16 tokens).
    perplexity = exp(mean negative log-likelihood of the reference assistant tokens) given the prompt.
    """
    model, tokenizer = load_model(model) if isinstance(model, (str, Path)) else model
    rows = rows[:limit] if limit else rows
    prompts, refs = zip(*(prompt_and_reference(r) for r in rows)) if rows else ((), ())
    if max_new_tokens is None:
        max_new_tokens = min(512, 16 + max((len(tokenizer(r, add_special_tokens=False)["input_ids"]) for r in refs), default=0))
    answers = generate_hf(model, tokenizer, list(prompts), max_new_tokens=max_new_tokens)
    score = score_answers(answers, list(refs))
    nll, count = reference_nll(model, tokenizer, [list(p) + [{"role": "assistant", "content": r}] for p, r in zip(prompts, refs)])
    samples = [{"prompt": p[-1]["content"], "answer": a, "reference": r} for p, a, r in list(zip(prompts, answers, refs))[:3]]
    return {"score": score, "n": len(rows), "perplexity": math.exp(nll / count) if count else float("nan"), "samples": samples}


def reference_nll(model, tokenizer, conversations: list[list[dict]], batch_size: int = 8, max_seq_len: int = 2048) -> tuple[float, int]:
    """(summed NLL, token count) over the assistant tokens of `conversations`."""
    import torch

    total, count = 0.0, 0
    device = next(model.parameters()).device
    pad_id = pad_token_id(model, tokenizer)
    for b in range(0, len(conversations), batch_size):
        rows = [tokenize_example(tokenizer, c, max_seq_len) for c in conversations[b:b + batch_size]]
        batch = {k: v.to(device) for k, v in collate(rows, pad_id, packing=False).items()}
        with torch.no_grad():
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()
        labels = batch["labels"][:, 1:]
        loss = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), labels, ignore_index=IGNORE, reduction="sum")
        total += loss.item()
        count += int((labels != IGNORE).sum())
    return total, count


# ----------------------------------------------------------------------------------------- CLI

def run_cli(args, ws) -> int:
    """`appliance eval`: score a model folder, or a run's base model and base + adapter."""
    from appliance.models import resolve_model

    limit = getattr(args, "limit", None)
    if getattr(args, "model", None):
        dataset = resolve_dataset(args.dataset) if getattr(args, "dataset", None) else sample_eval_path()
        rows = eval_rows(dataset)
        results = {args.model: score_model(resolve_model(args.model, ws), rows, limit)}
        print_table(results, dataset)
        return 0

    run_dir = ws.run_dir(getattr(args, "run", None))
    info = read_run_info(run_dir)
    dataset = _run_eval_dataset(args, info, run_dir)
    rows = eval_rows(dataset)
    base_dir = _run_base_model(info, run_dir, ws)
    model, tokenizer = load_model(base_dir)
    results = {"base": score_model((model, tokenizer), rows, limit)}
    results["base+adapter"] = score_model((load_adapter(model, run_dir / "adapter"), tokenizer), rows, limit)
    print_table(results, dataset)
    from appliance.workspace import write_atomic

    write_atomic(run_dir / "eval.json", json.dumps({"dataset": str(dataset), "limit": limit, "results": results}, indent=2))
    return 0


def load_adapter(model, adapter_dir: Path):
    from peft import PeftModel

    if not (adapter_dir / "adapter_config.json").exists():
        raise ApplianceError(f"no adapter in {adapter_dir}", "the run has not finished; finish it with `appliance train --resume`")
    return PeftModel.from_pretrained(model, str(adapter_dir)).eval()


def read_run_info(run_dir: Path) -> dict:
    try:
        info = json.loads((run_dir / "run.json").read_text())
        return info if isinstance(info, dict) else {}
    except (OSError, ValueError):
        return {}


def _run_eval_dataset(args, info: dict, run_dir: Path) -> Path:
    if getattr(args, "dataset", None):
        return resolve_dataset(args.dataset)
    for value in (info.get("eval_dataset"), run_dir / "eval.jsonl"):
        if value and Path(value).is_file():
            return Path(value)
    dataset = info.get("dataset")
    if dataset in (None, "sample") or (isinstance(dataset, dict) and dataset.get("ref") in (None, "sample")):
        return sample_eval_path()
    raise ApplianceError(f"run {run_dir.name} records no held-out dataset", "pass one with --dataset FILE.jsonl")


def _run_base_model(info: dict, run_dir: Path, ws) -> Path:
    from appliance.models import resolve_model

    base = info.get("base_model") or {}
    if isinstance(base, str):
        base = {"ref": base}
    path = base.get("path")
    if path and Path(path).is_dir():
        return Path(path)
    ref = base.get("ref") or _adapter_base_ref(run_dir)
    if not ref:
        raise ApplianceError(f"run {run_dir.name} does not say which base model it used", "score a model directly with --model")
    return resolve_model(ref, ws)


def _adapter_base_ref(run_dir: Path) -> str | None:
    try:
        return json.loads((run_dir / "adapter" / "adapter_config.json").read_text()).get("base_model_name_or_path")
    except (OSError, ValueError):
        return None


def print_table(results: dict[str, dict], dataset: Path) -> None:
    print(f"held-out: {dataset} ({next(iter(results.values()))['n']} rows)")
    width = max(12, *(len(name) for name in results))
    print(f"{'model':<{width}} {'score':>7} {'perplexity':>11}")
    for name, r in results.items():
        print(f"{name:<{width}} {r['score']:>7.3f} {r['perplexity']:>11.3f}")
    for name, r in results.items():
        for s in r["samples"][:1]:
            print(f"  {name}: {s['prompt']!r} -> {s['answer']!r} (want {s['reference']!r})")
