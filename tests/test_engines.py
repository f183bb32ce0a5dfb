"""Engine processes: start, health, stop, and a failure that names the log."""

from __future__ import annotations

import asyncio
import os

import httpx
import pytest

from appliance.errors import EngineError
from serve_fixtures import gguf_artifacts, serve_config  # noqa: F401


def _spec(ws, name):
    from serve.artifacts import ArtifactStore

    return ArtifactStore(ws).verified_spec(name)


async def _healthy(engine, timeout=60):
    async with httpx.AsyncClient() as http:
        return await engine.wait_healthy(http, timeout)


@pytest.mark.slow
def test_llama_server_starts_answers_and_stops(ws, gguf_artifacts, tmp_path):
    from serve.engines import LlamaServerEngine, engine_for

    engine = engine_for(_spec(ws, gguf_artifacts[0]), serve_config(), tmp_path)
    assert isinstance(engine, LlamaServerEngine)
    engine.start()
    try:
        took = asyncio.run(_healthy(engine))
        assert took < 60
        r = httpx.post(engine.base_url + "/v1/completions", json={"prompt": "Hello", "max_tokens": 3}, timeout=60)
        assert r.status_code == 200 and r.json()["choices"][0]["text"]
    finally:
        engine.stop()
    assert not engine.alive() and engine.proc.returncode is not None
    assert engine.log_path.is_file() and engine.log_path.stat().st_size > 0


def test_engine_failure_raises_with_the_log_tail(ws, tmp_path):
    from serve.engines import LlamaServerEngine, ModelSpec

    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "model.gguf").write_bytes(b"not a gguf at all")
    engine = LlamaServerEngine(ModelSpec("bad", bad, "gguf"), serve_config(), tmp_path)
    engine.start()
    with pytest.raises(EngineError) as e:
        asyncio.run(_healthy(engine, timeout=30))
    assert "exited with code" in e.value.message
    assert str(engine.log_path) in e.value.hint
    assert "llama-server" in e.value.message or "gguf" in e.value.message.lower()


def test_vllm_command_and_env_follow_the_measured_recipe(ws, tmp_path, monkeypatch):
    from serve.engines import ModelSpec, VllmEngine, engine_for

    monkeypatch.setenv("APPLIANCE_DEVICE", "cpu")
    cfg = serve_config(dtype="float32")
    for fmt in ("hf", "awq", "gptq"):
        assert isinstance(engine_for(ModelSpec("m", tmp_path, fmt), cfg, tmp_path), VllmEngine)
    with pytest.raises(EngineError):
        engine_for(ModelSpec("m", tmp_path, "onnx"), cfg, tmp_path)
    e = VllmEngine(ModelSpec("m", tmp_path, "hf"), cfg, tmp_path)
    try:
        cmd = e.command()
    except Exception as exc:  # no .venv-engine on this machine
        pytest.skip(f"vLLM environment missing: {exc}")
    joined = " ".join(cmd)
    assert "-m vllm.entrypoints.openai.api_server" in joined and "--host 127.0.0.1" in joined
    assert "--enforce-eager" in cmd and "--served-model-name m" in joined and "--dtype float32" in joined
    assert "--enable-lora" in cmd
    env = e.env()
    assert env["VLLM_HOST_IP"] == "127.0.0.1" and env["VLLM_TARGET_DEVICE"] == "cpu"
    assert env["VLLM_CPU_NUM_OF_RESERVED_CPU"] == "0" and env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "True"
