"""Signing keys and model.sig: created on first use, private key 0600, readable by the upstream CLI."""

from __future__ import annotations

import json
import stat

import pytest

from appliance.errors import ArtifactError
from appliance.workspace import Workspace
from export.signing import (SignatureInvalid, ensure_keypair, fingerprint, sign_dir, signed_digests, trust_key,
                            trusted_keys)
from export_fixtures import small_artifact, upstream_verify


@pytest.fixture
def fresh_ws(tmp_path) -> Workspace:
    return Workspace.open(tmp_path / "ws")


def test_keypair_created_once_private_0600(fresh_ws):
    key, pub = ensure_keypair(fresh_ws)
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert b"PRIVATE KEY" in key.read_bytes() and b"PUBLIC KEY" in pub.read_bytes()
    before = key.read_bytes()
    assert ensure_keypair(fresh_ws) == (key, pub)
    assert key.read_bytes() == before  # not regenerated


def test_keypair_is_ec_p256(fresh_ws):
    from cryptography.hazmat.primitives.asymmetric import ec

    from export.signing import load_public_key

    pub = load_public_key(ensure_keypair(fresh_ws)[1])
    assert isinstance(pub, ec.EllipticCurvePublicKey) and pub.curve.name == "secp256r1"


def test_trusted_keys_lists_own_and_trust_dir(fresh_ws, tmp_path):
    assert trusted_keys(fresh_ws) == []
    _, pub = ensure_keypair(fresh_ws)
    other = Workspace.open(tmp_path / "other")
    _, other_pub = ensure_keypair(other)
    dest = trust_key(fresh_ws, other_pub)
    assert trusted_keys(fresh_ws) == [pub, dest]
    assert fingerprint(dest) == fingerprint(other_pub) != fingerprint(pub)


def test_trust_rejects_non_keys(fresh_ws, tmp_path):
    junk = tmp_path / "junk.pub"
    junk.write_text("not a key")
    with pytest.raises(ArtifactError, match="not a PEM public key"):
        trust_key(fresh_ws, junk)


def test_signature_covers_every_file_but_itself(fresh_ws):
    art = small_artifact(fresh_ws, "a")
    _, pub = ensure_keypair(fresh_ws)
    signed = signed_digests(art, pub)
    assert set(signed) == {"model.safetensors", "config.json", "extra/notes.txt", "appliance.json", "SHA256SUMS"}
    bundle = json.loads((art / "model.sig").read_text())
    assert bundle["verificationMaterial"]["publicKey"]["hint"] == fingerprint(pub)


def test_other_key_does_not_verify(fresh_ws, tmp_path):
    art = small_artifact(fresh_ws, "a")
    _, other_pub = ensure_keypair(Workspace.open(tmp_path / "other"))
    with pytest.raises(SignatureInvalid):
        signed_digests(art, other_pub)


def test_upstream_cli_accepts_our_signature(fresh_ws):
    art = small_artifact(fresh_ws, "a")
    key, pub = ensure_keypair(fresh_ws)
    r = upstream_verify(art, pub)
    assert r.returncode == 0, r.stdout + r.stderr
    (art / "config.json").write_text("{}")  # upstream notices tampering too
    r = upstream_verify(art, pub)
    assert r.returncode != 0 and "config.json" in (r.stdout + r.stderr)
    sign_dir(art, key)  # re-signing replaces model.sig and covers the new content
    assert upstream_verify(art, pub).returncode == 0
