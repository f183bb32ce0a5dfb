"""Handlers for `appliance serve | deploy | rollback | pull` (arguments are defined in appliance/cli.py)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from appliance.errors import ApplianceError, DeployError
from appliance.workspace import Workspace

DEFAULT_URL = "http://127.0.0.1:8000"


def serve_cli(args: argparse.Namespace, ws: Workspace) -> int:
    from appliance.config import ServeConfig, describe, load

    if args.help_config:
        print(describe(ServeConfig))
        return 0
    cfg = load(ServeConfig, args.config, args.overrides, host=args.host, port=args.port)
    first = _first_spec(args, ws)
    import uvicorn

    from serve.app import create_app
    from serve.auth import admin_token, token_path

    token, created = admin_token(ws)
    if created:
        print(f"admin token (shown once, stored in {token_path(ws)} mode 0600):\n  {token}")
    app = create_app(ws, cfg, first=first, admin_token=token)
    what = f"'{first.name}' ({first.format})" if first else "no model yet (deploy one with `appliance deploy NAME`)"
    print(f"gateway on http://{cfg.host}:{cfg.port}/v1 serving {what}; engine logs in {ws.home / 'logs'}")
    uvicorn.run(app, host=cfg.host, port=cfg.port, log_level="warning", access_log=False,
                timeout_graceful_shutdown=10)
    return 0


def _first_spec(args, ws: Workspace):
    from serve.artifacts import ArtifactStore
    from serve.engines import ModelSpec

    if getattr(args, "run", None):
        path = ws.merged / args.run
        if not (path / "config.json").is_file():
            raise DeployError(f"{path} is not a merged model", f"merge the run first: `appliance merge --run {args.run}`")
        return ModelSpec(f"{args.run}-merged", path, "hf")
    if getattr(args, "artifact", None):
        return ArtifactStore(ws).verified_spec(args.artifact)  # refuse to start on a bad artifact
    return None


def _client(args, ws: Workspace):
    import httpx

    from serve.auth import token_path

    url = (args.url or os.environ.get("APPLIANCE_URL") or DEFAULT_URL).rstrip("/")
    token = args.token or os.environ.get("APPLIANCE_ADMIN_TOKEN")
    if not token and token_path(ws).is_file():
        token = token_path(ws).read_text().strip()
    if not token:
        raise DeployError("no admin token", "pass --token, set APPLIANCE_ADMIN_TOKEN, or run from the gateway's workspace")
    return url, httpx.Client(base_url=url, headers={"authorization": f"Bearer {token}"}, timeout=60.0)


def _check(r, url: str) -> dict:
    try:
        body = r.json()
    except ValueError:
        body = {"error": {"message": r.text[:300]}}
    if r.status_code >= 400:
        raise DeployError(f"{url}: HTTP {r.status_code}: {body.get('error', {}).get('message', body)}",
                          "check `appliance status` for artifact names and the gateway's log")
    return body


def _wait(http, dep: dict, url: str) -> int:
    seen = None
    while True:
        if dep["state"] != seen:
            seen = dep["state"]
            print(f"  {dep['id']}: {seen}")
        if seen in ("done", "failed"):
            break
        time.sleep(0.5)
        dep = _check(http.get(f"/admin/deployments/{dep['id']}"), url)
    if seen == "failed":
        print(f"deployment failed: {dep['error']}", file=sys.stderr)
        if dep.get("diff"):
            print(json.dumps(dep["diff"], indent=2), file=sys.stderr)
        print(f"still serving: {dep.get('previous_serving')}", file=sys.stderr)
        return 1
    print(f"now serving '{dep['artifact']}' ({dep['strategy']}, {dep['timings'].get('total', 0):.1f} s)")
    return 0


def deploy_cli(args: argparse.Namespace, ws: Workspace) -> int:
    url, http = _client(args, ws)
    with http:
        try:
            if args.adapter:
                body = _check(http.post("/admin/adapters", json={"run": args.adapter}), url)
                print(f"adapter loaded: use model '{body['model']}' (base '{body['base']}')")
                return 0
            if not args.artifact:
                raise DeployError("name an artifact to deploy (or --adapter RUN)", "see `appliance status`")
            dep = _check(http.post("/admin/deploy", json={"artifact": args.artifact}), url)
            print(f"deployment {dep['id']} of '{args.artifact}' ({url})")
            return 0 if args.no_wait else _wait(http, dep, url)
        except ApplianceError:
            raise
        except Exception as e:  # connection refused and friends
            raise DeployError(f"cannot reach the gateway at {url}: {e}", "start it with `appliance serve`, or pass --url") from None


def rollback_cli(args: argparse.Namespace, ws: Workspace) -> int:
    url, http = _client(args, ws)
    with http:
        try:
            dep = _check(http.post("/admin/rollback"), url)
        except ApplianceError:
            raise
        except Exception as e:
            raise DeployError(f"cannot reach the gateway at {url}: {e}", "start it with `appliance serve`, or pass --url") from None
        print(f"rolling back to '{dep['artifact']}'")
        return _wait(http, dep, url)


def pull_cli(args: argparse.Namespace, ws: Workspace) -> int:
    from export.signing import trusted_keys
    from serve.pull import how_to_run, pull

    keys = [Path(k) for k in args.public_key] or trusted_keys(ws)
    api_key = os.environ.get("APPLIANCE_API_KEY")
    out = pull(args.url, Path(args.out) if args.out else None, keys,
               headers={"authorization": f"Bearer {api_key}"} if api_key else None)
    print(f"verified: {out} (signature + every sha256)")
    print(how_to_run(out))
    return 0
