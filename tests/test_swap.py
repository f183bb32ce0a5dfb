"""Hot-swap with real llama.cpp engines: under load, refused when tampered, rollback, restart, crashes."""

from __future__ import annotations

import os
import shutil
import signal
import threading
import time

import httpx
import openai
import pytest

from serve_fixtures import QUESTION, Load, ask, gateway_fixture, gguf_artifacts, make_artifact, openai_client  # noqa: F401

pytestmark = pytest.mark.slow
gw = gateway_fixture("gguf_artifacts", 0)
HAPPY_PATH = ["pending", "verifying", "starting", "smoke_test", "switching", "draining", "done"]


def _serving(gw) -> str:
    return gw.gateway.active.spec.name


def test_swap_under_load_drops_nothing_and_switches_answers(gw, gguf_artifacts):
    a, b = gguf_artifacts
    client = openai_client(gw)
    answer_a = ask(client)
    old_engine = gw.gateway.active.engine
    with Load(gw) as load:
        submitted = time.monotonic()
        dep = gw.deploy(b)
        done_at = time.monotonic()
        load.wait_after(done_at, 8)
    assert dep["state"] == "done", dep
    assert [h["state"] for h in dep["history"]] == HAPPY_PATH
    errors = [r["error"] for r in load.results if "error" in r]
    assert not errors, errors[:3]
    assert all(r["finished"] and r["usage"] for r in load.results)
    before = [r for r in load.results if r["end"] < submitted]
    assert len(before) >= 8 and all(r["model"] == a for r in before)
    after = load.after(done_at)
    assert after and all(r["model"] == b for r in after)
    assert ask(client) != answer_a  # B answers differently (its template pre-fills the answer)
    assert not old_engine.alive()  # drained, then stopped


def test_tampered_artifact_is_refused_and_the_old_model_keeps_serving(gw, ws, gguf_artifacts):
    serving = _serving(gw)
    src, bad = ws.artifacts / gguf_artifacts[1], ws.artifacts / "gw-gguf-tampered"
    shutil.rmtree(bad, ignore_errors=True)
    bad.mkdir()
    for f in src.iterdir():
        os.link(f, bad / f.name) if f.suffix == ".gguf" else shutil.copy2(f, bad / f.name)
    (bad / "chat_template.jinja").write_text((src / "chat_template.jinja").read_text() + "{# injected #}")
    try:
        dep = gw.deploy("gw-gguf-tampered")
        assert dep["state"] == "failed" and dep["history"][-2]["state"] == "verifying"
        assert dep["diff"]["mismatched"] == ["chat_template.jinja"]
        assert dep["previous_serving"] == serving
        assert _serving(gw) == serving and ask(openai_client(gw))
    finally:
        shutil.rmtree(bad)


def test_rollback_returns_to_the_previous_artifact(gw, gguf_artifacts):
    a, b = gguf_artifacts
    if _serving(gw) != b:
        assert gw.deploy(b)["state"] == "done"
    client = openai_client(gw)
    answer_b = ask(client)
    r = gw.admin.post("/admin/rollback")
    assert r.status_code == 202 and r.json()["artifact"] == a and r.json()["kind"] == "rollback"
    assert gw.wait(r.json()["id"])["state"] == "done"
    assert _serving(gw) == a and ask(client) != answer_b


def test_restart_strategy_holds_requests_instead_of_failing_them(gw, gguf_artifacts):
    target = [n for n in gguf_artifacts if n != _serving(gw)][0]
    states = set()
    watcher = threading.Thread(target=lambda: [states.add(gw.gateway.state) or time.sleep(0.02) for _ in range(400)],
                               daemon=True)
    with Load(gw) as load:
        watcher.start()
        dep = gw.deploy(target, strategy="restart")
        done_at = time.monotonic()
        load.wait_after(done_at, 8)
    assert dep["state"] == "done" and dep["strategy"] == "restart", dep
    assert [h["state"] for h in dep["history"]] == ["pending", "verifying", "holding", "starting", "smoke_test",
                                                    "switching", "done"]
    assert "held" in states
    assert not [r for r in load.results if "error" in r]
    after = load.after(done_at)
    assert after and all(r["model"] == target for r in after)


def test_engine_crash_answers_503_then_recovers(gw):
    client = openai_client(gw)
    engine = gw.gateway.active.engine
    os.killpg(engine.pid, signal.SIGKILL)
    engine.proc.wait(10)
    with pytest.raises(openai.APIStatusError) as e:
        ask(client, max_tokens=2)
    assert e.value.status_code == 503 and e.value.body["code"] == "engine_unavailable"
    t0 = time.monotonic()
    while httpx.get(gw.url + "/ready").status_code != 200:
        assert time.monotonic() - t0 < 60, "no recovery"
        time.sleep(0.2)
    assert gw.gateway.active.engine is not engine
    assert ask(client, max_tokens=4)
    assert "appliance_engine_restarts_total 1" in httpx.get(gw.url + "/metrics").text


@pytest.mark.parametrize("strategy", ["blue-green", "restart"])
def test_engine_that_dies_during_deploy_rolls_back(gw, ws, strategy):
    """A signed artifact whose engine cannot start: the deploy fails, the old model keeps serving."""
    make_artifact(ws, "gw-gguf-broken", {"model.gguf": "GGUF? no: this engine will crash on load"}, "gguf")
    serving = _serving(gw)
    dep = gw.deploy("gw-gguf-broken", strategy=strategy)
    assert dep["state"] == "failed" and "exited with code" in dep["error"], dep
    assert dep["previous_serving"] == serving
    states = [h["state"] for h in dep["history"]]
    assert ("rolling_back" in states) == (strategy == "restart")
    assert _serving(gw) == serving and ask(openai_client(gw), max_tokens=3)
    assert not [e for e in gw.gateway.deployer.candidates()]
