"""The SFT recipe on a tiny random-init Llama (fast) and, once, on the embedded SmolLM2 (slow).

Checked effects: base weights unchanged and LoRA weights changed, loss falls, the run directory
holds every file with its provenance, keep-last prunes, packing trains, and a SIGKILLed run resumes
with the same optimizer state and then produces exactly the losses of an uninterrupted run.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from train_fixtures import make_tiny_llama, module_workspace, small_dataset, tiny_train_config

# The embedded model learns the sample task fast on CPU: at 30 steps (batch 8, ~75 s on 2 cores) the
# training loss is ~0.01; the base scores 0% on the held-out split (measured 2026-11: demo, 120 steps: 97.5%).
SLOW_STEPS = 30
SLOW_ROWS = 20


@pytest.fixture(scope="module")
def tiny(base_model, tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    return {"model": make_tiny_llama(base_model, root / "tiny-llama"), "dataset": small_dataset(root / "train.jsonl")}


@pytest.fixture(scope="module")
def tws(tmp_path_factory):
    return module_workspace(tmp_path_factory, "train-ws")


@pytest.fixture(scope="module")
def trained(tws, tiny):
    """One recipe run driven step by step, so the in-memory base weights can be compared."""
    from appliance.train import Recipe

    cfg = tiny_train_config(tiny["model"], tiny["dataset"], "tiny-basic", max_steps=8, save_every=2, keep_last=2)
    recipe = Recipe(cfg, tws)
    recipe.setup(resume=False)
    model = recipe.accelerator.unwrap_model(recipe.model)
    named = dict(model.named_parameters())
    before = {n: p.detach().clone() for n, p in named.items()}
    recipe.train()
    recipe.save()
    recipe.log.close()
    after = {n: p.detach().clone() for n, p in model.named_parameters()}
    return {"run_dir": recipe.run_dir, "before": before, "after": after, "cfg": cfg}


def _records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]


def test_base_frozen_lora_changed(trained):
    before, after = trained["before"], trained["after"]
    lora = [n for n in before if "lora_" in n]
    base = [n for n in before if "lora_" not in n]
    assert lora and base
    assert all(before[n].equal(after[n]) for n in base), "a base weight changed"
    changed = [n for n in lora if not before[n].equal(after[n])]
    assert len(changed) == len(lora), f"{len(lora) - len(changed)} LoRA tensors never changed"


def test_loss_falls(trained):
    recs = _records(trained["run_dir"])
    train = [r["loss"] for r in recs if "loss" in r]
    evals = [r["eval_loss"] for r in recs if "eval_loss" in r]
    assert len(train) == 8
    assert sum(train[-2:]) / 2 < sum(train[:2]) / 2
    assert evals[-1] < evals[0]
    assert all(r["tokens_per_s"] > 0 and r["lr"] >= 0 for r in recs if "loss" in r)


def test_run_dir_complete_with_provenance(trained, tiny):
    from appliance.models import folder_digest

    run_dir = trained["run_dir"]
    for name in ("run.yaml", "run.json", "metrics.jsonl", "loss.png", "adapter/adapter_model.safetensors",
                 "adapter/adapter_config.json", "adapter/tokenizer.json", "adapter/chat_template.jinja"):
        assert (run_dir / name).is_file(), name
    assert (run_dir / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    info = json.loads((run_dir / "run.json").read_text())
    assert info["status"] == "completed" and info["steps"] == 8 and info["finished"]
    assert info["base_model"]["digest"] == folder_digest(tiny["model"])
    assert info["dataset"]["digest"] == hashlib.sha256(tiny["dataset"].read_bytes()).hexdigest()
    assert info["dataset"]["path"] == str(tiny["dataset"])
    assert info["eval_dataset"] == str(run_dir / "eval.jsonl") and info["eval"]["source"] == "split"
    held_out = [json.loads(line) for line in (run_dir / "eval.jsonl").read_text().splitlines()]
    assert len(held_out) == info["eval"]["examples"] == round(0.2 * 24)
    for pkg in ("torch", "transformers", "peft", "appliance"):
        assert info["versions"][pkg]
    assert info["eval_loss"] < info["eval_loss_initial"]
    import yaml

    assert yaml.safe_load((run_dir / "run.yaml").read_text())["lr"] == trained["cfg"].lr


def test_incomplete_adapter_is_refused(trained, tiny, tmp_path):
    """A saved adapter missing LoRA weights (as a broken distributed save would write) is an error:
    peft would load it with "missing adapter keys" and give the base model back."""
    from peft import PeftModel
    from safetensors.torch import load_file, save_file
    from transformers import AutoModelForCausalLM

    from appliance.errors import ArtifactError
    from appliance.train import check_adapter_complete

    adapter = trained["run_dir"] / "adapter"
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny["model"]), adapter)
    check_adapter_complete(adapter, model)  # the trained run's own adapter is complete
    weights = load_file(adapter / "adapter_model.safetensors")
    broken = tmp_path / "broken"
    broken.mkdir()
    save_file({k: v for k, v in weights.items() if "layers.0." not in k}, broken / "adapter_model.safetensors")
    with pytest.raises(ArtifactError, match="LoRA weights where the model has"):
        check_adapter_complete(broken, model)
    save_file({k.replace("layers.0.", "layers.0._fsdp_wrapped_module."): v for k, v in weights.items()},
              broken / "adapter_model.safetensors")
    with pytest.raises(ArtifactError, match="wrapper names"):
        check_adapter_complete(broken, model)


def test_keep_last_prunes_old_checkpoints(trained):
    ckpts = sorted(p.name for p in (trained["run_dir"] / "checkpoints").iterdir())
    assert ckpts == ["checkpoint-6", "checkpoint-8"]
    state = json.loads((trained["run_dir"] / "checkpoints/checkpoint-8/state.json").read_text())
    assert state["step"] == 8


def test_latest_run_is_the_finished_one(tws, trained):
    assert tws.run_dir(None).name in {p.name for p in tws.runs.iterdir() if (p / "adapter").is_dir()}


_KILLER = """
import os, signal, sys
from appliance import trainlog
from appliance.workspace import Workspace
from appliance.train import train
sys.path.insert(0, {tests!r})
from train_fixtures import tiny_train_config
real_step = trainlog.TrainLog.step
def step_then_die(self, record):
    real_step(self, record)
    if record["step"] == 5:  # after checkpoint-4, mid-way to checkpoint-6: step 5 must be redone
        os.kill(os.getpid(), signal.SIGKILL)
trainlog.TrainLog.step = step_then_die
train(tiny_train_config({model!r}, {dataset!r}, "tiny-killed", keep_last=10), Workspace.open({home!r}))
"""


def test_sigkilled_run_resumes_exactly(tws, tiny):
    import torch
    from safetensors.torch import load_file

    from appliance.train import train

    full = train(tiny_train_config(tiny["model"], tiny["dataset"], "tiny-full", keep_last=10), tws)

    code = _KILLER.format(tests=str(Path(__file__).parent), model=str(tiny["model"]), dataset=str(tiny["dataset"]),
                          home=str(tws.home))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == -9, proc.stderr[-2000:]
    killed = tws.runs / "tiny-killed"
    assert [r["step"] for r in _records(killed) if "loss" in r] == [1, 2, 3, 4, 5]
    assert json.loads((killed / "run.json").read_text())["status"] == "running"
    assert not (killed / "adapter").exists()
    assert sorted(p.name for p in (killed / "checkpoints").iterdir()) == ["checkpoint-2", "checkpoint-4"]

    # same optimizer state at the step the kill followed
    a = torch.load(full / "checkpoints/checkpoint-4/optimizer.pt", weights_only=False)
    b = torch.load(killed / "checkpoints/checkpoint-4/optimizer.pt", weights_only=False)
    assert a["state"].keys() == b["state"].keys() and a["state"]
    for k in a["state"]:
        for name in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.allclose(a["state"][k][name], b["state"][k][name], atol=1e-6), (k, name)

    # resume through the CLI: the run's own run.yaml supplies the config
    from appliance.cli import main

    assert main(["train", "--home", str(tws.home), "--resume", "--run-name", "tiny-killed"]) == 0
    resumed = killed
    steps = [r["step"] for r in _records(resumed) if "loss" in r]
    assert steps == list(range(1, 9)), "every step logged exactly once"
    want = {r["step"]: r["loss"] for r in _records(full) if "loss" in r}
    got = {r["step"]: r["loss"] for r in _records(resumed) if "loss" in r}
    for step in range(5, 9):
        assert got[step] == pytest.approx(want[step], abs=1e-5), step
    wa = load_file(str(full / "adapter/adapter_model.safetensors"))
    wb = load_file(str(resumed / "adapter/adapter_model.safetensors"))
    assert wa.keys() == wb.keys()
    assert all(torch.allclose(wa[k], wb[k], atol=1e-5) for k in wa)
    assert json.loads((resumed / "run.json").read_text())["status"] == "completed"


def test_grad_accumulation_normalises_by_label_tokens(tws, tiny):
    """batch 4 x accum 1 and batch 2 x accum 2 see the same rows: same loss and gradient norm."""
    from appliance.train import train

    common = dict(max_steps=2, save_every=0, eval_fraction=0.0, lr_scheduler="constant")
    one = _records(train(tiny_train_config(tiny["model"], tiny["dataset"], "tiny-b4", batch_size=4, grad_accum=1, **common), tws))
    two = _records(train(tiny_train_config(tiny["model"], tiny["dataset"], "tiny-b2x2", batch_size=2, grad_accum=2, **common), tws))
    for a, b in zip(one, two):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4)
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-3)
        assert a["tokens"] == b["tokens"]


def test_packing_trains(tws, tiny):
    from appliance.train import train

    run = train(tiny_train_config(tiny["model"], tiny["dataset"], "tiny-packed", packing=True, max_steps=6,
                                  batch_size=2, max_seq_len=256), tws)
    info = json.loads((run / "run.json").read_text())
    assert info["dataset"]["rows"] < info["dataset"]["examples"], "examples were packed into fewer rows"
    losses = [r["loss"] for r in _records(run) if "loss" in r]
    assert losses[-1] < losses[0]
    assert info["eval_loss"] < info["eval_loss_initial"]


def test_qlora_smoke_on_cpu(tws, tiny):
    """bitsandbytes NF4 on CPU is slow: three steps, just enough to see it learn and save."""
    from safetensors.torch import load_file

    from appliance.train import train

    run = train(tiny_train_config(tiny["model"], tiny["dataset"], "tiny-qlora", method="qlora", max_steps=3,
                                  save_every=0, eval_fraction=0.0), tws)
    info = json.loads((run / "run.json").read_text())
    assert info["method"] == "qlora" and info["status"] == "completed"
    weights = load_file(str(run / "adapter/adapter_model.safetensors"))
    assert any("lora_B" in k and v.abs().sum() > 0 for k, v in weights.items())


def test_cli_refuses_existing_run_and_explains(tws, tiny, trained, capsys):
    from appliance.cli import main

    rc = main(["train", "--home", str(tws.home), "--model", str(tiny["model"]), "--run-name", "tiny-basic"])
    err = capsys.readouterr().err
    assert rc != 0 and "already exists" in err and "--resume" in err


def test_cli_help_config_lists_every_key(capsys):
    import dataclasses

    from appliance.cli import main
    from appliance.config import TrainConfig

    assert main(["train", "--help-config"]) == 0
    out = capsys.readouterr().out
    assert all(f.name in out for f in dataclasses.fields(TrainConfig))


def test_example_config_loads_and_starts_with_its_command():
    from appliance.config import TrainConfig, load

    path = Path(__file__).parent.parent / "examples" / "train.yaml"
    assert path.read_text().startswith("# appliance train --config examples/train.yaml")
    cfg = load(TrainConfig, path, ["max_steps=3"])
    assert cfg.max_steps == 3 and cfg.model == "embedded:smollm2-135m-instruct"


@pytest.mark.slow
def test_short_lora_run_beats_the_base_and_survives_export(base_model, tmp_path):
    """The demo's steps on the embedded model: train, score base vs fine-tune, merge, export to GGUF and GPTQ."""
    import argparse
    import shutil
    import uuid

    from appliance import demo
    from appliance.workspace import Workspace

    # A workspace of its own (its artifacts must not show up in other tests), with the base model copied in.
    own = Workspace.open(tmp_path / "ws")
    shutil.copytree(base_model, own.models / base_model.name)
    args = argparse.Namespace(max_steps=SLOW_STEPS, method="lora", limit=SLOW_ROWS)
    d = demo.Demo(ws=own, args=args, run_name=f"slow-demo-{uuid.uuid4().hex[:6]}")
    demo.run(d, demo.STEPS[:4])
    base, tuned = d.scores["base"], d.scores["fine-tuned"]
    assert tuned["n"] == base["n"] == SLOW_ROWS
    assert tuned["score"] >= base["score"] + 0.5, (base, tuned)
    assert tuned["perplexity"] < base["perplexity"]

    # The fine-tune survives merge and 4-bit export: the demo's merge and export steps (GGUF Q4_K_M
    # through llama.cpp, GPTQ W4A16 through transformers) score each artifact on the same rows.
    from appliance import demo_serve
    from export.artifact import read_manifest

    demo.run(d, [("merge", demo.merge_step), ("export", demo_serve.export_step)])
    assert sorted(p.name.rsplit("-", 1)[-1] for p in d.artifacts) == ["gptq", "q4_k_m"]
    for art in d.artifacts:
        q = read_manifest(art)["quality"]
        assert q["n"] == SLOW_ROWS
        assert q["artifact"]["score"] >= base["score"] + 0.4, (art.name, base, q)
