"""Helpers for the train / merge / chat tests: a tiny random-init Llama and a small chat dataset.

The tiny model borrows the embedded model's tokenizer (and so its ChatML chat template), so data
rendering is the real thing while a training step takes milliseconds.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

from appliance import data


def make_tiny_llama(tokenizer_src: Path, out: Path, seed: int = 0) -> Path:
    """Save a 2-layer, 32-wide random-init Llama plus the tokenizer of `tokenizer_src` into `out`."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(str(tokenizer_src))
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      tie_word_embeddings=True, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def module_workspace(tmp_path_factory, name: str):
    """A fresh workspace for one test module (its runs have fixed names, so never share one)."""
    from appliance.workspace import Workspace

    return Workspace.open(tmp_path_factory.mktemp(name))


def trained_tiny_run(ws, tokenizer_src: Path, tmp_path_factory, run_name: str) -> Path:
    """A module's finished tiny run (see tiny_run), trained in its own temporary folder."""
    return tiny_run(ws, tokenizer_src, tmp_path_factory.mktemp(run_name), run_name)


def small_dataset(out: Path, n: int = 24) -> Path:
    """The first `n` rows of the bundled sample (a real, repetitive task: loss falls quickly)."""
    src = data.resolve_dataset("sample")
    with open(src) as f:
        rows = [json.loads(line) for line in itertools.islice(f, n)]
    out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return out


def tiny_train_config(model: Path, dataset: Path, run_name: str, **overrides):
    """A TrainConfig for a few fast steps on the tiny model (high LR so learning is visible)."""
    from appliance.config import TrainConfig, load

    values = dict(model=str(model), dataset=str(dataset), run_name=run_name, method="lora", max_steps=8,
                  batch_size=4, lr=5e-3, lora_r=4, lora_alpha=8, max_seq_len=128, eval_fraction=0.2,
                  save_every=2, keep_last=2, warmup_ratio=0.0, seed=7)
    values.update(overrides)
    return load(TrainConfig, None, [], **values)


def tiny_run(ws, tokenizer_src: Path, root: Path, run_name: str = "tiny", **overrides) -> Path:
    """Train the tiny model for a few steps in `ws`; returns the finished run directory."""
    from appliance.train import train

    model = make_tiny_llama(tokenizer_src, root / "tiny-llama")
    dataset = small_dataset(root / "train.jsonl")
    values = dict(max_steps=6, save_every=0, lr=2e-2)
    values.update(overrides)
    return train(tiny_train_config(model, dataset, run_name, **values), ws)
