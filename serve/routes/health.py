"""GET /health (the gateway is up), /ready (an engine serves), /metrics (Prometheus text)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, PlainTextResponse

from serve.protocol import error_body

router = APIRouter()


@router.get("/health")
async def health() -> dict:
    return {"status": "ok"}


@router.get("/ready")
async def ready(request: Request):
    gw = request.app.state.gateway
    status = gw.describe()
    if gw.state == "serving" and gw.active and gw.active.engine.alive():
        return status
    body = error_body(f"not ready: engine state is '{gw.state}'", "server_error", "engine_unavailable")
    return JSONResponse({**body, **status}, status_code=503)


@router.get("/metrics")
async def metrics(request: Request) -> PlainTextResponse:
    gw = request.app.state.gateway
    text = gw.metrics.render(engine_state=gw.state, inflight=gw.active.inflight if gw.active else 0,
                             model=gw.active.spec.name if gw.active else None)
    return PlainTextResponse(text, media_type="text/plain; version=0.0.4")
