"""Helpers for the export tests: small signed artifacts built without any model, and the upstream tools."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from appliance.workspace import Workspace


def small_artifact(ws: Workspace, name: str, *, sign: bool = True) -> Path:
    """A signed 'hf' artifact with a random weight file, a config and a file in a subfolder."""
    from export.artifact import write_artifact

    def fill(tmp: Path) -> None:
        (tmp / "model.safetensors").write_bytes(os.urandom(4096))
        (tmp / "config.json").write_text('{"model_type": "llama"}\n')
        (tmp / "extra").mkdir()
        (tmp / "extra" / "notes.txt").write_text("hello\n")

    return write_artifact(ws, name, fill, {"format": "hf", "quantization": None}, overwrite=True, sign=sign)


def model_signing_cli() -> Path:
    """The upstream `model_signing` console script of this interpreter's environment."""
    exe = Path(sys.executable).parent / "model_signing"
    return exe if exe.exists() else Path(shutil.which("model_signing") or "model_signing")


def upstream_verify(path: Path, public_key: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(model_signing_cli()), "verify", "key", str(path), "--signature", str(path / "model.sig"),
         "--public_key", str(public_key)], capture_output=True, text=True, timeout=120)


def sha256sum_check(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["sha256sum", "-c", "SHA256SUMS"], cwd=path, capture_output=True, text=True, timeout=60)


def export_config(**values):
    """An ExportConfig for tests: few calibration and eval rows."""
    from appliance.config import ExportConfig, load

    base = dict(calibration_samples=4, eval_samples=2)
    base.update(values)
    return load(ExportConfig, None, [], **base)
