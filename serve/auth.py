"""Who may call what: the optional API key for /v1/* and the admin token for /admin/*.

    token, created = admin_token(ws)   # $APPLIANCE_ADMIN_TOKEN, else <home>/admin.token (0600), made once
"""

from __future__ import annotations

import hmac
import os
import secrets
from pathlib import Path

from appliance.workspace import Workspace, write_atomic

TOKEN_FILE = "admin.token"


def admin_token(ws: Workspace) -> tuple[str, bool]:
    """The admin token and whether it was just generated (print it once, then)."""
    env = os.environ.get("APPLIANCE_ADMIN_TOKEN")
    if env:
        return env, False
    path = token_path(ws)
    if path.is_file():
        return path.read_text().strip(), False
    token = secrets.token_urlsafe(32)
    write_atomic(path, token + "\n", mode=0o600)
    return token, True


def token_path(ws: Workspace) -> Path:
    return ws.home / TOKEN_FILE


def bearer_matches(authorization: str | None, expected: str) -> bool:
    if not authorization or not authorization.lower().startswith("bearer "):
        return False
    return hmac.compare_digest(authorization[7:].strip().encode(), expected.encode())
