"""Training checkpoints: save, find the latest, restore, keep the last K.

    runs/<run>/checkpoints/checkpoint-<step>/
        adapter_model.safetensors, adapter_config.json   the LoRA weights (peft)
        optimizer.pt, scheduler.pt                        optimizer + LR schedule state
        rng.pt                                            python / numpy / torch (+cuda) RNG states
        state.json                                        step, data position (epoch, batch), tokens seen

Each checkpoint is written under a temporary name and renamed when complete (`atomic_dir`), so a
run killed mid-save (SIGKILL, power loss) leaves only complete checkpoints behind; `latest()` picks
the highest complete step.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

from appliance.workspace import TMP_PREFIX, atomic_dir

PREFIX = "checkpoint-"


def checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith(PREFIX) and (p / "state.json").is_file()]
    return sorted(found, key=lambda p: int(p.name[len(PREFIX):]))


def latest(run_dir: Path) -> Path | None:
    found = checkpoints(run_dir)
    return found[-1] if found else None


def save(run_dir: Path, state: dict, model, optimizer, scheduler, accelerator, keep_last: int) -> Path:
    """Write checkpoint-<state['step']> atomically, then delete all but the newest `keep_last`."""
    import torch

    final = Path(run_dir) / "checkpoints" / f"{PREFIX}{state['step']}"
    weights = accelerator.get_state_dict(model)  # collective under FSDP: every process calls it
    if accelerator.is_main_process:
        with atomic_dir(final, overwrite=True) as tmp:
            accelerator.unwrap_model(model).save_pretrained(tmp, state_dict=weights)
            torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
            torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
            torch.save(rng_state(), tmp / "rng.pt")
            (tmp / "state.json").write_text(json.dumps(state, indent=2))
        prune(run_dir, keep_last)
    accelerator.wait_for_everyone()
    return final


def load(ckpt: Path, model, optimizer, scheduler) -> dict:
    """Restore adapter weights, optimizer, scheduler and RNG from `ckpt`; returns its state.json."""
    import torch
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    weights = load_file(str(ckpt / "adapter_model.safetensors"))
    result = set_peft_model_state_dict(model, weights)
    unexpected = getattr(result, "unexpected_keys", None)
    if unexpected:
        raise RuntimeError(f"{ckpt}: adapter weights do not fit the model: {unexpected[:3]}")
    optimizer.load_state_dict(torch.load(ckpt / "optimizer.pt", weights_only=False))
    scheduler.load_state_dict(torch.load(ckpt / "scheduler.pt", weights_only=False))
    set_rng_state(torch.load(ckpt / "rng.pt", weights_only=False))
    return json.loads((ckpt / "state.json").read_text())


def prune(run_dir: Path, keep_last: int) -> None:
    """Delete all but the newest `keep_last` checkpoints, and leftovers of interrupted saves."""
    found = checkpoints(run_dir)
    for old in found[:-keep_last] if keep_last > 0 else found:
        shutil.rmtree(old, ignore_errors=True)
    root = Path(run_dir) / "checkpoints"
    for tmp in root.glob(TMP_PREFIX + "*"):
        shutil.rmtree(tmp, ignore_errors=True)


def rng_state() -> dict:
    import numpy as np
    import torch

    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    import numpy as np
    import torch

    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
