"""Shared fixtures: one offline workspace per test session, the embedded model materialised once.

Fixtures here are deliberately few; area-specific ones live in tests/<area>_fixtures.py.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _has_cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:
        return False


def pytest_collection_modifyitems(config, items):
    if _has_cuda():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (results of GPU runs live in bench/)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def ws(tmp_path_factory):
    """A workspace shared by the whole session (models are materialised into it once)."""
    from appliance.workspace import Workspace

    home = os.environ.get("APPLIANCE_TEST_HOME")
    return Workspace.open(Path(home) if home else tmp_path_factory.mktemp("workspace"))


@pytest.fixture(scope="session")
def base_model(ws) -> Path:
    """The embedded SmolLM2-135M-Instruct as an HF folder inside the session workspace."""
    from appliance.models import resolve_model

    return resolve_model("embedded:smollm2-135m-instruct", ws)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def port() -> int:
    return free_port()
