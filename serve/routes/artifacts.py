"""GET /artifacts, GET|HEAD /artifacts/<name>[/<file>]: verified downloads with Range and ETag = sha256."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse

from appliance.errors import ApplianceError
from serve.artifacts import RangeNotSatisfiable, StoredFile, parse_range
from serve.protocol import GatewayError

router = APIRouter(prefix="/artifacts")
CHUNK = 1 << 20


@router.get("")
async def listing(request: Request) -> dict:
    return {"object": "list", "data": request.app.state.gateway.store.listing()}


@router.get("/{name}")
async def artifact(name: str, request: Request) -> dict:
    store = request.app.state.gateway.store
    if name not in store.names():
        raise _not_found(name)
    try:
        return store.describe(name)
    except ApplianceError as e:
        raise GatewayError(409, f"artifact '{name}' does not verify: {e.message}", "invalid_request_error",
                           "artifact_unverified") from None


@router.api_route("/{name}/{file:path}", methods=["GET", "HEAD"])
async def download(name: str, file: str, request: Request) -> Response:
    store = request.app.state.gateway.store
    try:
        f = store.file(name, file)
    except KeyError:
        raise _not_found(f"{name}/{file}") from None
    except ApplianceError as e:
        raise GatewayError(409, f"artifact '{name}' does not verify: {e.message}", "invalid_request_error",
                           "artifact_unverified") from None
    etag = f'"{f.sha256}"'
    headers = {"etag": etag, "accept-ranges": "bytes", "x-sha256": f.sha256,
               "content-disposition": f'attachment; filename="{file.rsplit("/", 1)[-1]}"'}
    if request.headers.get("if-none-match") == etag:
        return Response(status_code=304, headers=headers)
    rng = request.headers.get("range")
    if_range = request.headers.get("if-range")
    if if_range and if_range != etag:
        rng = None  # the file changed since the partial download: send it whole
    try:
        span = parse_range(rng, f.size)
    except RangeNotSatisfiable:
        return Response(status_code=416, headers={**headers, "content-range": f"bytes */{f.size}"})
    start, end = span if span else (0, f.size - 1)
    length = max(0, end - start + 1)
    headers["content-length"] = str(length)
    status = 200
    if span:
        status = 206
        headers["content-range"] = f"bytes {start}-{end}/{f.size}"
    if request.method == "HEAD":
        return Response(status_code=status, headers=headers)
    return StreamingResponse(_read(f, start, length), status_code=status, headers=headers,
                             media_type="application/octet-stream")


async def _read(f: StoredFile, start: int, length: int):
    import anyio

    async with await anyio.open_file(f.path, "rb") as fh:
        await fh.seek(start)
        while length > 0:
            data = await fh.read(min(CHUNK, length))
            if not data:
                break
            length -= len(data)
            yield data


def _not_found(what: str) -> GatewayError:
    return GatewayError(404, f"'{what}' is not a verified artifact or file in this store", "invalid_request_error",
                        "not_found")
