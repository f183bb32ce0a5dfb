"""The workspace: where models, runs, merged models, artifacts and keys live.

    models/<name>/        base models materialised locally (HF folders)
    runs/<run>/           run.yaml, run.json, checkpoints/, adapter/, metrics.jsonl, tensorboard/, loss.png
    merged/<run>/         merged HF model
    artifacts/<name>/     exported artifacts (files + appliance.json + SHA256SUMS + model.sig)
    keys/                 signing.key (0600), signing.pub
    trust/*.pub           public keys accepted for deploy

A directory that exists under its final name is complete: everything is written under a temporary
sibling name first (`atomic_dir`) and renamed at the end.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from appliance.errors import RunNotFoundError

DEFAULT_HOME = "workspace"
TMP_PREFIX = ".tmp-"


def default_home() -> Path:
    return Path(os.environ.get("APPLIANCE_HOME") or DEFAULT_HOME).expanduser().resolve()


@dataclass(frozen=True)
class Workspace:
    home: Path

    @classmethod
    def open(cls, home: str | os.PathLike | None = None) -> "Workspace":
        ws = cls(Path(home).expanduser().resolve() if home else default_home())
        for d in (ws.models, ws.runs, ws.merged, ws.artifacts, ws.keys, ws.trust):
            d.mkdir(parents=True, exist_ok=True)
        return ws

    @property
    def models(self) -> Path:
        return self.home / "models"

    @property
    def runs(self) -> Path:
        return self.home / "runs"

    @property
    def merged(self) -> Path:
        return self.home / "merged"

    @property
    def artifacts(self) -> Path:
        return self.home / "artifacts"

    @property
    def keys(self) -> Path:
        return self.home / "keys"

    @property
    def trust(self) -> Path:
        return self.home / "trust"

    def run_dir(self, run: str | None) -> Path:
        """The directory of run `run`, or of the latest complete run when `run` is None/"latest"."""
        if run in (None, "", "latest"):
            done = [p for p in _complete_children(self.runs) if (p / "adapter").is_dir()]
            if not done:
                raise RunNotFoundError(
                    f"no finished training run in {self.runs}",
                    "train one first: `appliance train` (or pass --run NAME)",
                )
            return max(done, key=lambda p: (p / "run.json").stat().st_mtime if (p / "run.json").exists() else 0)
        path = self.runs / run
        if not path.is_dir():
            have = ", ".join(p.name for p in _complete_children(self.runs)) or "none"
            raise RunNotFoundError(f"run '{run}' not found in {self.runs} (runs: {have})",
                                   "list runs with `ls workspace/runs` or train one with `appliance train`")
        return path

    def list_runs(self) -> list[str]:
        return sorted(p.name for p in _complete_children(self.runs))

    def list_artifacts(self) -> list[str]:
        return sorted(p.name for p in _complete_children(self.artifacts))


def _complete_children(parent: Path) -> list[Path]:
    if not parent.is_dir():
        return []
    return [p for p in parent.iterdir() if p.is_dir() and not p.name.startswith(TMP_PREFIX)]


@contextlib.contextmanager
def atomic_dir(final: Path, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling directory; on success rename it to `final`, on any error remove it.

    A crash or Ctrl-C therefore never leaves `final` looking complete. With `overwrite`, an existing
    `final` is replaced only after the new one is fully written.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    if final.exists() and not overwrite:
        raise FileExistsError(final)
    tmp = final.parent / f"{TMP_PREFIX}{final.name}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
        if final.exists():
            old = final.parent / f"{TMP_PREFIX}{final.name}-old-{uuid.uuid4().hex[:8]}"
            final.rename(old)
            tmp.rename(final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_atomic(path: Path, data: str | bytes, mode: int = 0o666) -> None:
    """Write a file via a temporary name + rename, so readers never see half of it.

    `mode` is the permission the file is created with (before the umask), e.g. 0o600 for secrets:
    the content is never readable by others, not even for a moment.
    """
    path = Path(path)
    tmp = path.with_name(f"{TMP_PREFIX}{path.name}-{uuid.uuid4().hex[:8]}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb" if isinstance(data, bytes) else "w") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
