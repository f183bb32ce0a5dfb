"""Handlers for `appliance export`, `appliance verify` and `appliance keys` (arguments: appliance/cli.py)."""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from appliance.errors import ArtifactError
from appliance.workspace import Workspace


def verify_cli(args: argparse.Namespace, ws: Workspace) -> int:
    """Exit 0 only when the signature is valid for a trusted key and every file matches."""
    from export.signing import trusted_keys
    from export.verify import verify_artifact

    path = resolve_artifact_dir(ws, args.dir)
    keys = [Path(k) for k in args.public_key] or trusted_keys(ws)
    report = verify_artifact(path, keys)
    print(f"OK  {report.path}\n    signed by {report.signer}; {report.files} files match SHA256SUMS and the signature")
    return 0


def keys_cli(args: argparse.Namespace, ws: Workspace) -> int:
    """Show the signing key (created on first use), export its public half, or trust another key."""
    from export.signing import ensure_keypair, fingerprint, trust_key, trusted_keys

    if args.trust:
        dest = trust_key(ws, Path(args.trust))
        print(f"trusted {args.trust} as {dest} (sha256:{fingerprint(dest)[:16]})")
        return 0
    key, pub = ensure_keypair(ws)
    if args.export:
        out = Path(args.export)
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(pub, out)
        print(f"wrote public key to {out}")
        return 0
    print(f"private key: {key} (mode {oct(key.stat().st_mode & 0o777)})")
    print(f"public key:  {pub}\nfingerprint: sha256:{fingerprint(pub)}")
    print(pub.read_text().rstrip())
    print("trusted keys (verify / deploy):")
    for k in trusted_keys(ws):
        print(f"  {k}  sha256:{fingerprint(k)[:16]}")
    return 0


def export_cli(args: argparse.Namespace, ws: Workspace) -> int:
    """merged/<run> (or --model) -> one signed artifact per format; prints a quality table."""
    from appliance import config

    if args.help_config:
        print(config.describe(config.ExportConfig))
        return 0
    from export.exporters import export_from_cli

    return export_from_cli(args, ws)


def resolve_artifact_dir(ws: Workspace, ref: str) -> Path:
    """A directory path, or the name of an artifact under workspace/artifacts/."""
    path = Path(ref).expanduser()
    if path.is_dir():
        return path.resolve()
    if (ws.artifacts / ref).is_dir() and "/" not in ref:
        return ws.artifacts / ref
    have = ", ".join(ws.list_artifacts()) or "none"
    raise ArtifactError(f"artifact '{ref}' not found (not a directory; artifacts in {ws.artifacts}: {have})",
                        "pass a directory or an artifact name; `appliance status` lists them")
