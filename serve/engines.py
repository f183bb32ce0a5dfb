"""Inference engine processes: start, wait until healthy, stop.

    engine = engine_for(spec, cfg, log_dir)       # VllmEngine for hf/awq/gptq, LlamaServerEngine for gguf
    engine.start(); await engine.wait_healthy(http, timeout=300)
    engine.base_url, engine.model               # where and under which name to send requests
    engine.stop()

Engines are subprocesses from their own environments (vLLM lives in .venv-engine, llama.cpp is a
native binary); they listen on 127.0.0.1 on a free port, the gateway is the only door. Their
stdout/stderr go to `<log_dir>/engine-<name>-<port>.log`; a failure to start raises EngineError
with the tail of that log.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from appliance.errors import EngineError

HOST = "127.0.0.1"


@dataclass(frozen=True)
class ModelSpec:
    """What an engine serves: an artifact (verified) or a local merged folder (unsigned)."""

    name: str  # the served name: the artifact name
    path: Path  # the artifact directory
    format: str  # hf | awq | gptq | gguf
    digest: str | None = None  # sha256 of SHA256SUMS
    signer: str | None = None
    extra: dict = field(default_factory=dict, compare=False)


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def on_cuda() -> bool:
    """True when a CUDA GPU is visible (decides vLLM's CPU vs GPU flags)."""
    if os.environ.get("APPLIANCE_DEVICE") == "cpu":
        return False
    return shutil.which("nvidia-smi") is not None and os.environ.get("CUDA_VISIBLE_DEVICES", "x") != ""


class Engine:
    """One engine subprocess. Subclasses say how to start it (`command`, `env`)."""

    kind = "engine"
    health_path = "/health"

    def __init__(self, spec: ModelSpec, cfg, log_dir: Path, port: int | None = None):
        self.spec = spec
        self.cfg = cfg
        self.port = port or free_port()
        self.log_path = Path(log_dir) / f"engine-{spec.name}-{self.port}.log"
        self.proc: subprocess.Popen | None = None
        self.started_at: float | None = None
        self.stopping = False

    # --- what subclasses define
    def command(self) -> list[str]:
        raise NotImplementedError

    def env(self) -> dict[str, str]:
        return dict(os.environ)

    # --- lifecycle
    @property
    def base_url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def model(self) -> str:
        """The model name the engine answers to (we start it with the artifact name)."""
        return self.spec.name

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> "Engine":
        cmd = self.command()
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            log.write(f"$ {' '.join(map(str, cmd))}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(list(map(str, cmd)), stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, env=self.env(), start_new_session=True)
        self.started_at = time.monotonic()
        return self

    async def wait_healthy(self, http: httpx.AsyncClient, timeout: float) -> float:
        """Poll the health endpoint until it answers 200; seconds taken. EngineError with the log tail
        if the process exits or `timeout` passes."""
        t0 = time.monotonic()
        while True:
            if not self.alive():
                rc = self.proc.returncode if self.proc else None
                raise EngineError(f"{self.kind} for '{self.spec.name}' exited with code {rc} while starting:\n"
                                  f"{self.log_tail()}", f"full log: {self.log_path}")
            try:
                r = await http.get(self.base_url + self.health_path, timeout=2.0)
                if r.status_code == 200:
                    return time.monotonic() - t0
            except httpx.TransportError:
                pass
            if time.monotonic() - t0 > timeout:
                self.stop()
                raise EngineError(f"{self.kind} for '{self.spec.name}' was not healthy after {timeout:.0f} s:\n"
                                  f"{self.log_tail()}", f"full log: {self.log_path}; raise start_timeout_s if it is just slow")
            await asyncio.sleep(0.2)

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM the engine's process group, SIGKILL after `timeout`."""
        self.stopping = True
        if not self.proc or self.proc.poll() is not None:
            return
        for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                return
            try:
                self.proc.wait(wait)
                return
            except subprocess.TimeoutExpired:
                continue

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        return "\n".join(text[-lines:])

    def describe(self) -> dict:
        return {"kind": self.kind, "model": self.spec.name, "port": self.port, "pid": self.pid,
                "alive": self.alive(), "log": str(self.log_path)}


class VllmEngine(Engine):
    """vLLM's OpenAI server (`python -m vllm.entrypoints.openai.api_server`) for hf / awq / gptq folders."""

    kind = "vllm"

    def __init__(self, *a, gpu_share: float = 1.0, **kw):
        super().__init__(*a, **kw)
        self.gpu_share = gpu_share  # fraction of gpu_memory_utilization (0.5 during blue-green)

    def command(self) -> list[str]:
        from appliance.toolchain import engine_python

        cfg = self.cfg
        cmd = [str(engine_python()), "-m", "vllm.entrypoints.openai.api_server", "--model", str(self.spec.path),
               "--host", HOST, "--port", str(self.port), "--served-model-name", self.spec.name,
               "--max-model-len", str(cfg.max_model_len), "--dtype", cfg.dtype]
        if on_cuda():
            cmd += ["--gpu-memory-utilization", f"{cfg.gpu_memory_utilization * self.gpu_share:.3f}"]
        else:
            cmd += ["--enforce-eager"]  # CPU: compiled mode recompiles on every start (~100 s, FACTS.md)
        if cfg.enable_lora:
            cmd += ["--enable-lora", "--max-lora-rank", str(cfg.max_lora_rank)]
        return cmd

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["VLLM_HOST_IP"] = HOST  # else its internal message queue binds the public interface
        if self.cfg.enable_lora:
            env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] = "True"
        if not on_cuda():
            env.update(VLLM_TARGET_DEVICE="cpu", VLLM_CPU_KVCACHE_SPACE=str(self.cfg.cpu_kv_cache_gib),
                       VLLM_CPU_NUM_OF_RESERVED_CPU="0")
        return env

    async def load_adapter(self, http: httpx.AsyncClient, name: str, path: Path) -> None:
        r = await http.post(self.base_url + "/v1/load_lora_adapter", json={"lora_name": name, "lora_path": str(path)},
                            timeout=120)
        if r.status_code != 200:
            raise EngineError(f"vLLM refused adapter '{name}' from {path}: {r.status_code} {r.text[:500]}",
                              f"the engine accepts LoRA rank <= {self.cfg.max_lora_rank} (serve.max_lora_rank)")


class LlamaServerEngine(Engine):
    """llama.cpp's native `llama-server` for a gguf artifact."""

    kind = "llama.cpp"
    slots = 4
    # Enough HTTP threads that queued connections are never dropped: with the default (one per core)
    # a waiting connection hits the server's keep-alive read timeout and is closed without a response.
    http_threads = 64

    def gguf_file(self) -> Path:
        files = sorted(self.spec.path.glob("*.gguf"))
        if not files:
            raise EngineError(f"{self.spec.path} has no .gguf file", "export one with `appliance export --format gguf:q4_k_m`")
        return files[0]

    def command(self) -> list[str]:
        from appliance.toolchain import llama_server

        cmd = [str(llama_server()), "-m", str(self.gguf_file()), "--host", HOST, "--port", str(self.port),
               "--alias", self.spec.name, "-c", str(self.cfg.max_model_len * self.slots), "-np", str(self.slots),
               "--jinja", "--metrics", "--no-webui", "--threads-http", str(self.http_threads)]
        template = self.spec.path / "chat_template.jinja"
        if template.is_file():  # an artifact may carry its own chat template next to the GGUF
            cmd += ["--chat-template-file", str(template)]
        return cmd


def engine_for(spec: ModelSpec, cfg, log_dir: Path, *, gpu_share: float = 1.0) -> Engine:
    """The engine that serves this artifact format."""
    if spec.format == "gguf":
        return LlamaServerEngine(spec, cfg, log_dir)
    if spec.format in ("hf", "awq", "gptq"):
        return VllmEngine(spec, cfg, log_dir, gpu_share=gpu_share)
    raise EngineError(f"artifact '{spec.name}' has format {spec.format!r}: no engine serves it",
                      "formats served: hf, awq, gptq (vLLM) and gguf (llama.cpp)")
