"""The gateway's service layer (no FastAPI types): which engine serves, proxying, holding, crash recovery.

    gw = Gateway(ws, cfg)
    await gw.start(first_spec)                       # first engine, via the deploy state machine
    result = await gw.forward("/v1/chat/completions", payload, model="my-artifact", stream=True)
    await gw.close()

Requests enter through `acquire`: they wait while the gate is closed (restart-strategy swaps hold
them there), get the active engine's `Slot` and count as in flight on it until their response ends,
so a swap can drain the old engine before stopping it. A watcher notices an engine that died,
answers 503 meanwhile, and restarts it (adapters are loaded again).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import AsyncIterator

import httpx

from appliance.workspace import Workspace
from serve.artifacts import ArtifactStore
from serve.engines import Engine, ModelSpec, VllmEngine, engine_for
from serve.metrics import Metrics
from serve.protocol import GatewayError, model_not_found, unavailable

log = logging.getLogger("appliance.serve")

ALIAS = "appliance"  # a stable model name that always means "whatever is deployed now"


class Slot:
    """An engine that serves (or served) traffic, with its in-flight request count."""

    def __init__(self, engine: Engine, adapters: dict[str, Path] | None = None):
        self.engine = engine
        self.spec: ModelSpec = engine.spec
        self.adapters: dict[str, Path] = dict(adapters or {})
        self.inflight = 0
        self.idle = asyncio.Event()
        self.idle.set()

    def enter(self) -> None:
        self.inflight += 1
        self.idle.clear()

    def leave(self) -> None:
        self.inflight -= 1
        if self.inflight <= 0:
            self.inflight = 0
            self.idle.set()

    async def drain(self, timeout: float) -> bool:
        """Wait until no request is in flight here (True) or `timeout` passes (False)."""
        try:
            await asyncio.wait_for(self.idle.wait(), timeout)
            return True
        except asyncio.TimeoutError:
            return False


@dataclass
class Proxied:
    status: int
    content_type: str
    body: bytes | None = None
    stream: AsyncIterator[bytes] | None = None
    headers: dict = field(default_factory=dict)


class Gateway:
    def __init__(self, ws: Workspace, cfg, *, log_dir: Path | None = None):
        from serve.swap import Deployer

        self.ws, self.cfg = ws, cfg
        self.log_dir = log_dir or ws.home / "logs"
        self.store = ArtifactStore(ws)
        self.metrics = Metrics()
        self.http = httpx.AsyncClient(timeout=httpx.Timeout(None, connect=5.0),
                                      limits=httpx.Limits(max_connections=1024, max_keepalive_connections=256,
                                                          keepalive_expiry=2.0))  # < llama-server's 5 s
        self.active: Slot | None = None
        self.state = "none"  # none | starting | serving | crashed | restarting | held
        self.gate = asyncio.Event()
        self.gate.set()
        self.history: list[ModelSpec] = []  # specs that served, oldest first (rollback target: [-2])
        self.deployer = Deployer(self)
        self._watcher: asyncio.Task | None = None
        self._recovering: asyncio.Task | None = None
        self._retired: list[Engine] = []

    # ------------------------------------------------------------------ lifecycle
    async def start(self, spec: ModelSpec | None = None):
        """Start the crash watcher and (optionally) deploy a first model; returns its Deployment."""
        self._watcher = asyncio.create_task(self._watch())
        if spec is not None:
            self.state = "starting"
            return self.deployer.submit(spec.name, spec=spec)
        return None

    async def close(self) -> None:
        for t in (self._watcher, self._recovering, *self.deployer.tasks()):
            if t and not t.done():
                t.cancel()
        engines = [s.engine for s in [self.active] if s] + self._retired + self.deployer.candidates()
        await asyncio.gather(*(asyncio.to_thread(e.stop) for e in engines), return_exceptions=True)
        await self.http.aclose()

    # ------------------------------------------------------------------ routing
    def served_names(self) -> list[str]:
        if not self.active:
            return []
        return [self.active.spec.name, ALIAS, *self.active.adapters]

    def hold(self) -> None:
        """Close the gate: new requests wait (restart strategy) instead of failing."""
        self.gate.clear()
        self.state = "held"

    def release(self) -> None:
        self.gate.set()
        if self.state == "held":
            self.state = "serving" if self.active and self.active.engine.alive() else "crashed"

    def switch(self, slot: Slot) -> Slot | None:
        """Send new requests to `slot`; returns the previous slot (to drain and stop)."""
        old, self.active = self.active, slot
        if old is not None and old.engine is not slot.engine:
            self._retired.append(old.engine)
        if not self.history or self.history[-1] != slot.spec:
            self.history.append(slot.spec)
        if self.gate.is_set():
            self.state = "serving"
        return old

    def retire_done(self, engine: Engine) -> None:
        if engine in self._retired:
            self._retired.remove(engine)

    async def acquire(self, model: str) -> tuple[Slot, str]:
        """The slot to send a request for `model` to, and the name the engine knows it by."""
        if not self.gate.is_set():
            hold = self.cfg.start_timeout_s + self.cfg.drain_timeout_s
            try:
                await asyncio.wait_for(self.gate.wait(), hold)
            except asyncio.TimeoutError:
                raise unavailable(f"requests were held {hold:.0f} s while the model was swapped; try again") from None
        slot = self.active
        if slot is None:
            raise unavailable("no model is being served yet: deploy one (`appliance deploy NAME`)")
        if self.state in ("crashed", "restarting") or not slot.engine.alive():
            raise unavailable(f"the engine serving '{slot.spec.name}' is restarting after a crash; retry shortly")
        if model in (slot.spec.name, ALIAS):
            engine_model = slot.engine.model
        elif model in slot.adapters:
            engine_model = model
        else:
            raise model_not_found(model, self.served_names())
        slot.enter()
        return slot, engine_model

    async def forward(self, path: str, payload: dict, model: str, stream: bool) -> Proxied:
        """Proxy one OpenAI request to the active engine; streams are relayed chunk by chunk."""
        t0 = time.perf_counter()
        try:
            slot, payload["model"] = await self.acquire(model)
        except GatewayError as e:
            self.metrics.observe_request(path, e.status, time.perf_counter() - t0)
            raise
        try:
            req = self.http.build_request("POST", slot.engine.base_url + path,
                                          content=json.dumps(payload).encode(),
                                          headers={"content-type": "application/json"})
            try:
                resp = await self.http.send(req, stream=True)
            except (httpx.RemoteProtocolError, httpx.ConnectError):
                # a kept-alive connection the engine had just closed: nothing was processed, send it again
                resp = await self.http.send(req, stream=True)
        except (httpx.TransportError, asyncio.CancelledError) as e:
            slot.leave()
            self.metrics.observe_request(path, 503, time.perf_counter() - t0)
            if isinstance(e, asyncio.CancelledError):
                raise
            raise unavailable(f"the engine serving '{slot.spec.name}' did not answer ({type(e).__name__}); retry shortly") from None
        ctype = resp.headers.get("content-type", "application/json")
        if not (stream and resp.status_code == 200 and ctype.startswith("text/event-stream")):
            try:
                body = await resp.aread()
            except httpx.TransportError:
                body = None
            finally:
                await resp.aclose()
                slot.leave()
            if body is None:
                self.metrics.observe_request(path, 503, time.perf_counter() - t0)
                raise unavailable(f"the engine serving '{slot.spec.name}' dropped the connection; retry shortly")
            if resp.status_code == 200:
                self._count_usage(body)
            self.metrics.observe_request(path, resp.status_code, time.perf_counter() - t0)
            return Proxied(resp.status_code, ctype, body=body)
        return Proxied(200, ctype, stream=self._relay(resp, slot, path, t0), headers={"cache-control": "no-cache"})

    async def _relay(self, resp: httpx.Response, slot: Slot, path: str, t0: float) -> AsyncIterator[bytes]:
        status = 200
        try:
            async for chunk in resp.aiter_raw():
                if b'"usage":{' in chunk:
                    self._count_stream_usage(chunk)
                yield chunk
        except httpx.TransportError:
            status = 503  # the engine died mid-stream: tell the client in the stream, then end it
            err = unavailable(f"the engine serving '{slot.spec.name}' stopped mid-stream").body()
            yield f"data: {json.dumps(err)}\n\n".encode()
        finally:
            await resp.aclose()
            slot.leave()
            self.metrics.observe_request(path, status, time.perf_counter() - t0)

    def _count_usage(self, body: bytes) -> None:
        try:
            self.metrics.add_tokens(json.loads(body).get("usage"))
        except (ValueError, AttributeError):
            pass

    def _count_stream_usage(self, chunk: bytes) -> None:
        for line in chunk.split(b"\n"):
            if line.startswith(b"data: {") and b'"usage":{' in line:
                try:
                    self.metrics.add_tokens(json.loads(line[6:]).get("usage"))
                except ValueError:
                    pass

    # ------------------------------------------------------------------ adapters
    async def load_adapter(self, name: str, path: Path) -> None:
        slot = self.active
        if slot is None or not isinstance(slot.engine, VllmEngine):
            raise GatewayError(409, "LoRA adapters load into a running vLLM engine; the active engine is "
                               + (slot.engine.kind if slot else "none"), "invalid_request_error", "engine_mismatch")
        if not self.cfg.enable_lora:
            raise GatewayError(409, "the engine was started without LoRA support (serve.enable_lora=false)",
                               "invalid_request_error", "lora_disabled")
        await slot.engine.load_adapter(self.http, name, path)
        slot.adapters[name] = path

    # ------------------------------------------------------------------ crash recovery
    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(0.25)
            slot = self.active
            if (slot and self.state in ("serving", "crashed") and not slot.engine.alive()
                    and (self._recovering is None or self._recovering.done())):
                log.warning("engine for %s (pid %s) died with code %s; restarting", slot.spec.name, slot.engine.pid,
                            slot.engine.proc.returncode if slot.engine.proc else None)
                self.state = "crashed"
                self._recovering = asyncio.create_task(self._recover(slot))

    async def _recover(self, dead: Slot) -> None:
        """Restart the dead engine's model until it serves again (or a deploy replaces it)."""
        delay = 1.0
        while self.active is dead:
            async with self.deployer.lock:  # never race a deploy; released between attempts
                if self.active is not dead:
                    return
                self.state = "restarting"
                engine = engine_for(dead.spec, self.cfg, self.log_dir)
                try:
                    engine.start()
                    await engine.wait_healthy(self.http, self.cfg.start_timeout_s)
                    for name, path in dead.adapters.items():
                        await engine.load_adapter(self.http, name, path)
                except Exception as e:  # noqa: BLE001 - keep trying; the log says why
                    log.error("restart of %s failed: %s", dead.spec.name, e)
                    await asyncio.to_thread(engine.stop)
                    self.state = "crashed"
                else:
                    self.metrics.engine_restarts += 1
                    self.active = Slot(engine, dead.adapters)
                    self.state = "serving"
                    log.warning("engine for %s recovered on port %d", dead.spec.name, engine.port)
                    return
            await asyncio.sleep(delay)
            delay = min(delay * 2, 30.0)

    # ------------------------------------------------------------------ status
    def describe(self) -> dict:
        slot = self.active
        return {"state": self.state, "model": slot.spec.name if slot else None,
                "engine": slot.engine.describe() if slot else None, "inflight": slot.inflight if slot else 0,
                "adapters": sorted(slot.adapters) if slot else []}
