"""appliance.json and SHA256SUMS; atomic artifact writes (error, Ctrl-C, full disk)."""

from __future__ import annotations

import errno
import shutil
import subprocess

import pytest

from appliance.errors import ArtifactError
from appliance.workspace import Workspace
from export.artifact import read_manifest, write_artifact
from export.manifest import MANIFEST_FIELDS, list_payload, read_sha256sums
from export_fixtures import sha256sum_check, small_artifact


@pytest.fixture
def fresh_ws(tmp_path) -> Workspace:
    return Workspace.open(tmp_path / "ws")


def test_layout_and_manifest_fields(fresh_ws):
    art = small_artifact(fresh_ws, "demo")
    assert sorted(p.name for p in art.iterdir()) == [
        "SHA256SUMS", "appliance.json", "config.json", "extra", "model.safetensors", "model.sig"]
    m = read_manifest(art)
    assert set(MANIFEST_FIELDS) <= set(m)
    assert m["name"] == "demo" and m["format"] == "hf"
    assert m["files"] == ["config.json", "extra/notes.txt", "model.safetensors"]
    assert m["base_model"] is None and m["tool_versions"]["model-signing"] == "1.1.1"
    assert m["created_at"].endswith("Z")


def test_sha256sums_covers_all_but_itself_and_signature(fresh_ws):
    art = small_artifact(fresh_ws, "demo")
    sums = read_sha256sums(art)
    assert set(sums) == set(list_payload(art)) == {"appliance.json", "config.json", "extra/notes.txt",
                                                    "model.safetensors"}
    r = sha256sum_check(art)
    assert r.returncode == 0 and r.stdout.count(": OK") == 4, r.stdout + r.stderr
    if shutil.which("shasum"):
        assert subprocess.run(["shasum", "-a", "256", "-c", "SHA256SUMS"], cwd=art).returncode == 0
    (art / "config.json").write_text("{}")
    r = sha256sum_check(art)
    assert r.returncode != 0 and "config.json: FAILED" in r.stdout


def test_malformed_sums_line_is_named(fresh_ws):
    art = small_artifact(fresh_ws, "demo", sign=False)
    (art / "SHA256SUMS").write_text("abc  model.safetensors\n")
    with pytest.raises(ValueError, match="line 1"):
        read_sha256sums(art)


def test_unknown_format_refused(fresh_ws):
    with pytest.raises(ArtifactError, match="format"):
        write_artifact(fresh_ws, "x", lambda t: (t / "w").write_text("w"), {"format": "onnx"})
    assert fresh_ws.list_artifacts() == [] and list(fresh_ws.artifacts.iterdir()) == []


def test_existing_artifact_needs_overwrite(fresh_ws):
    art = small_artifact(fresh_ws, "demo")
    with pytest.raises(ArtifactError, match="already exists") as e:
        write_artifact(fresh_ws, "demo", lambda t: (t / "w").write_text("w"), {"format": "hf"})
    assert "--force" in e.value.hint
    write_artifact(fresh_ws, "demo", lambda t: (t / "w").write_text("w"), {"format": "hf"}, overwrite=True)
    assert read_manifest(art)["files"] == ["w"]


@pytest.mark.parametrize("exc", [KeyboardInterrupt, RuntimeError])
def test_interrupted_export_leaves_nothing(fresh_ws, exc):
    def fill(tmp):
        (tmp / "model.safetensors").write_bytes(b"half")
        raise exc("stop")

    with pytest.raises(exc):
        write_artifact(fresh_ws, "demo", fill, {"format": "hf"})
    assert list(fresh_ws.artifacts.iterdir()) == []


def test_interrupt_during_overwrite_keeps_old(fresh_ws):
    art = small_artifact(fresh_ws, "demo")
    before = read_sha256sums(art)

    def fill(tmp):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_artifact(fresh_ws, "demo", fill, {"format": "hf"}, overwrite=True)
    assert [p.name for p in fresh_ws.artifacts.iterdir()] == ["demo"]
    assert read_sha256sums(art) == before


def test_disk_full_becomes_artifact_error(fresh_ws):
    def fill(tmp):
        (tmp / "part").write_bytes(b"x")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(ArtifactError, match="disk full") as e:
        write_artifact(fresh_ws, "demo", fill, {"format": "hf"})
    assert "free space" in e.value.hint
    assert list(fresh_ws.artifacts.iterdir()) == []
