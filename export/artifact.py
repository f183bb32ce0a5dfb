"""Write one artifact directory atomically: model files, then appliance.json, SHA256SUMS, model.sig.

    def fill(tmp: Path) -> None: ...          # write the model files into tmp
    path = write_artifact(ws, "run1-gguf-q4_k_m", fill, {"format": "gguf", "quantization": "q4_k_m", ...})

Until the final rename nothing exists under artifacts/<name>: an error, a full disk or Ctrl-C leaves
at most a `.tmp-*` sibling that is removed on the way out (and never listed as an artifact).
"""

from __future__ import annotations

import errno
from pathlib import Path
from typing import Callable

from appliance.errors import ArtifactError
from appliance.workspace import Workspace, atomic_dir
from export.manifest import build_manifest, list_payload, read_manifest, write_manifest, write_sha256sums
from export.signing import ensure_keypair, sign_dir

__all__ = ["write_artifact", "read_manifest", "artifact_path", "check_name"]


def check_name(name: str) -> str:
    if not name or "/" in name or "\\" in name or name.startswith(".") or name.strip() != name:
        raise ArtifactError(f"artifact name {name!r} is not a plain directory name",
                            "use letters, digits, '-', '_' and '.', not starting with '.'")
    return name


def artifact_path(ws: Workspace, name: str) -> Path:
    return ws.artifacts / check_name(name)


def write_artifact(ws: Workspace, name: str, fill: Callable[[Path], None], provenance: dict, *,
                   overwrite: bool = False, sign: bool = True) -> Path:
    """fill(tmp) writes the model files; then appliance.json, SHA256SUMS and model.sig; then rename."""
    final = artifact_path(ws, name)
    if final.exists() and not overwrite:
        raise ArtifactError(f"artifact {final} already exists", "pass --force to replace it, or --name to pick another")
    key = ensure_keypair(ws)[0] if sign else None
    try:
        with atomic_dir(final, overwrite=overwrite) as tmp:
            fill(tmp)
            files = list_payload(tmp)
            if not files:
                raise ArtifactError(f"exporting {name} wrote no model files", "this is a bug in the exporter")
            write_manifest(tmp, build_manifest(name, files, provenance))
            write_sha256sums(tmp)
            if key is not None:
                sign_dir(tmp, key)
    except OSError as e:
        if e.errno == errno.ENOSPC:
            raise ArtifactError(f"disk full while writing artifact {name} under {ws.artifacts} (nothing was kept)",
                                "free space (e.g. remove old artifacts/ or merged/ folders) and run export again") from None
        raise
    return final
