"""The LoRA / QLoRA SFT recipe: setup -> train -> save, top to bottom.

    appliance train                                    # embedded SmolLM2 on the bundled sample
    appliance train --config examples/train.yaml --set max_steps=100
    appliance train --resume --run-name my-run         # continue a killed run from its last checkpoint

    from appliance.train import train
    run_dir = train(load(TrainConfig, overrides=["max_steps=20"]), ws)

The loop is written with `accelerate.Accelerator`, so `accelerate launch` with an FSDP config runs
this same recipe on N GPUs (the launch plumbing lives in appliance/distributed.py); one process on
a CPU works as is.

Run directory lifecycle (a run must be findable while it runs, so `--resume` can continue it):
- `runs/<run>/` is created at start with `run.yaml` (resolved config) and `run.json`
  `{"status": "running"}`; `metrics.jsonl`, `tensorboard/`, `loss.png` grow as it trains.
- checkpoints are written atomically to `checkpoints/checkpoint-<step>/` (only complete ones exist);
- the final `adapter/` is written atomically, then `run.json` says `"completed"`. A run is
  finished exactly when `adapter/` exists (what `Workspace.run_dir(None)` looks for).
A run killed at any moment (SIGKILL included) keeps status "running" and resumes from its newest
complete checkpoint with the same adapter weights, optimizer state, LR schedule, RNG and data position.

Loss normalisation: each optimizer step's loss is the sum of per-token losses over all its
micro-batches (and processes) divided by the number of label tokens in the step, so gradient
accumulation gives the same gradient as one big batch.

QLoRA on CPU: an eval-mode forward of an NF4 model corrupts later training (FACTS.md), so the
training model is never switched to eval mode: eval loss is computed in train mode under no_grad
(LoRA dropout is the only difference; it defaults to 0), and scoring/generation use a separate load.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import platform
import re
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from appliance import checkpoint, data, distributed, speedups
from appliance.config import TrainConfig, describe, load, to_dict
from appliance.errors import ArtifactError, ConfigError, RunNotFoundError
from appliance.loading import load_base, load_tokenizer, pick_dtype, pick_method
from appliance.models import EMBEDDED_PREFIX, folder_digest, resolve_model
from appliance.trainlog import TrainLog
from appliance.workspace import Workspace, atomic_dir, write_atomic


# ------------------------------------------------------------------------------------------- CLI

def run_cli(args: argparse.Namespace, ws: Workspace) -> int:
    """`appliance train`: build the config (file <- --set <- flags) and run the recipe."""
    if args.help_config:
        print(describe(TrainConfig))
        return 0
    values = dict(model=args.model, dataset=args.dataset, eval_dataset=args.eval_dataset, format=args.format,
                  skip_invalid=args.skip_invalid, run_name=args.run_name, method=args.method,
                  max_steps=args.max_steps, packing=args.packing, gpus=args.gpus)
    if args.resume:
        run_dir = find_resumable(ws, args.run_name)
        # The run's own resolved config is the base; flags and --set on this command still apply.
        if args.config:
            print(f"note: --resume uses {run_dir / 'run.yaml'}; --config {args.config} is ignored (use --set to change a key)")
        values["run_name"] = run_dir.name
        cfg = load(TrainConfig, run_dir / "run.yaml", args.overrides, **values)
    else:
        cfg = load(TrainConfig, args.config, args.overrides, **values)
    if cfg.gpus > 1:  # `accelerate launch` with FSDP + QLoRA running this same recipe
        return distributed.launch(cfg, ws, resume=args.resume)
    run_dir = train(cfg, ws, resume=args.resume)
    print(f"run finished: {run_dir}\n  next: appliance chat --run {run_dir.name}   |   appliance merge --run {run_dir.name}")
    return 0


def find_resumable(ws: Workspace, run_name: str | None) -> Path:
    """The run to resume: `run_name`, or the newest run that has not completed."""
    if run_name:
        run_dir = ws.runs / run_name
        if not (run_dir / "run.yaml").is_file():
            raise RunNotFoundError(f"no run '{run_name}' to resume in {ws.runs}",
                                   "start it without --resume, or pick a run from `appliance status`")
        return run_dir
    candidates = [p for p in ws.runs.iterdir() if (p / "run.json").is_file() and (p / "run.yaml").is_file()
                  and json.loads((p / "run.json").read_text()).get("status") != "completed"] if ws.runs.is_dir() else []
    if not candidates:
        raise RunNotFoundError(f"no unfinished run to resume in {ws.runs}",
                               "start a new run with `appliance train`, or name one with --run-name")
    return max(candidates, key=lambda p: (p / "run.json").stat().st_mtime)


# ---------------------------------------------------------------------------------------- recipe

def train(cfg: TrainConfig, ws: Workspace, resume: bool = False) -> Path:
    """Run the recipe; returns the run directory (with adapter/ when it completed)."""
    recipe = Recipe(cfg, ws)
    recipe.setup(resume)
    try:
        recipe.train()
        recipe.save()
    except BaseException as e:
        recipe.mark("interrupted" if isinstance(e, KeyboardInterrupt) else "failed", error=repr(e)[:500])
        raise
    finally:
        recipe.log.close()
    return recipe.run_dir


@dataclass
class Progress:
    step: int = 0  # optimizer steps done
    epoch: int = 0  # current pass over the data
    batch: int = 0  # micro-batches of `epoch` already consumed (this process)
    tokens: int = 0  # input tokens seen (all processes)


class Recipe:
    def __init__(self, cfg: TrainConfig, ws: Workspace):
        self.cfg, self.ws = cfg, ws
        self.progress = Progress()
        self.info: dict = {}

    # ------------------------------------------------------------------------------------ setup
    def setup(self, resume: bool) -> None:
        import torch
        from accelerate import Accelerator
        from accelerate.utils import set_seed

        cfg = self.cfg
        self.accelerator = acc = Accelerator()
        self.device = acc.device.type
        self.main = acc.is_main_process
        set_seed(cfg.seed)
        self.run_dir = self._open_run_dir(resume)

        self.method, why = pick_method(cfg.method, self.device)
        self.dtype = pick_dtype(cfg.dtype, self.device)
        self.say(f"method: {self.method} ({why}); compute dtype {str(self.dtype).replace('torch.', '')}; device {acc.device}"
                 + (f" x{acc.num_processes} processes" if acc.num_processes > 1 else ""))

        self.base_path = resolve_model(cfg.model, self.ws)
        self.tokenizer = load_tokenizer(self.base_path)
        self._setup_data()

        model_type = json.loads((self.base_path / "config.json").read_text()).get("model_type", "")
        self.plan = speedups.choose(cfg, self.device, quantized=self.method == "qlora", processes=acc.num_processes)
        speedups.before_load(self.plan, model_type)
        device_map = f"{self.device}:{acc.local_process_index}" if self.device == "cuda" else None
        model = load_base(self.base_path, self.method, self.dtype, device_map)
        model = speedups.after_load(model, self.plan)
        self.say(self.plan.describe())
        model = self._add_lora(model)
        model.train()  # never eval mode: see the module docstring (NF4 on CPU)

        fsdp = distributed.fsdp_prepare(acc, model)  # peft's FSDP wrap policy; False on one process
        if fsdp:  # FSDP replaces the parameters by flat shards: the optimizer must see those, so wrap first
            model = acc.prepare(model)
        self.optimizer = self._make_optimizer(model)
        self.total_steps = self._total_steps()
        self.scheduler = self._make_scheduler()
        if fsdp:
            self.model, self.optimizer = model, acc.prepare(self.optimizer)
        else:
            self.model, self.optimizer = acc.prepare(model, self.optimizer)

        ckpt = checkpoint.latest(self.run_dir) if resume else None
        if ckpt is not None:
            state = checkpoint.load(ckpt, acc.unwrap_model(self.model), self.optimizer, self.scheduler)
            self.progress = Progress(**state["progress"])
            self.say(f"resumed from {ckpt.name}: step {self.progress.step}/{self.total_steps}, "
                     f"epoch {self.progress.epoch}, batch {self.progress.batch}")
        elif resume:
            self.say(f"no checkpoint in {self.run_dir} yet: starting it from step 0")
        self.log = TrainLog(self.run_dir, self.total_steps, self.progress.step, enabled=self.main)
        self._write_run_json(status="running", started=self.info.get("started") or _now())

    def _open_run_dir(self, resume: bool) -> Path:
        cfg = self.cfg
        if not cfg.run_name:
            cfg.run_name = f"{_short_name(cfg.model)}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
        run_dir = self.ws.runs / cfg.run_name
        existed = run_dir.exists()
        self.accelerator.wait_for_everyone()  # every process looks before the main one creates it
        if existed and not resume:
            raise ConfigError([f"run_name: runs/{cfg.run_name} already exists"], source="train",
                              hint=f"continue it with `appliance train --resume --run-name {cfg.run_name}`, or pick another --run-name")
        if resume and (run_dir / "run.json").is_file():
            self.info = json.loads((run_dir / "run.json").read_text())
            if self.info.get("status") == "completed":
                raise ConfigError([f"run_name: runs/{cfg.run_name} already completed"], source="train",
                                  hint="start a new run (another --run-name) to train further")
        if self.main:
            run_dir.mkdir(parents=True, exist_ok=True)
            import yaml

            write_atomic(run_dir / "run.yaml", yaml.safe_dump(to_dict(cfg), sort_keys=False))
        self.accelerator.wait_for_everyone()
        return run_dir

    def _setup_data(self) -> None:
        cfg = self.cfg
        train_path = data.resolve_dataset(cfg.dataset)
        examples = data.load_examples(train_path, cfg.format, cfg.skip_invalid)
        if cfg.eval_dataset:
            eval_path = data.resolve_dataset(cfg.eval_dataset)
            eval_examples = data.load_examples(eval_path, cfg.format, cfg.skip_invalid)
            eval_source = "file"
        elif cfg.dataset == data.SAMPLE_NAME:
            eval_path = data.sample_eval_path()
            eval_examples = data.load_examples(eval_path)
            eval_source = "sample"
        else:  # hold out a seeded split, and keep it next to the run for later scoring
            examples, eval_examples = data.split_eval(examples, cfg.eval_fraction, cfg.seed)
            eval_path, eval_source = self.run_dir / "eval.jsonl", "split"
            if self.main and eval_examples:
                write_atomic(eval_path, "".join(json.dumps({"messages": e.messages}) + "\n" for e in eval_examples))
        tokenized = data.tokenize_examples(self.tokenizer, examples, cfg.max_seq_len)
        self.train_rows = data.pack(tokenized.rows, cfg.max_seq_len) if cfg.packing else tokenized.rows
        self.eval_rows = data.tokenize_examples(self.tokenizer, eval_examples, cfg.max_seq_len).rows if eval_examples else []
        if not self.train_rows:
            raise ConfigError([f"dataset: no trainable rows in {train_path}"], source="train",
                              hint="every example lost its assistant tokens (max_seq_len too small?)")
        self.info["dataset"] = {"ref": cfg.dataset, "path": str(train_path), "digest": data.dataset_digest(train_path),
                                "examples": len(examples), "rows": len(self.train_rows),
                                "truncated": tokenized.truncated, "dropped": tokenized.dropped}
        # eval_dataset is the held-out file's path (what `appliance eval` scores); details under "eval"
        self.info["eval_dataset"] = str(eval_path) if eval_examples else None
        self.info["eval"] = {"source": eval_source, "examples": len(self.eval_rows),
                             "digest": data.dataset_digest(eval_path) if eval_examples else None}
        if eval_source == "split":
            self.info["eval"].update(fraction=cfg.eval_fraction, seed=cfg.seed)
        self.say(f"data: {len(examples)} training examples" + (f" packed into {len(self.train_rows)} rows" if cfg.packing else "")
                 + f", {len(self.eval_rows)} eval examples")

    def _add_lora(self, model):
        import torch
        from peft import LoraConfig, get_peft_model

        cfg = self.cfg
        targets = "all-linear" if cfg.target_modules == "all-linear" else [t.strip() for t in cfg.target_modules.split(",") if t.strip()]
        lora = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                          target_modules=targets, task_type="CAUSAL_LM", bias="none")
        torch.manual_seed(cfg.seed)  # same LoRA init for the same seed
        model = get_peft_model(model, lora)
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        total = sum(p.numel() for p in model.parameters())
        self.say(f"LoRA r={cfg.lora_r} alpha={cfg.lora_alpha} on {cfg.target_modules}: "
                 f"{trainable:,} trainable of {total:,} parameters ({100 * trainable / total:.2f}%)")
        return model

    def _make_optimizer(self, model):
        import torch

        cfg = self.cfg
        params = [p for p in model.parameters() if p.requires_grad]
        kind = cfg.optimizer
        if kind == "auto":
            kind = speedups.pick_optimizer(self.plan, sum(p.numel() for p in params))
        if kind == "paged_adamw_8bit":
            if self.device != "cuda":
                raise ConfigError(["optimizer: paged_adamw_8bit needs a CUDA GPU"], source="train",
                                  hint="use --set optimizer=adamw (or auto) on CPU")
            import bitsandbytes as bnb

            opt = bnb.optim.PagedAdamW8bit(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        else:  # adamw / adamw_fused: one multi-tensor kernel per step on CUDA
            fused = kind == "adamw_fused" or (kind == "adamw" and self.device == "cuda")
            opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=fused or None)
        speedups.prepare_grads(params, self.plan)
        self.info["optimizer"] = kind
        self.say(f"optimizer: {kind}")
        return opt

    def _batches_per_epoch(self) -> int:
        per_step = self.cfg.batch_size * self.accelerator.num_processes
        return max(1, math.ceil(len(self.train_rows) / per_step))

    def _total_steps(self) -> int:
        if self.cfg.max_steps > 0:
            return self.cfg.max_steps
        return max(1, math.ceil(self.cfg.epochs * self._batches_per_epoch() / self.cfg.grad_accum))

    def _make_scheduler(self):
        from transformers import get_scheduler

        name = {"constant": "constant_with_warmup"}.get(self.cfg.lr_scheduler, self.cfg.lr_scheduler)
        warmup = int(round(self.cfg.warmup_ratio * self.total_steps))
        return get_scheduler(name, self.optimizer, num_warmup_steps=warmup, num_training_steps=self.total_steps)

    # ------------------------------------------------------------------------------------ train
    def train(self) -> None:
        import torch

        cfg, acc, p = self.cfg, self.accelerator, self.progress
        if p.step == 0 and self.eval_rows:
            self.info["eval_loss_initial"] = self.evaluate()
            self.log.eval(0, self.info["eval_loss_initial"])
        stream = self._micro_batches()
        self.log.write(f"training {self.total_steps} steps: batch {cfg.batch_size} x accum {cfg.grad_accum}"
                       + (f" x {acc.num_processes} processes" if acc.num_processes > 1 else "")
                       + f", lr {cfg.lr} ({cfg.lr_scheduler}, warmup {cfg.warmup_ratio:.0%})")
        while p.step < self.total_steps:
            t0 = time.perf_counter()
            group = [next(stream) for _ in range(cfg.grad_accum)]
            label_tokens = acc.reduce(sum(_label_tokens(b) for b in group).to(acc.device), "sum")
            step_loss = torch.zeros((), device=acc.device)
            step_tokens = 0
            for i, batch in enumerate(group):
                step_tokens += int(batch.pop("n_tokens").sum())
                sync = i == len(group) - 1
                with contextlib.nullcontext() if sync else acc.no_sync(self.model):
                    speedups.step_begin(self.plan)
                    out = self.model(**batch, num_items_in_batch=label_tokens.clamp(min=1))
                    # gradients are averaged over processes; scale so the result is sum / all label tokens
                    acc.backward(out.loss * acc.num_processes)
                step_loss += out.loss.detach()
            grad_norm = acc.clip_grad_norm_(self.model.parameters(), cfg.max_grad_norm) if cfg.max_grad_norm > 0 else None
            self.optimizer.step()
            self.scheduler.step()
            speedups.zero_grad(self.optimizer, self.plan)
            p.step += 1
            p.tokens += int(acc.reduce(torch.tensor(step_tokens, device=acc.device), "sum"))
            loss = float(acc.reduce(step_loss, "sum"))
            dt = time.perf_counter() - t0
            if p.step % cfg.log_every == 0 or p.step == self.total_steps:
                record = {"step": p.step, "epoch": p.epoch, "loss": round(loss, 6), "lr": self.scheduler.get_last_lr()[0],
                          "tokens_per_s": round(step_tokens * acc.num_processes / dt, 1), "tokens": p.tokens}
                if grad_norm is not None:
                    record["grad_norm"] = round(float(grad_norm), 6)
                self.log.step(record)
                self.info["train_loss"] = loss
            self.log.advance()
            last = p.step == self.total_steps
            if self.eval_rows and ((cfg.eval_every and p.step % cfg.eval_every == 0) or last):
                self.info["eval_loss"] = self.evaluate()
                self.log.eval(p.step, self.info["eval_loss"])
            if (cfg.save_every and p.step % cfg.save_every == 0) or last:
                self._checkpoint()

    def _micro_batches(self):
        """Micro-batches forever, epoch after epoch, starting at the saved data position.

        Each epoch's order is a permutation seeded by (seed, epoch), so a resumed run sees exactly
        the batches the uninterrupted run would have seen. `progress` tracks the position.
        """
        import torch
        from torch.utils.data import DataLoader

        p, acc = self.progress, self.accelerator
        while True:
            g = torch.Generator().manual_seed(self.cfg.seed * 1000 + p.epoch)
            order = torch.randperm(len(self.train_rows), generator=g).tolist()
            loader = acc.prepare_data_loader(DataLoader([self.train_rows[i] for i in order], batch_size=self.cfg.batch_size,
                                                        shuffle=False, collate_fn=self._collate))
            if p.batch:
                loader = acc.skip_first_batches(loader, p.batch)
            for batch in loader:
                p.batch += 1
                yield batch
            p.epoch += 1
            p.batch = 0

    def _collate(self, rows: list[dict]) -> dict:
        import torch

        batch = data.collate(rows, self.tokenizer.pad_token_id, self.cfg.packing, mask_dtype=self.dtype,
                             pad_to_multiple=self.plan.pad_to_multiple)
        batch["n_tokens"] = torch.tensor([sum(len(r["input_ids"]) for r in rows)])
        return batch

    def evaluate(self) -> float:
        """Mean loss per label token over the eval rows (train mode + no_grad; see module docstring)."""
        import torch

        acc = self.accelerator
        total, tokens = torch.zeros((), device=acc.device, dtype=torch.float64), 0
        with torch.no_grad():
            for start in range(0, len(self.eval_rows), self.cfg.batch_size):
                rows = self.eval_rows[start:start + self.cfg.batch_size]
                batch = data.collate(rows, self.tokenizer.pad_token_id, False, pad_to_multiple=self.plan.pad_to_multiple)
                batch = {k: v.to(acc.device) for k, v in batch.items()}
                n = _label_tokens(batch).to(acc.device)
                out = self.model(**batch, num_items_in_batch=n.clamp(min=1))
                total += out.loss.double() * n
                tokens += int(n)
        return round(float(total) / max(tokens, 1), 6)

    def _checkpoint(self) -> None:
        state = {"step": self.progress.step, "progress": vars(self.progress).copy(), "total_steps": self.total_steps}
        checkpoint.save(self.run_dir, state, self.model, self.optimizer, self.scheduler, self.accelerator, self.cfg.keep_last)
        self._write_run_json(status="running")
        self.log.plot()

    # ------------------------------------------------------------------------------------- save
    def save(self) -> Path:
        """The final adapter (self-contained: weights + tokenizer + chat template), then status completed."""
        acc = self.accelerator
        weights = acc.get_state_dict(self.model)
        if self.main:
            with atomic_dir(self.run_dir / "adapter", overwrite=True) as tmp:
                model = acc.unwrap_model(self.model)
                model.save_pretrained(tmp, state_dict=weights)
                check_adapter_complete(tmp, model)  # never publish an adapter that loads as the base
                self.tokenizer.save_pretrained(tmp)
            self.log.plot()
        self._write_run_json(status="completed", finished=_now())
        acc.wait_for_everyone()
        if self.main:
            summary = f"train loss {self.info.get('train_loss', float('nan')):.4f}"
            if "eval_loss" in self.info:
                summary += f", eval loss {self.info.get('eval_loss_initial', float('nan')):.4f} -> {self.info['eval_loss']:.4f}"
            self.say(f"done: {self.progress.step} steps, {summary}; adapter in {self.run_dir / 'adapter'}")
        return self.run_dir

    # ---------------------------------------------------------------------------------- helpers
    def mark(self, status: str, **extra) -> None:
        if hasattr(self, "run_dir") and self.run_dir.exists():
            self._write_run_json(status=status, **extra)

    def _write_run_json(self, status: str, **extra) -> None:
        if not self.main:
            return
        self.info.update(extra)
        p = self.progress
        self.info.update({
            "run": self.run_dir.name, "status": status, "steps": p.step, "total_steps": getattr(self, "total_steps", None),
            "tokens": p.tokens, "updated": _now(),
        })
        if hasattr(self, "base_path"):
            if "base_model" not in self.info:
                self.info["base_model"] = {"ref": self.cfg.model, "path": str(self.base_path),
                                           "digest": folder_digest(self.base_path)}
            self.info["method"] = self.method
            self.info["dtype"] = str(self.dtype).replace("torch.", "")
            self.info["device"] = _device_name(self.accelerator)
            self.info["processes"] = self.accelerator.num_processes
            self.info["versions"] = _versions()
        if hasattr(self, "plan"):
            self.info["speed_plan"] = self.plan.describe()
        write_atomic(self.run_dir / "run.json", json.dumps(self.info, indent=2, default=str))

    def say(self, text: str) -> None:
        if self.accelerator.is_main_process:
            log = getattr(self, "log", None)
            if log is not None:
                log.write(text)
            else:
                print(text, flush=True)


def _label_tokens(batch: dict):
    """Label tokens the loss counts: labels are shifted by one inside the model."""
    return (batch["labels"][:, 1:] != data.IGNORE).sum()


def _short_name(model_ref: str) -> str:
    name = model_ref[len(EMBEDDED_PREFIX):] if model_ref.startswith(EMBEDDED_PREFIX) else Path(model_ref.rstrip("/")).name
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name) or "model"


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _device_name(acc) -> str:
    import torch

    if acc.device.type == "cuda":
        return torch.cuda.get_device_name(acc.device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": sys.version.split()[0]}
    for pkg in ("appliance", "torch", "transformers", "peft", "accelerate", "bitsandbytes"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = None
    return out


def check_adapter_complete(folder: Path, model) -> None:
    """The saved adapter holds lora_A and lora_B for every LoRA module of `model`; otherwise peft
    would load it with "missing adapter keys" and silently give the base model back."""
    from peft.tuners.lora import LoraLayer
    from safetensors import safe_open

    expected = sum(2 for m in model.modules() if isinstance(m, LoraLayer) and m.lora_A)
    with safe_open(str(Path(folder) / "adapter_model.safetensors"), "pt") as f:
        keys = list(f.keys())
    lora = [k for k in keys if ".lora_A." in k or ".lora_B." in k]
    wrapped = [k for k in keys if "_fsdp_wrapped_module" in k or "_flat_param" in k]
    if len(lora) != expected or wrapped:
        raise ArtifactError(f"the adapter being saved has {len(lora)} LoRA weights where the model has {expected}"
                            + (f" (wrapper names such as {wrapped[0]!r})" if wrapped else ""),
                            "nothing was written to adapter/; report this with run.json (distributed settings)")
