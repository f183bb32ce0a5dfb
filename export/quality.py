"""Score artifacts at export: held-out task score and reference perplexity, next to the source model's.

    rows = eval_rows(path)[:n]
    ref = score_hf(source_dir, rows)         # the merged model (transformers)
    q = score_gguf(file.gguf, rows, tok)     # llama.cpp in-process: greedy answers + NLL of the references
    q = score_hf(awq_dir, rows)              # compressed-tensors folders decompress on load in transformers
    print_quality_table({...})

Each result is {"score", "perplexity", "n"}; score/perplexity come from appliance.evaluate so the
numbers match `appliance eval`.
"""

from __future__ import annotations

import math
from pathlib import Path


def score_hf(model_dir: Path, rows: list, max_new_tokens: int = 64) -> dict:
    from appliance.evaluate import load_model, score_model

    model, tokenizer = load_model(model_dir)
    r = score_model((model, tokenizer), rows, max_new_tokens=max_new_tokens)
    return {"score": r["score"], "perplexity": _num(r["perplexity"]), "n": r["n"],
            "sample": r["samples"][0] if r["samples"] else None}


def score_gguf(path: Path, rows: list, tokenizer, max_new_tokens: int = 64) -> dict:
    """Greedy answers with the GGUF's own chat template, and perplexity of the reference answers.

    The reference NLL is over the answer tokens (those past the prompt's), with the source model's
    tokenizer and chat template, exactly as for the HF models.
    """
    import numpy as np

    from appliance.data import render
    from appliance.evaluate import prompt_and_reference, score_answers
    from export.gguf import chat, load

    llm = load(path, n_ctx=2048, logits_all=True)
    try:
        answers, refs, nll, count = [], [], 0.0, 0
        for row in rows:
            prompt, ref = prompt_and_reference(row)
            llm.reset()
            answers.append(chat(llm, prompt, max_tokens=max_new_tokens)[0])
            refs.append(ref)
            # the HF tokenizer's ids (same vocabulary) so perplexities compare token for token with the source
            before = tokenizer(render(tokenizer, prompt, add_generation_prompt=True), add_special_tokens=False)["input_ids"]
            full = tokenizer(render(tokenizer, prompt + [{"role": "assistant", "content": ref}]),
                             add_special_tokens=False)["input_ids"]
            if full[:len(before)] != before or len(full) <= len(before) or len(full) > 2048:
                continue
            llm.reset()
            llm.eval(full)
            logits = np.asarray(llm.scores[: len(full) - 1], dtype=np.float64)
            logits -= logits.max(axis=1, keepdims=True)
            logp = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
            targets = np.asarray(full[1:])
            positions = np.arange(len(before) - 1, len(full) - 1)
            nll -= float(logp[positions, targets[positions]].sum())
            count += len(positions)
    finally:
        llm.close()
    sample = {"prompt": rows[0].messages[-2]["content"] if rows and len(rows[0].messages) > 1 else None,
              "answer": answers[0] if answers else None, "reference": refs[0] if refs else None}
    return {"score": score_answers(answers, refs) if refs else 0.0,
            "perplexity": _num(math.exp(nll / count)) if count else None, "n": len(rows), "sample": sample}


def print_quality_table(results: dict[str, dict | None], held_out: str | None) -> None:
    """One line per model: score and perplexity on the held-out rows (reference first)."""
    print(f"\nquality on held-out rows{f' ({held_out})' if held_out else ''}:")
    print(f"  {'model':<40} {'score':>7} {'perplexity':>11}")
    for name, r in results.items():
        if not r:
            print(f"  {name:<40} {'-':>7} {'-':>11}")
            continue
        ppl = f"{r['perplexity']:.3f}" if r.get("perplexity") is not None else "-"
        print(f"  {name:<40} {r['score']:>7.3f} {ppl:>11}")


def _num(x: float) -> float | None:
    return None if x is None or not math.isfinite(x) else round(float(x), 4)
