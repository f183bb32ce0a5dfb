"""`appliance train` on a CUDA GPU with the default speed plan (skipped on CPU machines).

The default on CUDA compiles each decoder layer with its recompute inside the graph, replays the
layers as CUDA graphs, pads batch widths to a multiple of 128, chunks the fused loss and uses fused
AdamW. This trains a small random-init Qwen2 (4-bit base) with the real SmolLM2 tokenizer for a
few steps with gradient accumulation and evaluation, once with that plan and once with
`APPLIANCE_COMPILE=0` (eager: no compile, no CUDA graphs), and requires the same losses within
bf16 tolerance. The tokenizer comes from `APPLIANCE_TEST_TOKENIZER` (a folder with tokenizer.json,
tokenizer_config.json, chat_template.jinja) or from the embedded model.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from train_fixtures import small_dataset, tiny_train_config

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def small_qwen(request, tmp_path_factory) -> Path:
    import torch
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    src = os.environ.get("APPLIANCE_TEST_TOKENIZER") or request.getfixturevalue("base_model")
    tok = AutoTokenizer.from_pretrained(str(src))
    cfg = Qwen2Config(vocab_size=len(tok), hidden_size=256, intermediate_size=768, num_hidden_layers=4,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                      tie_word_embeddings=False, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("small-qwen")
    Qwen2ForCausalLM(cfg).to(torch.bfloat16).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def _run(model: Path, root: Path, name: str) -> tuple[dict, list[dict]]:
    from appliance.train import train
    from appliance.workspace import Workspace

    ws = Workspace.open(root / name)
    cfg = tiny_train_config(model, small_dataset(root / "train.jsonl", n=48), name, method="qlora", max_steps=8,
                            batch_size=4, grad_accum=2, lr=2e-3, lora_r=8, lora_alpha=16, max_seq_len=512,
                            eval_fraction=0.2, eval_every=4, save_every=0)
    run_dir = train(cfg, ws)
    info = json.loads((run_dir / "run.json").read_text())
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return info, records


def test_default_gpu_plan_trains_like_eager(small_qwen, tmp_path, monkeypatch):
    monkeypatch.delenv("APPLIANCE_COMPILE", raising=False)
    monkeypatch.delenv("APPLIANCE_CUDA_GRAPHS", raising=False)
    fast, fast_rec = _run(small_qwen, tmp_path, "fast")
    monkeypatch.setenv("APPLIANCE_COMPILE", "0")
    eager, eager_rec = _run(small_qwen, tmp_path, "eager")

    assert fast["status"] == eager["status"] == "completed"
    assert "CUDA graphs" in fast["speed_plan"] and "recompute inside the compiled graph" in fast["speed_plan"]
    assert "CUDA graphs" not in eager["speed_plan"]
    assert fast["optimizer"] == eager["optimizer"] == "adamw_fused"
    losses = [[r["loss"] for r in rec if "loss" in r and "step" in r] for rec in (fast_rec, eager_rec)]
    assert len(losses[0]) == len(losses[1]) == 8
    for a, b in zip(*losses):
        assert a == pytest.approx(b, rel=0.03), losses
    assert losses[0][-1] < losses[0][0]
    assert fast["eval_loss"] == pytest.approx(eager["eval_loss"], rel=0.03)
