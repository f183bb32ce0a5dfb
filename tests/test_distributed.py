"""`appliance train --gpus N`: the accelerate launch command, the shipped FSDP config, and the
single-process path (no GPUs needed: the multi-GPU run itself is recorded in bench/, not here)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

from appliance import distributed
from appliance.config import TrainConfig, load
from appliance.errors import ConfigError


def test_shipped_fsdp_config_is_valid_for_accelerate():
    pytest.importorskip("accelerate")
    from accelerate.commands.config.config_args import load_config_from_file

    raw = yaml.safe_load(distributed.FSDP_CONFIG.read_text())
    fsdp = raw["fsdp_config"]
    # what FSDP + QLoRA needs (peft / bitsandbytes FSDP-QLoRA guides)
    assert raw["distributed_type"] == "FSDP"
    assert fsdp["fsdp_use_orig_params"] is False
    assert fsdp["fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"
    assert fsdp["fsdp_sharding_strategy"] == "FULL_SHARD"
    cfg = load_config_from_file(str(distributed.FSDP_CONFIG))
    assert cfg.distributed_type.value == "FSDP" and cfg.num_machines == 1


def test_launch_command_parses_with_accelerate(tmp_path):
    pytest.importorskip("accelerate")
    from accelerate.commands.launch import launch_command_parser

    cmd = distributed.launch_command(2, tmp_path / "train.yaml", tmp_path / "ws", "run-a", resume=True)
    assert cmd[:3] == [sys.executable, "-m", "accelerate.commands.launch"]
    args = launch_command_parser().parse_args(cmd[3:])
    assert args.num_processes == 2
    assert Path(args.config_file) == distributed.FSDP_CONFIG
    assert args.module and args.training_script == "appliance.cli"
    assert args.training_script_args == ["train", "--home", str(tmp_path / "ws"), "--config",
                                         str(tmp_path / "train.yaml"), "--run-name", "run-a", "--resume"]


def test_launched_processes_share_run_name_and_use_fsdp_safe_settings():
    cfg = TrainConfig(gpus=2, model="/models/Qwen2.5-7B/")
    distributed.prepare_config(cfg)
    assert cfg.run_name.startswith("Qwen2.5-7B-") and cfg.optimizer == "adamw"
    keep = TrainConfig(gpus=2, run_name="mine", optimizer="paged_adamw_8bit")
    distributed.prepare_config(keep)
    assert keep.run_name == "mine" and keep.optimizer == "paged_adamw_8bit"
    env = distributed.launch_env({"PATH": "/bin", "NCCL_NVLS_ENABLE": "1"})
    assert env[distributed.LAUNCHED_ENV] == "1" and env["APPLIANCE_COMPILE"] == "0"
    assert env["NCCL_NVLS_ENABLE"] == "1"  # the user's explicit choice is kept
    assert distributed.launch_env({})["NCCL_NVLS_ENABLE"] == "0"


def test_resolved_config_round_trips_through_yaml(tmp_path):
    from appliance.config import to_dict

    cfg = load(TrainConfig, None, ["lr=0.0001", "max_steps=7"], gpus=2, run_name="r1")
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    assert load(TrainConfig, path) == cfg


def test_too_many_gpus_is_a_config_error(monkeypatch):
    torch = pytest.importorskip("torch")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError) as e:
        distributed.check_gpus(2)
    assert "gpus" in str(e.value) and "0 CUDA" in str(e.value)


def test_single_process_path_runs_the_recipe_here(monkeypatch, tmp_path):
    import appliance.train as train_mod

    calls = []

    def fake_train(cfg, ws, resume=False):
        calls.append((cfg.gpus, resume))
        return tmp_path / "runs" / "x"

    monkeypatch.setattr(train_mod, "train", fake_train)
    monkeypatch.setattr(distributed.subprocess, "run", lambda *a, **k: pytest.fail("must not relaunch"))
    ws = type("WS", (), {"home": tmp_path})()
    assert distributed.launch(TrainConfig(gpus=1), ws) == 0
    # inside an accelerate-launched process, --gpus 2 runs the recipe instead of launching again
    monkeypatch.setenv(distributed.LAUNCHED_ENV, "1")
    assert distributed.launch(TrainConfig(gpus=2), ws, resume=True) == 0
    assert calls == [(1, False), (2, True)]


def test_multi_gpu_launch_runs_accelerate_with_the_resolved_config(monkeypatch, tmp_path):
    monkeypatch.delenv(distributed.LAUNCHED_ENV, raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setattr(distributed, "check_gpus", lambda n: None)
    seen = {}

    def fake_run(cmd, env):
        seen["cmd"], seen["env"] = cmd, env
        seen["cfg"] = load(TrainConfig, cmd[cmd.index("--config") + 1])  # read while it exists
        return type("R", (), {"returncode": 0})()

    monkeypatch.setattr(distributed.subprocess, "run", fake_run)
    ws = type("WS", (), {"home": tmp_path})()
    assert distributed.launch(TrainConfig(gpus=2, lr=3e-4, run_name="fsdp-run"), ws) == 0
    assert seen["cmd"][seen["cmd"].index("--num_processes") + 1] == "2"
    assert seen["cfg"].lr == 3e-4 and seen["cfg"].gpus == 2 and seen["cfg"].optimizer == "adamw"
    assert seen["env"][distributed.LAUNCHED_ENV] == "1"


def test_fsdp_prepare_is_a_no_op_without_fsdp():
    acc = type("Acc", (), {"state": type("S", (), {})()})()
    assert distributed.fsdp_prepare(acc, object()) is False
