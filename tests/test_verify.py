"""Tamper tests: every change after signing is caught, with the right diff, by verify and the CLI."""

from __future__ import annotations

import pytest

from appliance.cli import main
from appliance.errors import VerificationError
from appliance.workspace import Workspace
from export.manifest import write_sha256sums
from export.signing import ensure_keypair, sign_dir, trusted_keys
from export.verify import verify_artifact
from export_fixtures import sha256sum_check, small_artifact, upstream_verify


@pytest.fixture
def fresh_ws(tmp_path) -> Workspace:
    return Workspace.open(tmp_path / "ws")


@pytest.fixture
def art(fresh_ws):
    return small_artifact(fresh_ws, "demo")


def _fails(path, keys) -> VerificationError:
    with pytest.raises(VerificationError) as e:
        verify_artifact(path, keys)
    return e.value


def test_intact_artifact_verifies(fresh_ws, art):
    report = verify_artifact(art, trusted_keys(fresh_ws))
    assert report.ok and report.files == 5 and report.signer.startswith("signing.pub")
    assert main(["verify", "--home", str(fresh_ws.home), "demo"]) == 0
    assert main(["verify", "--home", str(fresh_ws.home), str(art)]) == 0


def test_flipped_byte_is_mismatched(fresh_ws, art):
    w = art / "model.safetensors"
    data = bytearray(w.read_bytes())
    data[100] ^= 0x01
    w.write_bytes(bytes(data))
    e = _fails(art, trusted_keys(fresh_ws))
    assert (e.mismatched, e.missing, e.extra, e.signature_error) == (["model.safetensors"], [], [], None)
    assert "mismatched files: model.safetensors" in e.message
    assert sha256sum_check(art).returncode != 0
    assert upstream_verify(art, ensure_keypair(fresh_ws)[1]).returncode != 0


def test_added_file_is_extra(fresh_ws, art):
    (art / "extra" / "payload.py").write_text("import os\n")
    e = _fails(art, trusted_keys(fresh_ws))
    assert (e.extra, e.missing, e.mismatched) == (["extra/payload.py"], [], [])


def test_symlink_is_extra_and_not_followed(fresh_ws, art, tmp_path):
    outside = tmp_path / "outside.bin"
    outside.write_bytes(b"elsewhere")
    (art / "link.bin").symlink_to(outside)
    e = _fails(art, trusted_keys(fresh_ws))
    assert (e.extra, e.missing, e.mismatched) == (["link.bin"], [], [])


def test_deleted_file_is_missing(fresh_ws, art):
    (art / "config.json").unlink()
    e = _fails(art, trusted_keys(fresh_ws))
    assert (e.missing, e.extra, e.mismatched) == (["config.json"], [], [])


def test_changed_and_resummed_is_caught_by_signature(fresh_ws, art):
    (art / "model.safetensors").write_bytes(b"evil")
    write_sha256sums(art)  # the attacker keeps SHA256SUMS consistent, but cannot re-sign
    assert sha256sum_check(art).returncode == 0
    e = _fails(art, trusted_keys(fresh_ws))
    assert e.mismatched == ["SHA256SUMS", "model.safetensors"] and e.missing == e.extra == []


def test_resigned_with_other_key_is_refused(fresh_ws, art, tmp_path):
    other_key, other_pub = ensure_keypair(Workspace.open(tmp_path / "attacker"))
    sign_dir(art, other_key)
    e = _fails(art, trusted_keys(fresh_ws))
    assert e.signature_error and "not signed by signing.pub" in e.signature_error
    assert e.missing == e.extra == e.mismatched == []
    # ... and accepted once that key is explicitly trusted
    assert verify_artifact(art, [other_pub]).ok
    assert main(["verify", "--home", str(fresh_ws.home), "demo", "--public-key", str(other_pub)]) == 0


def test_stripped_signature_is_refused(fresh_ws, art, capsys):
    (art / "model.sig").unlink()
    e = _fails(art, trusted_keys(fresh_ws))
    assert "model.sig is missing" in e.signature_error
    assert main(["verify", "--home", str(fresh_ws.home), "demo"]) != 0
    assert "model.sig is missing" in capsys.readouterr().err


def test_garbage_signature_is_refused(fresh_ws, art):
    (art / "model.sig").write_text("{not json")
    assert "not a readable Sigstore bundle" in _fails(art, trusted_keys(fresh_ws)).signature_error


def test_no_trusted_key(fresh_ws, art):
    assert "no trusted public key" in _fails(art, []).signature_error


def test_cli_lists_the_diff(fresh_ws, art, capsys):
    (art / "config.json").unlink()
    (art / "new.bin").write_bytes(b"1")
    (art / "model.safetensors").write_bytes(b"2")
    assert main(["verify", "--home", str(fresh_ws.home), "demo"]) == 2
    err = capsys.readouterr().err
    assert "missing files: config.json" in err and "extra files: new.bin" in err
    assert "mismatched files: model.safetensors" in err
