"""The hot-swap state machine: verify -> start candidate -> health + smoke -> switch -> drain -> stop old.

    dep = gateway.deployer.submit("run1-gguf-q4_k_m")     # returns at once; runs under an asyncio lock
    dep.state, dep.to_dict()                               # GET /admin/deployments/<id>

Every step moves a `Deployment` through named states; `advance` refuses a transition that is not in
TRANSITIONS and says which ones were expected. Strategies:

- blue-green: the candidate starts beside the old engine; new requests switch to it, the old one
  drains (bounded by drain_timeout_s) and stops. A failure before the switch stops the candidate and
  leaves the old engine serving.
- restart: requests are held at the gateway (never failed) while the old engine drains and stops and
  the new one starts; a failure restarts the old artifact (ROLLING_BACK) before the gate opens.
- auto: blue-green when a second engine fits in memory, restart otherwise.
"""

from __future__ import annotations

import asyncio
import enum
import os
import logging
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from appliance.errors import ApplianceError, DeployError, VerificationError
from serve.engines import Engine, ModelSpec, VllmEngine, engine_for, on_cuda

log = logging.getLogger("appliance.serve")


class State(str, enum.Enum):
    PENDING = "pending"
    VERIFYING = "verifying"
    HOLDING = "holding"  # restart: requests wait at the gateway, the old engine drains and stops
    STARTING = "starting"  # candidate engine process started, waiting for health
    SMOKE_TEST = "smoke_test"
    SWITCHING = "switching"
    DRAINING = "draining"  # blue-green: old engine finishes its in-flight requests
    ROLLING_BACK = "rolling_back"  # restart: the new engine failed, the old artifact is restarted
    DONE = "done"
    FAILED = "failed"


TRANSITIONS: dict[State, set[State]] = {
    State.PENDING: {State.VERIFYING, State.FAILED},
    State.VERIFYING: {State.STARTING, State.HOLDING, State.FAILED},
    State.HOLDING: {State.STARTING, State.FAILED},
    State.STARTING: {State.SMOKE_TEST, State.FAILED, State.ROLLING_BACK},
    State.SMOKE_TEST: {State.SWITCHING, State.FAILED, State.ROLLING_BACK},
    State.SWITCHING: {State.DRAINING, State.DONE, State.FAILED},
    State.DRAINING: {State.DONE, State.FAILED},
    State.ROLLING_BACK: {State.FAILED},
    State.DONE: set(),
    State.FAILED: set(),
}
TERMINAL = {State.DONE, State.FAILED}
STRATEGIES = ("auto", "blue-green", "restart", "reload")


class TransitionError(RuntimeError):
    """A deployment was asked to move to a state its current state does not lead to (a bug)."""


@dataclass
class Deployment:
    artifact: str
    strategy: str
    kind: str = "deploy"  # deploy | rollback | initial
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    state: State = State.PENDING
    history: list[dict] = field(default_factory=list)
    error: str | None = None
    diff: dict | None = None  # verification failure: missing / extra / mismatched / signature_error
    previous_serving: str | None = None  # after a failure: what still serves
    timings: dict[str, float] = field(default_factory=dict)
    candidate: dict | None = None
    created: float = field(default_factory=time.time)
    done: asyncio.Event = field(default_factory=asyncio.Event, repr=False)

    def __post_init__(self):
        self.history.append({"state": self.state.value, "at": time.time()})
        self._t = time.monotonic()

    def advance(self, new: State) -> None:
        if new not in TRANSITIONS[self.state]:
            allowed = ", ".join(sorted(s.value for s in TRANSITIONS[self.state])) or "nothing (terminal)"
            raise TransitionError(f"deployment {self.id}: cannot go from {self.state.value} to {new.value}; "
                                  f"expected {allowed}")
        now = time.monotonic()
        self.timings[self.state.value] = round(now - self._t, 3)
        self._t = now
        self.state = new
        self.history.append({"state": new.value, "at": time.time()})
        if new in TERMINAL:
            self.timings["total"] = round(sum(v for k, v in self.timings.items() if k != "total"), 3)
            self.done.set()

    def fail(self, error: BaseException | str, previous: str | None) -> None:
        self.error = error.message if isinstance(error, ApplianceError) else str(error)
        if isinstance(error, VerificationError):
            self.diff = {"missing": error.missing, "extra": error.extra, "mismatched": error.mismatched,
                         "signature_error": error.signature_error}
        self.previous_serving = previous
        if self.state not in TERMINAL:
            self.advance(State.FAILED)

    def to_dict(self) -> dict:
        return {"id": self.id, "kind": self.kind, "artifact": self.artifact, "strategy": self.strategy,
                "state": self.state.value, "error": self.error, "diff": self.diff,
                "previous_serving": self.previous_serving, "timings": self.timings, "candidate": self.candidate,
                "history": self.history, "created": self.created}


class Deployer:
    """Runs deployments one at a time (an asyncio lock) against a Gateway."""

    def __init__(self, gateway):
        self.gw = gateway
        self.lock = asyncio.Lock()
        self.deployments: dict[str, Deployment] = {}
        self._tasks: list[asyncio.Task] = []
        self._candidates: list[Engine] = []

    def tasks(self) -> list[asyncio.Task]:
        return list(self._tasks)

    def candidates(self) -> list[Engine]:
        return list(self._candidates)

    def submit(self, artifact: str, strategy: str | None = None, *, spec: ModelSpec | None = None,
               kind: str = "deploy") -> Deployment:
        strategy = strategy or self.gw.cfg.strategy
        if strategy not in STRATEGIES:
            raise DeployError(f"unknown strategy {strategy!r}", f"choose one of {', '.join(STRATEGIES)}")
        dep = Deployment(artifact, strategy, kind=kind)
        self.deployments[dep.id] = dep
        task = asyncio.create_task(self._run(dep, spec))
        self._tasks = [t for t in self._tasks if not t.done()] + [task]
        return dep

    def previous(self) -> ModelSpec | None:
        h = self.gw.history
        return h[-2] if len(h) >= 2 else None

    # ------------------------------------------------------------------ the protocol
    async def _run(self, dep: Deployment, spec: ModelSpec | None) -> None:
        async with self.lock:
            try:
                dep.advance(State.VERIFYING)
                if spec is None or spec.digest is not None:  # artifacts are (re-)verified; --run folders are local
                    spec = await asyncio.to_thread(self.gw.store.verified_spec, dep.artifact)
                strategy = self._choose(dep.strategy, spec)
                dep.strategy = strategy
                if strategy == "restart" and self.gw.active is not None:
                    await self._restart(dep, spec)
                else:
                    await self._blue_green(dep, spec)
                self.gw.metrics.observe_swap("done", dep.timings.get("total"))
            except asyncio.CancelledError:
                dep.fail("gateway shutting down", self._serving())
                raise
            except Exception as e:  # noqa: BLE001 - every failure ends the deployment, old model serving
                log.warning("deployment %s of %s failed: %s", dep.id, dep.artifact, e)
                dep.fail(e, self._serving())
                self.gw.metrics.observe_swap("failed")
                if self.gw.active is None and self.gw.state == "starting":
                    self.gw.state = "none"

    def _serving(self) -> str | None:
        return self.gw.active.spec.name if self.gw.active else None

    def _choose(self, strategy: str, spec: ModelSpec) -> str:
        if strategy == "reload":
            raise DeployError("the reload strategy (vLLM in-place weights) is not available in this version",
                              "use --set strategy=blue-green or strategy=restart")
        if strategy != "auto":
            return strategy
        if self.gw.active is None:
            return "blue-green"
        if spec.format != "gguf" and (on_cuda() or (os.cpu_count() or 1) < 8):
            # GPU: the running engine holds gpu_memory_utilization of the card. Small CPU: a vLLM CPU
            # engine binds OpenMP threads to every core, and a second one starting beside it starves
            # (measured: > 5 min on 2 cores instead of ~40 s).
            return "restart"
        need = _estimate_gib(spec)
        return "blue-green" if _available_gib() > need + 1.0 else "restart"

    async def _start_candidate(self, dep: Deployment, spec: ModelSpec, gpu_share: float = 1.0) -> Engine:
        dep.advance(State.STARTING)
        engine = engine_for(spec, self.gw.cfg, self.gw.log_dir, gpu_share=gpu_share)
        self._candidates.append(engine)
        try:
            engine.start()
            dep.candidate = engine.describe()
            await engine.wait_healthy(self.gw.http, self.gw.cfg.start_timeout_s)
            dep.advance(State.SMOKE_TEST)
            await self._smoke(engine)
        except BaseException:
            await asyncio.to_thread(engine.stop)
            raise
        finally:
            self._candidates.remove(engine)
        dep.candidate = engine.describe()
        return engine

    async def _smoke(self, engine: Engine) -> None:
        """One short greedy chat completion must come back with a choice."""
        body = {"model": engine.model, "messages": [{"role": "user", "content": "Say hello."}],
                "max_tokens": 8, "temperature": 0}
        try:
            r = await self.gw.http.post(engine.base_url + "/v1/chat/completions", json=body, timeout=120)
            ok = r.status_code == 200 and r.json().get("choices")
        except Exception as e:  # noqa: BLE001
            raise DeployError(f"smoke completion on the candidate engine failed: {type(e).__name__}: {e}\n"
                              f"{engine.log_tail(15)}", f"engine log: {engine.log_path}") from None
        if not ok:
            raise DeployError(f"smoke completion on the candidate engine answered {r.status_code}: {r.text[:300]}",
                              f"engine log: {engine.log_path}")

    async def _blue_green(self, dep: Deployment, spec: ModelSpec) -> None:
        share = 0.5 if (on_cuda() and spec.format != "gguf" and self.gw.active is not None) else 1.0
        engine = await self._start_candidate(dep, spec, gpu_share=share)
        dep.advance(State.SWITCHING)
        from serve.gateway import Slot

        old = self.gw.switch(Slot(engine))
        if old is None:
            dep.advance(State.DONE)
            return
        dep.advance(State.DRAINING)
        drained = await old.drain(self.gw.cfg.drain_timeout_s)
        if not drained:
            log.warning("old engine %s still had %d requests after %.0f s; stopping it", old.spec.name,
                        old.inflight, self.gw.cfg.drain_timeout_s)
        await asyncio.to_thread(old.engine.stop)
        self.gw.retire_done(old.engine)
        dep.advance(State.DONE)

    async def _restart(self, dep: Deployment, spec: ModelSpec) -> None:
        old = self.gw.active
        dep.advance(State.HOLDING)
        self.gw.hold()
        try:
            await old.drain(self.gw.cfg.drain_timeout_s)
            await asyncio.to_thread(old.engine.stop)
            try:
                engine = await self._start_candidate(dep, spec)
            except Exception as e:
                dep.advance(State.ROLLING_BACK)
                back = engine_for(old.spec, self.gw.cfg, self.gw.log_dir)
                back.start()
                await back.wait_healthy(self.gw.http, self.gw.cfg.start_timeout_s)
                for name, path in old.adapters.items():
                    if isinstance(back, VllmEngine):
                        await back.load_adapter(self.gw.http, name, path)
                from serve.gateway import Slot

                self.gw.switch(Slot(back, old.adapters))
                self.gw.retire_done(old.engine)
                raise DeployError(f"{e}\n(rolled back: '{old.spec.name}' serves again)") from e
            dep.advance(State.SWITCHING)
            from serve.gateway import Slot

            self.gw.switch(Slot(engine))
            self.gw.retire_done(old.engine)
            dep.advance(State.DONE)
        finally:
            self.gw.release()


def _estimate_gib(spec: ModelSpec) -> float:
    """Memory one more engine needs: ~3.6 GiB for vLLM on CPU (FACTS.md); llama.cpp: the weights + 0.5."""
    if spec.format == "gguf":
        return sum(p.stat().st_size for p in Path(spec.path).glob("*.gguf")) / 2**30 + 0.5
    return 4.0


def _available_gib() -> float:
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return 0.0
