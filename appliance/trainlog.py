"""What a training run reports: metrics.jsonl, TensorBoard events, loss.png and a progress bar.

    log = TrainLog(run_dir, total_steps, start_step, enabled=accelerator.is_main_process)
    log.step({"step": 3, "loss": 1.9, "lr": 2e-4, "tokens_per_s": 812.0})
    log.eval(3, eval_loss=2.1)
    log.close()                 # flushes TensorBoard, draws loss.png

The progress bar (tqdm) shows loss, tokens/s and ETA. When stderr is not a terminal (CI, logs piped
to a file) it redraws at most every 30 s, so logs are not flooded.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


class TrainLog:
    def __init__(self, run_dir: Path, total_steps: int, start_step: int = 0, enabled: bool = True):
        self.run_dir = Path(run_dir)
        self.enabled = enabled
        self.metrics_path = self.run_dir / "metrics.jsonl"
        self._writer = None
        self._bar = None
        if not enabled:
            return
        if start_step == 0 and self.metrics_path.exists():
            self.metrics_path.unlink()
        elif start_step:
            self._truncate_after(start_step)
        from tqdm.auto import tqdm

        try:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(str(self.run_dir / "tensorboard"), purge_step=start_step + 1 if start_step else None)
        except ImportError:  # the tensorboard package is optional at run time
            print("note: tensorboard is not installed: no tensorboard/ events (metrics.jsonl has everything)", flush=True)
        if sys.stderr.isatty():
            self._bar = tqdm(total=total_steps, initial=start_step, desc="train", unit="step", dynamic_ncols=True,
                             mininterval=0.5, file=sys.stderr)
        else:  # CI / piped logs: one plain line at most every 30 s instead of a redrawn bar
            self._bar = PlainProgress(total_steps, start_step, every_s=30.0)

    def _truncate_after(self, step: int) -> None:
        """On resume, drop lines logged after the checkpoint we resume from (they will be redone)."""
        if not self.metrics_path.exists():
            return
        keep = [line for line in self.metrics_path.read_text().splitlines()
                if line.strip() and json.loads(line).get("step", 0) <= step]
        self.metrics_path.write_text("".join(line + "\n" for line in keep))

    def _append(self, record: dict) -> None:
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps(record) + "\n")

    def step(self, record: dict) -> None:
        """One optimizer step's metrics (logged to every sink) and a progress-bar tick."""
        if not self.enabled:
            return
        self._append(record)
        for key in ("loss", "lr", "grad_norm", "tokens_per_s"):
            if key in record and self._writer is not None:
                self._writer.add_scalar(f"train/{key}", record[key], record["step"])
        self._bar.set_postfix(loss=f"{record['loss']:.4f}", tok_s=f"{record.get('tokens_per_s', 0):.0f}", refresh=False)

    def advance(self, n: int = 1) -> None:
        if self._bar is not None:
            self._bar.update(n)

    def eval(self, step: int, eval_loss: float) -> None:
        if not self.enabled:
            return
        self._append({"step": step, "eval_loss": eval_loss})
        if self._writer is not None:
            self._writer.add_scalar("eval/loss", eval_loss, step)
        self._bar.write(f"step {step}: eval_loss {eval_loss:.4f}")

    def write(self, text: str) -> None:
        """Print a line without breaking the progress bar."""
        if self._bar is not None:
            self._bar.write(text)
        elif self.enabled:
            print(text, flush=True)

    def records(self) -> list[dict]:
        if not self.metrics_path.exists():
            return []
        return [json.loads(line) for line in self.metrics_path.read_text().splitlines() if line.strip()]

    def plot(self) -> None:
        if self.enabled:
            plot_losses(self.records(), self.run_dir / "loss.png")

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        if self._writer is not None:
            self._writer.flush()
            self._writer.close()
            self._writer = None


def plot_losses(records: list[dict], out: Path) -> None:
    """Training (and eval) loss against step, as a PNG (matplotlib, no display needed)."""
    try:
        import matplotlib
    except ImportError:
        return  # optional: metrics.jsonl holds the same numbers
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [(r["step"], r["loss"]) for r in records if "loss" in r]
    evals = [(r["step"], r["eval_loss"]) for r in records if "eval_loss" in r]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    if train:
        ax.plot(*zip(*train), label="train loss")
    if evals:
        ax.plot(*zip(*evals), marker="o", label="eval loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (per label token)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    tmp = out.with_name(".tmp-" + out.name)
    fig.savefig(tmp, format="png")
    plt.close(fig)
    tmp.replace(out)


class PlainProgress:
    """tqdm's interface (update, set_postfix, write, close) as plain log lines, throttled."""

    def __init__(self, total: int, initial: int = 0, every_s: float = 30.0):
        import time

        self.total, self.n, self.every_s = total, initial, every_s
        self._clock = time.monotonic
        self._start, self._start_n, self._last = self._clock(), initial, self._clock()
        self._postfix: dict = {}

    def set_postfix(self, refresh: bool = False, **kw) -> None:
        self._postfix = kw

    def update(self, n: int = 1) -> None:
        self.n += n
        now = self._clock()
        if now - self._last >= self.every_s or self.n >= self.total:
            self._last = now
            rate = (self.n - self._start_n) / max(now - self._start, 1e-9)
            eta = (self.total - self.n) / rate if rate > 0 else float("inf")
            extra = " ".join(f"{k}={v}" for k, v in self._postfix.items())
            print(f"train {self.n}/{self.total} {extra} eta {_fmt_s(eta)}", file=sys.stderr, flush=True)

    def write(self, text: str) -> None:
        print(text, flush=True)

    def close(self) -> None:
        pass


def _fmt_s(seconds: float) -> str:
    if seconds == float("inf"):
        return "?"
    m, s = divmod(int(seconds), 60)
    return f"{m}:{s:02d}" if m < 60 else f"{m // 60}:{m % 60:02d}:{s:02d}"
