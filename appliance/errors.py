"""Typed errors for user-facing failures.

Every error a user can cause derives from `ApplianceError` and carries what went wrong plus what to
do next (`hint`). The CLI prints both and exits non-zero, without a traceback. Code never matches on
message strings: catch the type.
"""

from __future__ import annotations


class ApplianceError(Exception):
    """A failure the user can act on: `message` says what is wrong, `hint` what to do next."""

    exit_code = 2

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message}\n  -> {self.hint}"


class ConfigError(ApplianceError):
    """A config file or override is invalid; `problems` lists every problem found, not just the first."""

    def __init__(self, problems: list[str], source: str = "config", hint: str | None = None):
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"{source}: {len(self.problems)} problem(s):\n{lines}", hint)


class DatasetError(ApplianceError):
    """Rows of a dataset are invalid; `problems` holds (file, line, reason) for each bad row."""

    def __init__(self, problems: list[tuple[str, int, str]], hint: str | None = None):
        self.problems = list(problems)
        shown = "\n".join(f"  {f}:{n}: {why}" for f, n, why in self.problems[:50])
        more = f"\n  ... and {len(self.problems) - 50} more" if len(self.problems) > 50 else ""
        super().__init__(
            f"{len(self.problems)} invalid row(s):\n{shown}{more}",
            hint or "fix these rows, or pass --skip-invalid to drop them (their count is reported)",
        )


class ModelNotFoundError(ApplianceError):
    """A model reference could not be resolved to a local HF folder."""


class RunNotFoundError(ApplianceError):
    """A run (or its adapter / merged model) does not exist in the workspace."""


class ArtifactError(ApplianceError):
    """An artifact is missing, incomplete or cannot be produced."""


class VerificationError(ApplianceError):
    """An artifact failed verification: bad or missing signature, or files that do not match.

    `missing`, `extra` and `mismatched` name the files; `signature_error` says why the signature failed.
    """

    def __init__(
        self,
        message: str,
        *,
        missing: list[str] | None = None,
        extra: list[str] | None = None,
        mismatched: list[str] | None = None,
        signature_error: str | None = None,
        hint: str | None = None,
    ):
        self.missing = sorted(missing or [])
        self.extra = sorted(extra or [])
        self.mismatched = sorted(mismatched or [])
        self.signature_error = signature_error
        super().__init__(message, hint)


class EngineError(ApplianceError):
    """An inference engine failed to start, crashed, or did not answer."""


class DeployError(ApplianceError):
    """A deploy was refused or failed; the previous model keeps serving."""


class MissingDependencyError(ApplianceError):
    """A tool or package the command needs is not installed in this environment."""
