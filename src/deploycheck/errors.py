"""Exceptions with messages that say which model, which format and what was expected."""

from __future__ import annotations


class DeployCheckError(Exception):
    """Base class of every error deploycheck raises on purpose."""


class SpecError(DeployCheckError, ValueError):
    """A `ModelSpec` (or data attached to it) is invalid."""


class ExportError(DeployCheckError):
    """A format failed to export a model; the message names the model, the format and the exporter's error."""


class FormatUnavailable(DeployCheckError):
    """A format cannot handle this model or environment (a stated reason, reported as a skip, not a failure)."""


class ArtifactError(DeployCheckError):
    """An artifact on disk is missing, altered, truncated or otherwise unusable."""


class InputError(DeployCheckError, ValueError):
    """Inputs given to `Artifact.run` do not match the artifact's input specification."""


class BaselineError(DeployCheckError):
    """A stored baseline (or a report given to `deploycheck compare`) is unreadable, or rules are malformed."""


def one_line(exc: BaseException, limit: int | None = None) -> str:
    """`Type: first line of the message` (cut at `limit` characters of message): another library's error quoted
    in one of ours, where its whole traceback would bury the point."""
    first = (str(exc).strip().splitlines() or [""])[0]
    return f"{type(exc).__name__}: {first[:limit]}"
