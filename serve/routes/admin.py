"""Admin routes (bearer admin token): deploy, deployment status, rollback, LoRA adapters."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from appliance.errors import ApplianceError
from serve.auth import bearer_matches
from serve.protocol import AdapterRequest, DeployRequest, GatewayError


def require_admin(request: Request) -> None:
    if not bearer_matches(request.headers.get("authorization"), request.app.state.admin_token):
        raise GatewayError(401, "Admin routes need 'Authorization: Bearer <admin token>' "
                           "($APPLIANCE_ADMIN_TOKEN or <workspace>/admin.token).", "invalid_request_error",
                           "invalid_admin_token")


router = APIRouter(prefix="/admin", dependencies=[Depends(require_admin)])


def _accepted(dep) -> JSONResponse:
    return JSONResponse({**dep.to_dict(), "status_url": f"/admin/deployments/{dep.id}"}, status_code=202)


@router.post("/deploy")
async def deploy(body: DeployRequest, request: Request) -> JSONResponse:
    gw = request.app.state.gateway
    if body.artifact not in gw.store.names():
        raise GatewayError(404, f"artifact '{body.artifact}' not found (artifacts: {', '.join(gw.store.names()) or 'none'})",
                           "invalid_request_error", "artifact_not_found", "artifact")
    try:
        dep = gw.deployer.submit(body.artifact, body.strategy)
    except ApplianceError as e:
        raise GatewayError(400, e.message, param="strategy") from None
    return _accepted(dep)


@router.get("/deployments")
async def deployments(request: Request) -> dict:
    gw = request.app.state.gateway
    return {"serving": gw.describe(), "deployments": [d.to_dict() for d in gw.deployer.deployments.values()]}


@router.get("/deployments/{dep_id}")
async def deployment(dep_id: str, request: Request) -> dict:
    dep = request.app.state.gateway.deployer.deployments.get(dep_id)
    if dep is None:
        raise GatewayError(404, f"no deployment '{dep_id}'", "invalid_request_error", "deployment_not_found")
    return dep.to_dict()


@router.post("/rollback")
async def rollback(request: Request) -> JSONResponse:
    gw = request.app.state.gateway
    prev = gw.deployer.previous()
    if prev is None:
        raise GatewayError(409, "nothing to roll back to: only one model has been served", "invalid_request_error",
                           "no_previous_model")
    return _accepted(gw.deployer.submit(prev.name, spec=prev, kind="rollback"))


@router.post("/adapters")
async def adapters(body: AdapterRequest, request: Request) -> dict:
    gw = request.app.state.gateway
    try:
        run = gw.ws.run_dir(body.run)
    except ApplianceError as e:
        raise GatewayError(404, e.message, "invalid_request_error", "run_not_found", "run") from None
    adapter = run / "adapter"
    if not (adapter / "adapter_config.json").is_file():
        raise GatewayError(404, f"{adapter} has no adapter_config.json (is the run finished?)",
                           "invalid_request_error", "adapter_not_found", "run")
    name = body.name or run.name
    try:
        await gw.load_adapter(name, adapter)
    except ApplianceError as e:
        raise GatewayError(502, e.message, "server_error", "adapter_load_failed") from None
    return {"model": name, "adapter": str(adapter), "base": gw.active.spec.name}
