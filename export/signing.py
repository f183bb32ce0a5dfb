"""Signing keys and OpenSSF model-signing (OMS v1.0) signatures over artifact directories.

    pub_key, = ensure_keypair(ws)[1:]         # keys/signing.key (EC P-256, 0600) + keys/signing.pub
    sign_dir(artifact_dir, ws.keys / "signing.key")  -> artifact_dir/model.sig
    signed_digests(artifact_dir, pub)         -> {relative file: sha256 hex} the signature vouches for

The signature is a Sigstore bundle made by the `model_signing` library with an EC key; it covers
every file of the directory except `model.sig` itself, so anyone can check it with the upstream CLI:

    model_signing verify key DIR --signature DIR/model.sig --public_key signing.pub
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from appliance.errors import ArtifactError, MissingDependencyError
from appliance.workspace import Workspace, write_atomic

SIGNATURE = "model.sig"
PRIVATE_KEY = "signing.key"
PUBLIC_KEY = "signing.pub"


class SignatureInvalid(Exception):
    """The signature does not verify with a given key (wrong key, corrupt or unreadable bundle)."""


def ensure_keypair(ws: Workspace) -> tuple[Path, Path]:
    """The workspace key pair (private, public); an EC P-256 pair is created on first use."""
    key, pub = ws.keys / PRIVATE_KEY, ws.keys / PUBLIC_KEY
    if key.exists():
        if not pub.exists():  # recover the public half from the private key
            write_atomic(pub, _public_pem(_load_private(key)))
        return key, pub
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    private = ec.generate_private_key(ec.SECP256R1())
    pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    ws.keys.mkdir(parents=True, exist_ok=True)
    write_atomic(key, pem, mode=0o600)
    write_atomic(pub, _public_pem(private))
    return key, pub


def trusted_keys(ws: Workspace) -> list[Path]:
    """Public keys accepted by verify and deploy: keys/signing.pub (if any) and trust/*.pub."""
    keys = [ws.keys / PUBLIC_KEY] if (ws.keys / PUBLIC_KEY).exists() else []
    return keys + sorted(p for p in ws.trust.glob("*.pub") if p.is_file())


def fingerprint(public_key: Path) -> str:
    """sha256 of the key's PEM (SubjectPublicKeyInfo): the hint model_signing stores in the bundle."""
    from cryptography.hazmat.primitives import serialization

    key = load_public_key(public_key)
    return hashlib.sha256(key.public_bytes(serialization.Encoding.PEM,
                                           serialization.PublicFormat.SubjectPublicKeyInfo)).hexdigest()


def load_public_key(path: Path):
    """An EC public key from a PEM file; ArtifactError saying what is wrong otherwise."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"public key {path} not found", "export one with `appliance keys --export FILE`")
    try:
        key = serialization.load_pem_public_key(path.read_bytes())
    except ValueError as e:
        raise ArtifactError(f"{path} is not a PEM public key ({e})",
                            "pass the signing.pub of the signer (`appliance keys --export FILE`)") from None
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise ArtifactError(f"{path} is not an elliptic-curve key", "model signing uses EC P-256/384/521 keys")
    return key


def trust_key(ws: Workspace, pem: Path) -> Path:
    """Copy a public key into trust/ (named by fingerprint); returns the trusted copy."""
    fp = fingerprint(Path(pem))
    dest = ws.trust / f"{fp[:16]}.pub"
    write_atomic(dest, Path(pem).read_bytes())
    return dest


def sign_dir(path: Path, private_key: Path) -> Path:
    """Write path/model.sig: an OMS bundle over every file in `path` except model.sig."""
    signing = _model_signing().signing

    path, sig = Path(path), Path(path) / SIGNATURE
    sig.unlink(missing_ok=True)
    (signing.Config()
     .use_elliptic_key_signer(private_key=Path(private_key))
     .set_hashing_config(_hashing_config())
     .sign(path, sig))
    return sig


def signed_digests(path: Path, public_key: Path) -> dict[str, str]:
    """Check model.sig against `public_key` and return the files it signs: {name: sha256 hex}.

    Raises SignatureInvalid when the bundle is unreadable or not made by this key. File contents are
    NOT compared here (verify.py does that, so it can report every missing/extra/mismatched file).
    """
    # model_signing's public verify() merges the crypto check with the file comparison and reports
    # the diff as text; its EC verifier (pinned model-signing==1.1.1) gives the signed manifest itself.
    _model_signing()
    from model_signing._signing import sign_ec_key, sign_sigstore_pb

    sig = Path(path) / SIGNATURE
    try:
        bundle = sign_sigstore_pb.Signature.read(sig)
    except Exception as e:  # noqa: BLE001 - any parse failure means "not a valid bundle"
        raise SignatureInvalid(f"{SIGNATURE} is not a readable Sigstore bundle ({type(e).__name__}: {e})") from None
    try:
        manifest = sign_ec_key.Verifier(Path(public_key)).verify(bundle)
    except Exception as e:  # noqa: BLE001 - bad signature, key mismatch, bad payload
        raise SignatureInvalid(f"not signed by {Path(public_key).name} ({e})") from None
    out: dict[str, str] = {}
    for rd in manifest.resource_descriptors():
        if rd.digest.algorithm != "sha256":
            raise SignatureInvalid(f"{SIGNATURE} uses {rd.digest.algorithm}; expected per-file sha256")
        out[str(rd.identifier)] = rd.digest.digest_value.hex()
    return out


def _model_signing():
    """The model_signing package; 1.1.1 imports pyOpenSSL without declaring it as a dependency."""
    try:
        import model_signing
    except ModuleNotFoundError as e:
        raise MissingDependencyError(
            f"signing needs the package '{e.name}' (model-signing 1.1.1 imports it but does not declare it)",
            "run `bash bootstrap.sh`, or `pip install model-signing==1.1.1 pyopenssl`") from None
    return model_signing


def _hashing_config():
    hashing = _model_signing().hashing

    # Sign everything, git-looking files included: nothing in an artifact may escape the signature.
    return (hashing.Config()
            .use_file_serialization(hashing_algorithm="sha256")
            .set_ignored_paths(paths=[SIGNATURE], ignore_git_paths=False))


def _load_private(path: Path):
    from cryptography.hazmat.primitives import serialization

    return serialization.load_pem_private_key(path.read_bytes(), None)


def _public_pem(private) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return private.public_key().public_bytes(serialization.Encoding.PEM,
                                             serialization.PublicFormat.SubjectPublicKeyInfo)


__all__ = ["SIGNATURE", "SignatureInvalid", "ensure_keypair", "trusted_keys", "fingerprint", "load_public_key",
           "trust_key", "sign_dir", "signed_digests"]
