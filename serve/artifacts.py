"""The artifact store the gateway deploys from and serves downloads from: verified artifacts only.

    store = ArtifactStore(ws)
    store.verified_spec("run1-gguf-q4_k_m")   -> ModelSpec (raises VerificationError with the diff)
    store.listing()                            -> [{name, format, digest, signer, files: [{name, size, sha256}]}]
    store.file("run1-gguf-q4_k_m", "model.gguf") -> StoredFile(path, size, sha256)
    parse_range("bytes=100-", size)            -> (100, size - 1)

Names are looked up, never joined: an artifact must be one of the workspace's complete artifacts and
a file one listed in its SHA256SUMS (or SHA256SUMS / model.sig themselves), so no request reaches a
path outside the store. Verification (signature + every digest) is cached per artifact until any of
its files changes size or mtime.
"""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass
from pathlib import Path

from appliance.errors import ArtifactError, DeployError
from appliance.workspace import Workspace
from serve.engines import ModelSpec

SUMS, SIGNATURE, MANIFEST = "SHA256SUMS", "model.sig", "appliance.json"


@dataclass(frozen=True)
class StoredFile:
    path: Path
    size: int
    sha256: str


@dataclass(frozen=True)
class _Verified:
    stamp: tuple
    spec: ModelSpec
    manifest: dict
    files: dict[str, StoredFile]


class RangeNotSatisfiable(Exception):
    pass


class ArtifactStore:
    def __init__(self, ws: Workspace):
        self.ws = ws
        self._cache: dict[str, _Verified] = {}
        self._lock = threading.Lock()

    def names(self) -> list[str]:
        return self.ws.list_artifacts()

    def _path(self, name: str) -> Path:
        if name not in self.names():
            have = ", ".join(self.names()) or "none"
            raise DeployError(f"artifact '{name}' not found in {self.ws.artifacts} (artifacts: {have})",
                              "export one with `appliance export`, or pick a name from `appliance status`")
        return self.ws.artifacts / name

    def _verify(self, name: str) -> _Verified:
        from export.artifact import read_manifest
        from export.manifest import artifact_digest, read_sha256sums
        from export.signing import trusted_keys
        from export.verify import verify_artifact

        path = self._path(name)
        stamp = _stamp(path)
        with self._lock:
            hit = self._cache.get(name)
        if hit and hit.stamp == stamp:
            return hit
        report = verify_artifact(path, trusted_keys(self.ws))  # raises VerificationError with the diff
        manifest = read_manifest(path)
        sums = read_sha256sums(path)
        files = {n: StoredFile(path / n, (path / n).stat().st_size, d) for n, d in sums.items()}
        for meta in (SUMS, SIGNATURE):
            p = path / meta
            files[meta] = StoredFile(p, p.stat().st_size, hashlib.sha256(p.read_bytes()).hexdigest())
        fmt = manifest.get("format")
        if fmt not in ("hf", "awq", "gptq", "gguf"):
            raise ArtifactError(f"{path}/{MANIFEST}: unknown format {fmt!r}", "re-export the artifact")
        spec = ModelSpec(name, path, fmt, artifact_digest(path), report.signer,
                         extra={"quantization": manifest.get("quantization"), "base_model": manifest.get("base_model")})
        v = _Verified(stamp, spec, manifest, files)
        with self._lock:
            self._cache[name] = v
        return v

    def verified_spec(self, name: str) -> ModelSpec:
        return self._verify(name).spec

    def listing(self) -> list[dict]:
        """Every artifact that verifies, with its files; the ones that do not are left out."""
        out = []
        for name in self.names():
            try:
                out.append(self.describe(name))
            except Exception:  # noqa: BLE001 - unverifiable artifacts are simply not offered
                continue
        return out

    def describe(self, name: str) -> dict:
        v = self._verify(name)
        return {"name": name, "format": v.spec.format, "quantization": v.manifest.get("quantization"),
                "digest": v.spec.digest, "signer": v.spec.signer, "base_model": v.manifest.get("base_model"),
                "created_at": v.manifest.get("created_at"),
                "files": [{"name": n, "size": f.size, "sha256": f.sha256} for n, f in sorted(v.files.items())]}

    def file(self, name: str, file: str) -> StoredFile:
        """A verified file of a verified artifact; KeyError when the name is not one of its files."""
        if name not in self.names():
            raise KeyError(name)
        v = self._verify(name)
        if file not in v.files:
            raise KeyError(file)
        return v.files[file]


def _stamp(path: Path) -> tuple:
    out = []
    for p in sorted(path.rglob("*")):
        if p.is_file():
            st = p.stat()
            out.append((p.relative_to(path).as_posix(), st.st_size, st.st_mtime_ns))
    return tuple(out)


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """(first, last) byte of a single `bytes=` range, None for no/ignored range header."""
    if not header:
        return None
    unit, _, spec = header.partition("=")
    if unit.strip() != "bytes" or "," in spec:
        return None  # multi-range or other units: answer with the whole file (allowed by RFC 9110)
    first, _, last = spec.strip().partition("-")
    try:
        if first == "":
            n = int(last)
            if n <= 0:
                raise RangeNotSatisfiable
            return max(0, size - n), size - 1
        start = int(first)
        end = int(last) if last else size - 1
    except ValueError:
        return None
    if start >= size or end < start:
        raise RangeNotSatisfiable
    return start, min(end, size - 1)
