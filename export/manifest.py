"""What an artifact says about itself: `appliance.json` (provenance) and `SHA256SUMS` (digests).

    files = list_payload(dir)              # every file except SHA256SUMS and model.sig
    write_sha256sums(dir)                  # "<sha256>  <name>" lines: `sha256sum -c SHA256SUMS` works
    read_sha256sums(dir) -> {name: hex}
    write_manifest(dir, fields); read_manifest(dir) -> dict

appliance.json keys (null when they do not apply):
    name, format ("hf" | "gguf" | "awq" | "gptq"), quantization, files (model files, relative),
    base_model {ref, digest}, adapter_digest, dataset_digest, training_config, run, source,
    tool_versions, created_at, quality {...}
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

from appliance.errors import ArtifactError
from appliance.models import file_sha256  # noqa: F401  (re-exported: manifest.file_sha256)

MANIFEST = "appliance.json"
SUMS = "SHA256SUMS"
SIGNATURE = "model.sig"
FORMATS = ("hf", "gguf", "awq", "gptq")
META_FILES = (MANIFEST, SUMS, SIGNATURE)

MANIFEST_FIELDS = ("name", "format", "quantization", "files", "base_model", "adapter_digest", "dataset_digest",
                   "training_config", "run", "source", "tool_versions", "created_at", "quality")

TOOLS = ("appliance", "torch", "transformers", "peft", "llmcompressor", "compressed-tensors", "llama_cpp_python",
         "gguf", "model-signing")


def list_payload(path: Path, *, skip_symlinks: bool = False) -> list[str]:
    """Relative posix names of every file under `path` except SHA256SUMS and model.sig (sorted).

    Artifacts hold plain files only: a symlink raises ArtifactError, or is left out with `skip_symlinks`.
    """
    path = Path(path)
    names = []
    for p in sorted(path.rglob("*")):
        if p.is_symlink():
            if skip_symlinks:
                continue
            raise ArtifactError(f"{p} is a symlink; artifacts hold plain files only", "copy the file instead")
        if p.is_file():
            rel = p.relative_to(path).as_posix()
            if rel not in (SUMS, SIGNATURE):
                names.append(rel)
    return names


def digests(path: Path, names: list[str] | None = None) -> dict[str, str]:
    """{name: sha256 hex} of the payload files (or of `names`)."""
    path = Path(path)
    return {n: file_sha256(path / n) for n in (list_payload(path) if names is None else names)}


def write_sha256sums(path: Path) -> Path:
    """Write SHA256SUMS over every file except itself and model.sig, in coreutils text format."""
    lines = []
    for name, digest in digests(path).items():
        if "\n" in name or "\\" in name:
            raise ArtifactError(f"file name {name!r} cannot be listed in {SUMS}", "rename the file")
        lines.append(f"{digest}  {name}\n")
    out = Path(path) / SUMS
    out.write_text("".join(lines))
    return out


def read_sha256sums(path: Path) -> dict[str, str]:
    """Parse SHA256SUMS; a malformed line raises ValueError naming its line number."""
    out: dict[str, str] = {}
    for i, line in enumerate((Path(path) / SUMS).read_text().splitlines(), 1):
        if not line.strip():
            continue
        digest, sep, name = line.partition(" ")
        name = name[1:] if name[:1] in (" ", "*") else name
        if not sep or len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest.lower()) or not name:
            raise ValueError(f"{SUMS} line {i}: expected '<sha256>  <file>', got {line[:80]!r}")
        out[name] = digest.lower()
    return out


def artifact_digest(path: Path) -> str:
    """One identity for a whole artifact: sha256 of its SHA256SUMS (which covers every other file)."""
    return "sha256:" + file_sha256(Path(path) / SUMS)


def tool_versions() -> dict[str, str | None]:
    """Installed versions of the tools that shape an artifact (read from metadata, nothing imported)."""
    out: dict[str, str | None] = {}
    for dist in TOOLS:
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    return out


def now_utc() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def build_manifest(name: str, files: list[str], provenance: dict) -> dict:
    """Every documented field (null when absent), provenance values on top."""
    fields: dict = {k: None for k in MANIFEST_FIELDS}
    fields.update({"name": name, "tool_versions": tool_versions(), "created_at": now_utc(), "quality": {}})
    fields.update(provenance)
    fields["name"], fields["files"] = name, list(files)
    if fields["format"] not in FORMATS:
        raise ArtifactError(f"artifact format {fields['format']!r} is not one of {', '.join(FORMATS)}")
    return fields


def write_manifest(path: Path, fields: dict) -> Path:
    out = Path(path) / MANIFEST
    out.write_text(json.dumps(fields, indent=2, sort_keys=False, default=str) + "\n")
    return out


def read_manifest(path: Path) -> dict:
    """appliance.json of an artifact directory."""
    f = Path(path) / MANIFEST
    if not f.is_file():
        raise ArtifactError(f"{path} has no {MANIFEST}: not an appliance artifact",
                            "export one with `appliance export` (artifacts live in workspace/artifacts/)")
    try:
        return json.loads(f.read_text())
    except json.JSONDecodeError as e:
        raise ArtifactError(f"{f}: not valid JSON ({e})", "re-export the artifact") from None
