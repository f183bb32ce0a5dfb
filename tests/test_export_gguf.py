"""GGUF export of the embedded model: llama.cpp loads Q8_0 and Q4_K_M, answers, and stops; the artifacts
are signed and verify; failures (no merged model, unknown format, Ctrl-C) leave nothing behind."""

from __future__ import annotations

import pytest

from appliance.cli import main
from appliance.errors import ConfigError, RunNotFoundError
from export.artifact import read_manifest
from export.exporters import export_model, source_for_model, source_for_run
from export.signing import ensure_keypair, trusted_keys
from export.verify import verify_artifact
from export_fixtures import export_config, sha256sum_check, upstream_verify

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def gguf_arts(ws, base_model):
    src = source_for_model(ws, str(base_model), "gguftest")
    return export_model(ws, src, ["gguf:q8_0", "gguf:q4_k_m"], export_config(), overwrite=True)


def _gguf_file(art):
    files = read_manifest(art)["files"]
    ggufs = [f for f in files if f.endswith(".gguf")]
    assert len(ggufs) == 1, files
    return art / ggufs[0]


def test_names_manifest_and_signature(ws, gguf_arts):
    assert {p.name for p in gguf_arts.values()} == {"gguftest-gguf-q8_0", "gguftest-gguf-q4_k_m"}
    for fmt, art in gguf_arts.items():
        m = read_manifest(art)
        assert m["format"] == "gguf" and m["quantization"] == fmt.split(":")[1]
        assert m["base_model"]["digest"] and m["source"]["digest"] == m["base_model"]["digest"]
        assert m["tool_versions"]["llama_cpp_python"]
        assert verify_artifact(art, trusted_keys(ws)).ok
        assert sha256sum_check(art).returncode == 0
    assert upstream_verify(gguf_arts["gguf:q4_k_m"], ensure_keypair(ws)[1]).returncode == 0
    # no scratch (f16 conversion) or temp directories left behind
    assert not [p for p in ws.artifacts.iterdir() if p.name.startswith(".")]


def test_quality_recorded_next_to_source(gguf_arts):
    for art in gguf_arts.values():
        q = read_manifest(art)["quality"]
        assert q["n"] == 2 and q["held_out"].endswith(".jsonl")
        for side in ("artifact", "source"):
            assert 0 <= q[side]["score"] <= 1 and q[side]["perplexity"] > 1
        assert q["smoke"]["chat_template"] is True
    q8, q4 = (read_manifest(gguf_arts[f])["quality"]["artifact"]["perplexity"] for f in ("gguf:q8_0", "gguf:q4_k_m"))
    src = read_manifest(gguf_arts["gguf:q8_0"])["quality"]["source"]["perplexity"]
    assert abs(q8 - src) / src < 0.1  # 8-bit stays close to the bf16 source


def test_q8_0_answers_and_stops(gguf_arts):
    from export.gguf import chat, load

    llm = load(_gguf_file(gguf_arts["gguf:q8_0"]))
    try:
        answer, finish = chat(llm, [{"role": "user", "content": "What is the capital of France?"}], 64)
    finally:
        llm.close()
    assert "Paris" in answer and finish == "stop"


def test_q4_k_m_answers_and_stops_at_end_of_turn(gguf_arts):
    import llama_cpp

    from export.gguf import chat, load

    llm = load(_gguf_file(gguf_arts["gguf:q4_k_m"]))
    try:
        assert "tokenizer.chat_template" in llm.metadata and llm.metadata.get("tokenizer.ggml.pre") == "smollm"
        im_end = llm.tokenize(b"<|im_end|>", add_bos=False, special=True)
        assert len(im_end) == 1 and llama_cpp.llama_vocab_is_eog(llm._model.vocab, im_end[0])
        answer, finish = chat(llm, [{"role": "user", "content": "What is 2+2?"}], 64)
    finally:
        llm.close()
    assert "4" in answer and finish == "stop"


def test_missing_merged_model_says_run_merge(ws, tmp_path):
    (ws.runs / "unmerged" / "adapter").mkdir(parents=True, exist_ok=True)
    with pytest.raises(RunNotFoundError, match="no merged model") as e:
        source_for_run(ws, "unmerged")
    assert "appliance merge --run unmerged" in e.value.hint


def test_unknown_format_lists_allowed(ws, capsys):
    with pytest.raises(ConfigError) as e:
        export_config(formats=["gguf:q3"])
    assert "gguf:q4_k_m" in str(e.value) and "gptq" in str(e.value)
    assert main(["export", "--home", str(ws.home), "--model", "embedded:smollm2-135m-instruct",
                 "--format", "onnx"]) == 2
    assert "choose from" in capsys.readouterr().err


def test_existing_artifact_needs_force(ws, gguf_arts, capsys):
    rc = main(["export", "--home", str(ws.home), "--model", "embedded:smollm2-135m-instruct", "--name", "gguftest",
               "--format", "gguf:q8_0"])
    assert rc == 2 and "--force" in capsys.readouterr().err


def test_interrupted_export_leaves_nothing(ws, base_model, monkeypatch):
    import export.gguf

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(export.gguf, "quantize", interrupted)
    before = sorted(p.name for p in ws.artifacts.iterdir())
    with pytest.raises(KeyboardInterrupt):
        export_model(ws, source_for_model(ws, str(base_model), "ctrlc"), ["gguf:q8_0"], export_config(eval_samples=0))
    assert sorted(p.name for p in ws.artifacts.iterdir()) == before  # no artifact, no temp or scratch dir
