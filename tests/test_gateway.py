"""The gateway with a real llama.cpp engine, driven by the official `openai` client."""

from __future__ import annotations

import re
import time

import httpx
import openai
import pytest

from serve_fixtures import ADMIN_TOKEN, ask, gateway_fixture, gguf_artifacts, openai_client  # noqa: F401

pytestmark = pytest.mark.slow
gw = gateway_fixture("gguf_artifacts", 0)
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def client(gw):
    return openai_client(gw)


def test_models_list_the_artifact_with_digest_and_signer(gw, client, ws):
    from export.manifest import artifact_digest

    models = {m.id: m for m in client.models.list().data}
    assert set(models) == {"gw-gguf-a", "appliance"}
    art = models["gw-gguf-a"].artifact
    assert art["digest"] == artifact_digest(ws.artifacts / "gw-gguf-a")
    assert art["signer"].startswith("signing.pub") and art["format"] == "gguf" and art["engine"] == "llama.cpp"
    assert models["appliance"].alias_of == "gw-gguf-a"


def test_chat_completion(client):
    r = client.chat.completions.create(model="gw-gguf-a", messages=QUESTION, max_tokens=12, temperature=0)
    assert r.model == "gw-gguf-a"
    assert r.choices[0].message.content.strip()
    assert r.usage.completion_tokens > 0 and r.usage.prompt_tokens > 0


def test_stream_with_usage_matches_the_full_answer(client):
    full = ask(client, "gw-gguf-a", max_tokens=12)
    chunks = list(client.chat.completions.create(model="gw-gguf-a", messages=QUESTION, max_tokens=12, temperature=0,
                                                 stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert len(chunks) > 5  # one event per token, relayed as they come
    assert text == full
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 12


def test_sse_arrives_chunk_by_chunk(gw):
    """The first event reaches the client well before the last one (no buffering at the gateway)."""
    body = {"model": "appliance", "messages": QUESTION, "max_tokens": 48, "temperature": 0, "stream": True}
    arrivals = []
    with httpx.stream("POST", gw.url + "/v1/chat/completions", json=body, timeout=60) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        for chunk in r.iter_raw():
            if b"data:" in chunk:
                arrivals.append(time.monotonic())
    assert len(arrivals) > 5
    assert arrivals[-1] - arrivals[0] > 0.05


def test_completions_plain_and_streamed(client):
    r = client.completions.create(model="appliance", prompt="The capital of France is", max_tokens=6, temperature=0)
    assert r.choices[0].text.strip()
    parts = list(client.completions.create(model="appliance", prompt="The capital of France is", max_tokens=6,
                                           temperature=0, stream=True))
    assert "".join(p.choices[0].text for p in parts if p.choices) == r.choices[0].text


def test_unknown_model_is_404_model_not_found(client):
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="no-such-model", messages=QUESTION, max_tokens=4)
    assert e.value.status_code == 404
    assert e.value.code == "model_not_found"
    assert "gw-gguf-a" in e.value.message  # says what is served


def test_invalid_requests_get_openai_error_shape(gw):
    r = httpx.post(gw.url + "/v1/chat/completions", json={"model": "appliance"})
    assert r.status_code == 400
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["param"] == "messages"
    r = httpx.post(gw.url + "/v1/chat/completions", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"


def test_api_key_guards_v1_when_set(gw, monkeypatch):
    monkeypatch.setenv("APPLIANCE_API_KEY", "sk-test")
    with pytest.raises(openai.AuthenticationError) as e:
        ask(openai_client(gw, api_key="wrong"), max_tokens=2)
    assert e.value.code == "invalid_api_key"
    assert ask(openai_client(gw, api_key="sk-test"), max_tokens=2)
    assert httpx.get(gw.url + "/health").status_code == 200  # only /v1/* needs the key


def test_admin_routes_need_the_admin_token(gw):
    for headers in ({}, {"authorization": "Bearer nope"}):
        r = httpx.post(gw.url + "/admin/deploy", json={"artifact": "gw-gguf-b"}, headers=headers)
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_admin_token"
    r = httpx.post(gw.url + "/admin/deploy", json={"artifact": "nope"}, headers={"authorization": f"Bearer {ADMIN_TOKEN}"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "artifact_not_found"


def test_health_ready_and_metrics(gw, client):
    ask(client, max_tokens=3)
    assert httpx.get(gw.url + "/health").json() == {"status": "ok"}
    ready = httpx.get(gw.url + "/ready")
    assert ready.status_code == 200 and ready.json()["model"] == "gw-gguf-a"
    text = httpx.get(gw.url + "/metrics").text
    ok = re.search(r'appliance_requests_total\{route="/v1/chat/completions",status="200"\} (\d+)', text)
    assert ok and int(ok.group(1)) >= 1
    assert re.search(r'appliance_requests_total\{route="/v1/chat/completions",status="404"\} [1-9]', text)
    assert int(re.search(r'appliance_tokens_total\{kind="completion"\} (\d+)', text).group(1)) >= 3
    assert 'appliance_engine_state{state="serving"} 1' in text
    assert "appliance_request_duration_seconds_bucket" in text and "appliance_swaps_total" in text


def test_engine_listens_on_loopback_only(gw):
    engine = gw.gateway.active.engine
    assert engine.base_url.startswith("http://127.0.0.1:")
    cmd = " ".join(engine.command())
    assert "--host 127.0.0.1" in cmd
