"""The FastAPI app: routers + OpenAI-shaped errors + the Gateway's lifespan.

    app = create_app(ws, cfg, first=spec)       # serve with uvicorn; app.state.gateway is the service
"""

from __future__ import annotations

from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from appliance.workspace import Workspace
from serve.engines import ModelSpec
from serve.gateway import Gateway
from serve.protocol import GatewayError, error_body
from serve.routes import admin, artifacts, health, openai


def create_app(ws: Workspace, cfg, *, first: ModelSpec | None = None, admin_token: str) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI):
        gw = Gateway(ws, cfg)
        app.state.gateway = gw
        app.state.first_deployment = await gw.start(first)
        try:
            yield
        finally:
            await gw.close()

    app = FastAPI(title="appliance gateway", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.admin_token = admin_token
    for r in (openai.router, admin.router, artifacts.router, health.router):
        app.include_router(r)

    @app.exception_handler(GatewayError)
    async def gateway_error(request: Request, e: GatewayError) -> JSONResponse:
        headers = {"www-authenticate": "Bearer"} if e.status == 401 else None
        return JSONResponse(e.body(), status_code=e.status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, e: RequestValidationError) -> JSONResponse:
        err = e.errors()[0] if e.errors() else {}
        param = ".".join(str(x) for x in err.get("loc", ())[1:]) or None
        return JSONResponse(error_body(f"{param}: {err.get('msg')}", "invalid_request_error", None, param), 400)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, e: StarletteHTTPException) -> JSONResponse:
        kind = "invalid_request_error" if e.status_code < 500 else "server_error"
        return JSONResponse(error_body(str(e.detail), kind, "not_found" if e.status_code == 404 else None),
                            e.status_code)

    return app
