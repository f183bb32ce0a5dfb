"""Merging a run's adapter: merged logits match base + adapter, merged/<run>/ is complete and atomic."""

from __future__ import annotations

import json

import pytest

from train_fixtures import module_workspace, trained_tiny_run


@pytest.fixture(scope="module")
def mws(tmp_path_factory):
    return module_workspace(tmp_path_factory, "merge-ws")


@pytest.fixture(scope="module")
def run_dir(mws, base_model, tmp_path_factory):
    return trained_tiny_run(mws, base_model, tmp_path_factory, "tiny-merge")


@pytest.fixture(scope="module")
def merged(mws, run_dir):
    from appliance.cli import main

    assert main(["merge", "--home", str(mws.home), "--run", run_dir.name]) == 0
    return mws.merged / run_dir.name


def test_merged_folder_complete(merged, run_dir):
    from appliance.models import folder_digest

    for name in ("config.json", "model.safetensors", "tokenizer.json", "chat_template.jinja",
                 "generation_config.json", "merge.json"):
        assert (merged / name).is_file(), name
    info = json.loads((merged / "merge.json").read_text())
    assert info["run"] == run_dir.name
    assert info["adapter_digest"] == folder_digest(run_dir / "adapter")
    assert info["base_digest"] == json.loads((run_dir / "run.json").read_text())["base_model"]["digest"]
    assert 0 <= info["max_logit_diff"] < 0.1 * max(info["max_abs_logit"], 1.0)
    assert info["top1_agreement"] >= 0.9
    assert json.loads((merged / "config.json").read_text())["dtype"] == "bfloat16"
    assert not [p for p in merged.parent.iterdir() if p.name.startswith(".tmp-")]


def test_merged_logits_match_base_plus_adapter(mws, merged, run_dir):
    """Independently of merge.json: fp32 base + adapter vs the saved merged model, and vs the bare base."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from appliance.loading import load_base, load_with_adapter
    from appliance.merge import CHECK_PROMPTS, base_of, prompt_logits

    base_path = base_of(run_dir, mws)[0]
    tok = AutoTokenizer.from_pretrained(str(merged))
    with_adapter = prompt_logits(load_with_adapter(base_path, run_dir / "adapter", torch.float32).eval(), tok)
    merged_model = AutoModelForCausalLM.from_pretrained(str(merged), dtype=torch.float32).eval()
    got = prompt_logits(merged_model, tok)
    bare = prompt_logits(load_base(base_path, "lora", torch.float32).eval(), tok)
    merge_err = max(float((a - b).abs().max()) for a, b in zip(with_adapter, got))
    adapter_effect = max(float((a - b).abs().max()) for a, b in zip(with_adapter, bare))
    assert len(got) == len(CHECK_PROMPTS)
    assert adapter_effect > 5 * merge_err, (adapter_effect, merge_err)


def test_merge_refuses_to_overwrite_without_force(mws, merged, run_dir, capsys):
    from appliance.cli import main

    assert main(["merge", "--home", str(mws.home), "--run", run_dir.name]) != 0
    assert "--force" in capsys.readouterr().err
    before = (merged / "merge.json").stat().st_mtime_ns
    assert main(["merge", "--home", str(mws.home), "--run", run_dir.name, "--force"]) == 0
    assert (merged / "merge.json").stat().st_mtime_ns != before
