"""Downloads from the gateway's artifact store (Range, ETag, no escapes) and `appliance pull`."""

from __future__ import annotations

import hashlib
import os
import shutil

import httpx
import pytest

from appliance.errors import VerificationError
from serve_fixtures import RunningGateway, gguf_artifacts, serve_config  # noqa: F401

A = "gw-gguf-a"


@pytest.fixture(scope="module")
def store_gw(ws, gguf_artifacts):
    gw = RunningGateway(ws, serve_config(), None).start()  # no engine: the store needs none
    yield gw
    gw.stop()


@pytest.fixture(scope="module")
def gguf(ws, gguf_artifacts):
    path = next((ws.artifacts / A).glob("*.gguf"))
    return path, hashlib.sha256(path.read_bytes()).hexdigest()


def test_listing_offers_verified_artifacts_with_digests(store_gw, ws, gguf):
    data = {a["name"]: a for a in httpx.get(store_gw.url + "/artifacts").json()["data"]}
    assert A in data and data[A]["format"] == "gguf" and data[A]["signer"].startswith("signing.pub")
    files = {f["name"]: f for f in data[A]["files"]}
    path, digest = gguf
    assert files[path.name] == {"name": path.name, "size": path.stat().st_size, "sha256": digest}
    assert {"appliance.json", "SHA256SUMS", "model.sig"} <= set(files)


def test_head_and_etag(store_gw, gguf):
    path, digest = gguf
    url = f"{store_gw.url}/artifacts/{A}/{path.name}"
    r = httpx.head(url)
    assert r.status_code == 200 and r.headers["etag"] == f'"{digest}"'
    assert int(r.headers["content-length"]) == path.stat().st_size and r.headers["accept-ranges"] == "bytes"
    assert httpx.get(url, headers={"if-none-match": f'"{digest}"'}).status_code == 304


def test_range_download_resumed_mid_file_equals_the_original(store_gw, gguf):
    path, digest = gguf
    url, size = f"{store_gw.url}/artifacts/{A}/{path.name}", path.stat().st_size
    cut = size // 2 + 12345
    first = httpx.get(url, headers={"range": f"bytes=0-{cut - 1}"})
    assert first.status_code == 206 and first.headers["content-range"] == f"bytes 0-{cut - 1}/{size}"
    assert len(first.content) == cut
    rest = httpx.get(url, headers={"range": f"bytes={cut}-", "if-range": first.headers["etag"]})
    assert rest.status_code == 206 and rest.headers["content-range"] == f"bytes {cut}-{size - 1}/{size}"
    assert hashlib.sha256(first.content + rest.content).hexdigest() == digest
    tail = httpx.get(url, headers={"range": "bytes=-100"})
    assert tail.status_code == 206 and tail.content == path.read_bytes()[-100:]
    stale = httpx.get(url, headers={"range": f"bytes={cut}-", "if-range": '"0000"'})
    assert stale.status_code == 200 and len(stale.content) == size  # changed file: the whole thing
    assert httpx.get(url, headers={"range": f"bytes={size}-"}).status_code == 416


@pytest.mark.parametrize("path", ["/artifacts/gw-gguf-a/../../keys/signing.key", "/artifacts/..%2Fkeys/signing.key",
                                  "/artifacts/gw-gguf-a/%2e%2e/%2e%2e/keys/signing.key", "/artifacts/keys/signing.key",
                                  "/artifacts/gw-gguf-a/nothere.bin", "/artifacts/gw-gguf-a//etc/passwd"])
def test_nothing_outside_the_store_is_reachable(store_gw, path):
    r = httpx.get(store_gw.url + path)
    assert r.status_code == 404, (path, r.status_code)
    assert b"PRIVATE KEY" not in r.content


def test_unverified_artifacts_are_not_offered(store_gw, ws, gguf_artifacts):
    bad = ws.artifacts / "gw-gguf-unsigned-copy"
    shutil.copytree(ws.artifacts / gguf_artifacts[1], bad, copy_function=os.link)
    (bad / "model.sig").unlink()
    try:
        names = [a["name"] for a in httpx.get(store_gw.url + "/artifacts").json()["data"]]
        assert bad.name not in names and A in names
        r = httpx.get(f"{store_gw.url}/artifacts/{bad.name}/SHA256SUMS")
        assert r.status_code == 409 and r.json()["error"]["code"] == "artifact_unverified"
    finally:
        shutil.rmtree(bad)


def test_pull_resumes_and_verifies(store_gw, ws, gguf, tmp_path):
    from serve.pull import pull

    path, digest = gguf
    out = tmp_path / "pulled"
    partial = tmp_path / "pulled.partial"
    partial.mkdir()
    (partial / path.name).write_bytes(path.read_bytes()[: path.stat().st_size // 3])  # an interrupted pull
    said = []
    got = pull(f"{store_gw.url}/artifacts/{A}", out, [ws.keys / "signing.pub"], progress=said.append)
    assert got == out and not partial.exists()
    assert hashlib.sha256((out / path.name).read_bytes()).hexdigest() == digest
    assert any("resuming at" in s for s in said)


def test_pull_refuses_without_a_trusted_key_or_with_the_wrong_one(store_gw, tmp_path):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    from serve.pull import pull

    with pytest.raises(VerificationError):
        pull(f"{store_gw.url}/artifacts/{A}", tmp_path / "a", [])
    other = tmp_path / "other.pub"
    other.write_bytes(ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    with pytest.raises(VerificationError) as e:
        pull(f"{store_gw.url}/artifacts/{A}", tmp_path / "b", [other])
    assert e.value.signature_error
    assert not (tmp_path / "b").exists()


def test_pull_cli_prints_llama_cpp_and_ollama_instructions(store_gw, ws, tmp_path, capsys):
    from appliance.cli import main

    out = tmp_path / "cli-pull"
    rc = main(["pull", f"{store_gw.url}/artifacts/{A}", "--out", str(out), "--public-key",
               str(ws.keys / "signing.pub"), "--home", str(ws.home)])
    text = capsys.readouterr().out
    assert rc == 0 and "verified" in text
    assert "llama-server -m" in text and "ollama create" in text and "Modelfile" in text
