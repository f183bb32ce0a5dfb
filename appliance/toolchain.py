"""Where the external programs the appliance runs live.

bootstrap.sh installs them; container images point at their own copies through environment
variables. Each lookup fails with a message that says how to install the missing piece.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from appliance.errors import MissingDependencyError

REPO = Path(__file__).resolve().parent.parent


def _venv_share() -> Path:
    return Path(sys.prefix) / "share" / "llama.cpp"


def engine_python() -> Path:
    """Interpreter of the environment that has vLLM (APPLIANCE_ENGINE_PYTHON or .venv-engine)."""
    env = os.environ.get("APPLIANCE_ENGINE_PYTHON")
    for cand in [env, REPO / ".venv-engine" / "bin" / "python"]:
        if cand and Path(cand).exists():
            return Path(cand)
    raise MissingDependencyError(
        "vLLM's environment was not found (APPLIANCE_ENGINE_PYTHON unset and .venv-engine missing)",
        "run `bash bootstrap.sh` once: it creates .venv-engine with vLLM",
    )


def llama_cpp_dir() -> Path:
    """Folder with llama.cpp's convert_hf_to_gguf.py (+ conversion/, gguf-py/) and llama-server."""
    env = os.environ.get("APPLIANCE_LLAMA_CPP_DIR")
    for cand in [env, _venv_share(), REPO / ".venv" / "share" / "llama.cpp"]:
        if cand and (Path(cand) / "convert_hf_to_gguf.py").exists():
            return Path(cand)
    raise MissingDependencyError(
        "llama.cpp's converter (convert_hf_to_gguf.py) was not found",
        "run `bash bootstrap.sh` once: it unpacks llama.cpp's tools into .venv/share/llama.cpp",
    )


def llama_server() -> Path:
    """The native llama.cpp server binary."""
    env = os.environ.get("APPLIANCE_LLAMA_SERVER")
    cands = [env]
    try:
        cands.append(llama_cpp_dir() / "llama-server")
    except MissingDependencyError:
        pass
    cands.append(shutil.which("llama-server"))
    for cand in cands:
        if cand and Path(cand).exists() and os.access(cand, os.X_OK):
            return Path(cand)
    raise MissingDependencyError(
        "llama.cpp's llama-server binary was not found",
        "run `bash bootstrap.sh` once (it builds llama-server), or set APPLIANCE_LLAMA_SERVER",
    )
