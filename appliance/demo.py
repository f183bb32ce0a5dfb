"""The whole job on the embedded model, as a list of named steps (what `bash bootstrap.sh demo` runs).

    python -m appliance.demo [--home DIR] [--max-steps N] [--method auto|lora|qlora] [--limit N]

Steps: score the base model on the sample's held-out split, fine-tune it (LoRA on CPU, QLoRA on a
GPU), score the fine-tune, merge, then a one-shot chat with a held-out prompt. A before/after table
with timings closes it. Then (appliance/demo_serve.py) the merged model is exported to signed GGUF
Q4_K_M and GPTQ artifacts, both are verified, a real gateway serves the GGUF through llama.cpp, and
the GPTQ artifact is hot-swapped in (vLLM); `--no-serve` stops after chat.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Callable

from appliance.workspace import Workspace

# On 2 CPU cores one LoRA step of SmolLM2-135M at batch 8 takes ~2-3 s: 120 steps (3 epochs of the
# 320-row sample) take ~5-6 min and lift the held-out score from ~0 to most rows right.
CPU_STEPS = 120
GPU_STEPS = 120


@dataclass
class Demo:
    ws: Workspace
    args: argparse.Namespace
    run_name: str = ""
    run_dir: Path | None = None
    merged: Path | None = None
    scores: dict[str, dict] = field(default_factory=dict)
    timings: list[tuple[str, float, str]] = field(default_factory=list)
    base_model: Path | None = None
    _base: tuple | None = None  # (model, tokenizer) of the base, loaded for scoring
    artifacts: list[Path] = field(default_factory=list)  # signed exports (demo_serve)
    gateway: object | None = None  # the `appliance serve` process (demo_serve)
    gateway_url: str = ""
    admin_token: str = ""

    def eval_rows(self):
        from appliance.data import sample_eval_path
        from appliance.evaluate import eval_rows

        rows = eval_rows(sample_eval_path())
        return rows[: self.args.limit] if self.args.limit else rows


def prepare(demo: Demo) -> str:
    from appliance.models import resolve_model

    demo.base_model = resolve_model("embedded:smollm2-135m-instruct", demo.ws)
    return f"base model {demo.base_model}"


def score_base(demo: Demo) -> str:
    from appliance.evaluate import load_model, score_model

    demo._base = load_model(demo.base_model)  # a separate load: the trainer never sees this instance
    demo.scores["base"] = score_model(demo._base, demo.eval_rows())
    return _score_line(demo.scores["base"])


def train_step(demo: Demo) -> str:
    import torch

    from appliance.config import TrainConfig, load
    from appliance.train import train

    steps = demo.args.max_steps or (GPU_STEPS if torch.cuda.is_available() else CPU_STEPS)
    cfg = load(TrainConfig, None, [], run_name=demo.run_name, method=demo.args.method, max_steps=steps,
               save_every=max(steps // 2, 1), eval_every=max(steps // 4, 1))
    demo.run_dir = train(cfg, demo.ws)
    import json

    info = json.loads((demo.run_dir / "run.json").read_text())
    return (f"{info['method']}, {steps} steps, eval loss {info.get('eval_loss_initial', float('nan')):.3f} -> "
            f"{info.get('eval_loss', float('nan')):.3f}; run {demo.run_dir}")


def score_finetune(demo: Demo) -> str:
    from appliance.evaluate import load_adapter, score_model

    model, tok = demo._base
    demo.scores["fine-tuned"] = score_model((load_adapter(model, demo.run_dir / "adapter"), tok), demo.eval_rows())
    demo._base = None
    return _score_line(demo.scores["fine-tuned"])


def merge_step(demo: Demo) -> str:
    import json

    from appliance.merge import merge

    demo.merged = merge(demo.ws, demo.run_name)
    diff = json.loads((demo.merged / "merge.json").read_text())["max_logit_diff"]
    return f"{demo.merged} (max logit diff vs base+adapter {diff:.3g})"


def chat_step(demo: Demo) -> str:
    from appliance.chat import LocalChat
    from appliance.evaluate import prompt_and_reference

    messages, reference = prompt_and_reference(demo.eval_rows()[0])
    bot = LocalChat.open(demo.ws, model=str(demo.merged))
    print(f"  user> {messages[-1]['content']}\n  assistant> ", end="", flush=True)
    pieces = []
    for piece in bot.stream(messages, max_new_tokens=64):
        print(piece, end="", flush=True)
        pieces.append(piece)
    answer = "".join(pieces)
    print(f"\n  (reference: {reference})", flush=True)
    return f"answered {answer.strip()!r}"


STEPS: list[tuple[str, Callable[[Demo], str]]] = [
    ("prepare", prepare),
    ("score base", score_base),
    ("train", train_step),
    ("score fine-tune", score_finetune),
    ("merge", merge_step),
    ("chat", chat_step),
]


def _serving_steps() -> list[tuple[str, Callable[[Demo], str]]]:
    from appliance import demo_serve

    return demo_serve.STEPS


def run(demo: Demo, steps: list[tuple[str, Callable[[Demo], str]]] = STEPS) -> Demo:
    for i, (name, fn) in enumerate(steps, 1):
        print(f"\n=== [{i}/{len(steps)}] {name} ===", flush=True)
        t0 = time.perf_counter()
        summary = fn(demo)
        dt = time.perf_counter() - t0
        demo.timings.append((name, dt, summary))
        print(f"--- {name}: {summary} ({dt:.0f} s)", flush=True)
    print_summary(demo)
    return demo


def print_summary(demo: Demo) -> None:
    print("\n=== summary ===")
    print(f"{'step':<18} {'time':>8}  result")
    for name, dt, summary in demo.timings:
        print(f"{name:<18} {_fmt(dt):>8}  {summary}")
    print(f"{'total':<18} {_fmt(sum(t for _, t, _ in demo.timings)):>8}")
    if demo.scores:
        n = next(iter(demo.scores.values()))["n"]
        print(f"\nheld-out score ({n} rows of the sample's eval split, exact JSON-field match):")
        print(f"{'model':<12} {'score':>7} {'perplexity':>11}")
        for name, s in demo.scores.items():
            print(f"{name:<12} {s['score']:>7.1%} {s['perplexity']:>11.3f}")
    if demo.run_dir:
        print(f"\nnext: appliance chat --run {demo.run_name} --home {demo.ws.home}")


def _score_line(s: dict) -> str:
    line = f"score {s['score']:.1%} on {s['n']} rows, perplexity {s['perplexity']:.3f}"
    if s.get("samples"):
        x = s["samples"][0]
        line += f"; e.g. {x['prompt']!r} -> {x['answer']!r}"
    return line


def _fmt(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    return f"{m}m{s:02d}s" if m else f"{s}s"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m appliance.demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--home", help="workspace folder (default $APPLIANCE_HOME or ./workspace)")
    p.add_argument("--max-steps", type=int, help=f"training steps (default {CPU_STEPS} on CPU, {GPU_STEPS} on GPU)")
    p.add_argument("--method", choices=["auto", "lora", "qlora"], default="auto")
    p.add_argument("--limit", type=int, help="score only the first N held-out rows")
    p.add_argument("--no-serve", action="store_true",
                   help="stop after chat (skip export, verify, serve and the hot-swap deploy)")
    args = p.parse_args(argv)

    from transformers.utils import logging as hf_logging

    from appliance.errors import ApplianceError

    hf_logging.disable_progress_bar()  # per-load bars would bury the demo's own output
    ws = Workspace.open(args.home)
    demo = Demo(ws=ws, args=args, run_name=f"demo-{datetime.now().strftime('%Y%m%d-%H%M%S')}")
    print(f"appliance demo in {ws.home} (run {demo.run_name})")
    steps = STEPS if args.no_serve else STEPS + _serving_steps()
    try:
        run(demo, steps)
    except ApplianceError as e:
        print(f"error: {e.message}" + (f"\n  -> {e.hint}" if e.hint else ""), file=sys.stderr)
        return e.exit_code
    finally:
        from appliance.demo_serve import stop_gateway

        stop_gateway(demo)
    return 0


if __name__ == "__main__":
    sys.exit(main())
