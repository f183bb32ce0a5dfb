"""POST /v1/chat/completions, /v1/completions (proxied, SSE relayed as is) and GET /v1/models."""

from __future__ import annotations

import json
import os
import time

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response, StreamingResponse
from pydantic import ValidationError

from serve.auth import bearer_matches
from serve.gateway import ALIAS
from serve.protocol import ChatCompletionRequest, CompletionRequest, GatewayError


def require_api_key(request: Request) -> None:
    key = os.environ.get("APPLIANCE_API_KEY")
    if key and not bearer_matches(request.headers.get("authorization"), key):
        raise GatewayError(401, "Incorrect or missing API key: send 'Authorization: Bearer <APPLIANCE_API_KEY>'.",
                           "invalid_request_error", "invalid_api_key")


router = APIRouter(prefix="/v1", dependencies=[Depends(require_api_key)])


@router.post("/chat/completions")
async def chat_completions(request: Request):
    return await _proxy(request, "/v1/chat/completions", ChatCompletionRequest)


@router.post("/completions")
async def completions(request: Request):
    return await _proxy(request, "/v1/completions", CompletionRequest)


async def _proxy(request: Request, path: str, model_cls) -> Response:
    gw = request.app.state.gateway
    try:
        payload = json.loads(await request.body())
        if not isinstance(payload, dict):
            raise ValueError("the body must be a JSON object")
    except ValueError as e:
        raise GatewayError(400, f"Invalid JSON body: {e}") from None
    try:
        req = model_cls.model_validate(payload)
    except ValidationError as e:
        err = e.errors()[0]
        param = ".".join(str(x) for x in err.get("loc", ())) or None
        raise GatewayError(400, f"{param}: {err.get('msg')}" if param else err.get("msg", "invalid request"),
                           param=param) from None
    result = await gw.forward(path, payload, req.model, bool(req.stream))
    if result.stream is not None:
        return StreamingResponse(result.stream, status_code=result.status, media_type=result.content_type,
                                 headers=result.headers)
    return Response(result.body, status_code=result.status, media_type=result.content_type)


@router.get("/models")
async def models(request: Request) -> dict:
    gw = request.app.state.gateway
    slot = gw.active
    if slot is None:
        return {"object": "list", "data": []}
    created = int(time.time() - (time.monotonic() - (slot.engine.started_at or time.monotonic())))
    spec = slot.spec
    artifact = {"digest": spec.digest, "signer": spec.signer, "format": spec.format,
                "quantization": spec.extra.get("quantization"), "engine": slot.engine.kind}
    data = [{"id": spec.name, "object": "model", "created": created, "owned_by": "appliance", "artifact": artifact},
            {"id": ALIAS, "object": "model", "created": created, "owned_by": "appliance", "alias_of": spec.name,
             "artifact": artifact}]
    data += [{"id": name, "object": "model", "created": created, "owned_by": "appliance", "parent": spec.name,
              "adapter": True} for name in sorted(slot.adapters)]
    return {"object": "list", "data": data}
