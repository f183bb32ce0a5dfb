"""Check an artifact before trusting it: the signature is valid for a trusted key, and every file
matches both the signed manifest and SHA256SUMS.

    report = verify_artifact(Path("workspace/artifacts/run-gguf-q4_k_m"), trusted_keys(ws))
    report.signer, report.files     # raises VerificationError(missing=, extra=, mismatched=, signature_error=)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from appliance.errors import VerificationError
from export.manifest import SIGNATURE, SUMS, digests, list_payload, read_sha256sums
from export.signing import SignatureInvalid, fingerprint, signed_digests


@dataclass
class VerifyReport:
    path: Path
    signer: str | None  # "<key file name> (sha256:<fingerprint prefix>)"
    files: int  # files checked (everything except model.sig)
    ok: bool
    signer_fingerprint: str | None = None
    missing: list[str] = field(default_factory=list)
    extra: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)
    signature_error: str | None = None


def check_artifact(path: Path, trusted: list[Path]) -> VerifyReport:
    """Everything verify_artifact checks, as a report (never raises for a bad artifact)."""
    path = Path(path)
    if not path.is_dir():
        return VerifyReport(path, None, 0, False, signature_error=f"{path} is not a directory")
    on_disk = list_payload(path, skip_symlinks=True)
    links = sorted(p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_symlink())
    actual = digests(path, on_disk)
    if (path / SUMS).is_file():
        actual[SUMS] = digests(path, [SUMS])[SUMS]
    missing: set[str] = set()
    extra: set[str] = set(links)  # never followed: a link could point anywhere
    mismatched: set[str] = set()

    # 1. SHA256SUMS: what coreutils would say.
    if (path / SUMS).is_file():
        try:
            sums = read_sha256sums(path)
        except ValueError as e:
            sums = {}
            mismatched.add(SUMS)
            sig_note = str(e)
        else:
            sig_note = None
        _diff(sums, {n: d for n, d in actual.items() if n != SUMS}, missing, extra, mismatched)
    else:
        missing.add(SUMS)
        sig_note = None

    # 2. The signature: the first trusted key that verifies it gives the signed file list.
    signer = signer_fp = None
    errors = []
    if not (path / SIGNATURE).is_file():
        errors.append(f"{SIGNATURE} is missing (unsigned artifact)")
    elif not trusted:
        errors.append("no trusted public key to check the signature with")
    else:
        for key in trusted:
            try:
                signed = signed_digests(path, key)
            except SignatureInvalid as e:
                errors.append(str(e))
                continue
            signer_fp = fingerprint(key)
            signer = f"{Path(key).name} (sha256:{signer_fp[:16]})"
            _diff(signed, actual, missing, extra, mismatched)
            errors = []
            break
    signature_error = ("; ".join(errors) if errors else None)
    if sig_note:
        signature_error = f"{signature_error}; {sig_note}" if signature_error else sig_note
    ok = signer is not None and not (missing or extra or mismatched or signature_error)
    return VerifyReport(path, signer, len(actual), ok, signer_fp, sorted(missing), sorted(extra),
                        sorted(mismatched), signature_error)


def verify_artifact(path: Path, trusted: list[Path]) -> VerifyReport:
    """Return the report when the artifact is intact and signed by a trusted key; else raise
    VerificationError listing missing, extra and mismatched files and the signature problem."""
    report = check_artifact(path, trusted)
    if report.ok:
        return report
    raise VerificationError(
        f"{report.path} failed verification:\n{describe_failure(report)}",
        missing=report.missing, extra=report.extra, mismatched=report.mismatched,
        signature_error=report.signature_error,
        hint=("the artifact was changed after signing or signed by an untrusted key: re-export it, or trust "
              "the signer with `appliance keys --trust signer.pub`"),
    )


def describe_failure(report: VerifyReport) -> str:
    lines = []
    if report.signature_error:
        lines.append(f"  signature: {report.signature_error}")
    for label, names in (("missing files", report.missing), ("extra files", report.extra),
                         ("mismatched files", report.mismatched)):
        if names:
            lines.append(f"  {label}: {', '.join(names)}")
    return "\n".join(lines) or "  unknown failure"


def _diff(expected: dict[str, str], actual: dict[str, str], missing: set, extra: set, mismatched: set) -> None:
    missing.update(n for n in expected if n not in actual)
    extra.update(n for n in actual if n not in expected)
    mismatched.update(n for n in expected if n in actual and expected[n] != actual[n])
