"""Multi-GPU training: `appliance train --gpus N` runs the same recipe on N processes with FSDP + QLoRA.

No home-made distributed code: the command relaunches itself through `accelerate launch` with the
shipped config (appliance/configs/fsdp_qlora.yaml), and each process runs `appliance.train.train`
(written with `accelerate.Accelerator`), so the run directory and the adapter are the same as on one
GPU. Inside a launched process (or with --gpus 1) `launch` simply runs the recipe.

    appliance train --gpus 2 --model ./my-7b --dataset data.jsonl
    # = accelerate launch --config_file appliance/configs/fsdp_qlora.yaml --num_processes 2 \
    #       -m appliance.cli train --home WS --config <resolved run config> --run-name <run>

What FSDP + QLoRA needs, and where it is done:
- the 4-bit weights stored in the compute dtype (bnb_4bit_quant_storage): appliance/loading.py;
- decoder layers wrapped one FSDP unit each, LoRA weights in their own units (peft's
  `fsdp_auto_wrap_policy`, use_orig_params false): `fsdp_prepare`, called before accelerator.prepare;
- torch AdamW instead of paged 8-bit AdamW (which fails when saving FSDP checkpoints, per peft's
  guide) and no compiled layers (not verified under FSDP): set in the launched config / environment.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from datetime import datetime
from pathlib import Path

from appliance.errors import ConfigError, MissingDependencyError

FSDP_CONFIG = Path(__file__).parent / "configs" / "fsdp_qlora.yaml"
LAUNCHED_ENV = "APPLIANCE_LAUNCHED"
# Keep NCCL's NVLink multicast off (it can take shared GPUs out of service); users may override.
SAFE_ENV = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1"}


def in_launched_process() -> bool:
    """True inside a process that accelerate/torchrun started (ours or the user's own launch)."""
    return os.environ.get(LAUNCHED_ENV) == "1" or int(os.environ.get("WORLD_SIZE", "1")) > 1


def launch(cfg, ws, resume: bool = False) -> int:
    """Run the training recipe on `cfg.gpus` GPUs (relaunching through accelerate), or here."""
    if cfg.gpus <= 1 or in_launched_process():
        from appliance.train import train

        run_dir = train(cfg, ws, resume=resume)
        if int(os.environ.get("RANK", "0")) == 0:
            print(f"run finished: {run_dir}")
        return 0
    check_gpus(cfg.gpus)
    prepare_config(cfg)
    with tempfile.TemporaryDirectory(prefix="appliance-launch-") as tmp:
        run_yaml = Path(tmp) / "train.yaml"
        import yaml

        from appliance.config import to_dict

        run_yaml.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
        cmd = launch_command(cfg.gpus, run_yaml, ws.home, cfg.run_name, resume)
        print(f"launching {cfg.gpus} processes (FSDP + QLoRA): {' '.join(cmd)}", flush=True)
        return subprocess.run(cmd, env=launch_env()).returncode


def prepare_config(cfg) -> None:
    """Settings every process must share: one run name, an FSDP-safe optimizer."""
    if not cfg.run_name:
        model = str(cfg.model).rstrip("/").split("/")[-1].split(":")[-1] or "run"
        cfg.run_name = f"{model}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    if cfg.optimizer == "auto":
        cfg.optimizer = "adamw"  # paged 8-bit AdamW breaks FSDP checkpoint saving (peft FSDP guide)


def launch_command(num_processes: int, run_yaml: str | Path, home: str | Path, run_name: str | None,
                   resume: bool = False, config_file: str | Path = FSDP_CONFIG) -> list[str]:
    """argv that runs `appliance train` on `num_processes` processes via `accelerate launch`."""
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config_file),
           "--num_processes", str(num_processes), "-m", "appliance.cli", "train", "--home", str(home),
           "--config", str(run_yaml)]
    if run_name:
        cmd += ["--run-name", run_name]
    if resume:
        cmd.append("--resume")
    return cmd


def launch_env(base: dict | None = None) -> dict:
    env = dict(os.environ if base is None else base)
    for k, v in SAFE_ENV.items():
        env.setdefault(k, v)
    env[LAUNCHED_ENV] = "1"
    env.setdefault("APPLIANCE_COMPILE", "0")  # compiled layers are not verified under FSDP
    return env


def check_gpus(n: int) -> None:
    """Fail early, naming the field, when the machine cannot run `n` processes."""
    try:
        import accelerate  # noqa: F401
    except ImportError as e:
        raise MissingDependencyError("multi-GPU training needs accelerate", "pip install accelerate") from e
    import torch

    have = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if have < n:
        raise ConfigError([f"gpus: {n} requested but this machine has {have} CUDA GPU(s)"], source="train",
                          hint=f"use --gpus {max(have, 1)}" + ("" if have else " (trains on this machine's device)"))


def fsdp_prepare(accelerator, model) -> bool:
    """Before `accelerator.prepare(model, ...)`: peft's auto-wrap policy (decoder layers and LoRA
    weights as separate FSDP units). Returns True when FSDP is active. A no-op on one process."""
    plugin = getattr(accelerator.state, "fsdp_plugin", None)
    if plugin is None:
        return False
    from peft.utils.other import fsdp_auto_wrap_policy

    plugin.auto_wrap_policy = fsdp_auto_wrap_policy(model)
    return True
