"""A generative artifact's directory: its graphs and a sidecar (`deploycheck-generative.json`) recording the format,
the model, the number of layers and every file's sha256, checked before anything is loaded; and the trust rule of
the single-pass artifacts for formats whose loading runs code from the artifact (`.pt2` archives unpickle): a
signature, `trust_code=True`, or this process having written it."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from deploycheck.artifact import file_digest, package_versions
from deploycheck.errors import ArtifactError, ExportError
from deploycheck.jsonio import write_json
from deploycheck.signing import verify_artifact

SIDECAR = "deploycheck-generative.json"
_WRITTEN_HERE: set[str] = set()  # sidecar digests this process wrote: its own exports load without a signature


def check_replaceable(out_dir: Path, label: str) -> None:
    """An export replaces `out_dir` whole: refuse unless it is absent, empty or a generative artifact (never
    delete what deploycheck did not write)."""
    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or (any(out_dir.iterdir()) and not (out_dir / SIDECAR).is_file())):
        raise ExportError(f"{label}: refusing to export into {out_dir}: it is not empty and not a generative "
                          "artifact, and an export replaces its directory whole; give an empty or new directory")


def write_sidecar(out_dir: Path, files: Sequence[str], packages: Sequence[str], details: dict[str, Any]) -> None:
    recorded = {name: {"sha256": file_digest(out_dir / name), "size": (out_dir / name).stat().st_size}
                for name in files}
    write_json(out_dir / SIDECAR, {**details, "files": recorded, "versions": package_versions(packages),
                                   "size_bytes": sum(f["size"] for f in recorded.values())})
    _WRITTEN_HERE.add(file_digest(out_dir / SIDECAR))


def stamp_cache_key(out_dir: Path, key: str) -> None:
    """Record in a sidecar this process just wrote the digest of everything its export depended on."""
    details = json.loads((out_dir / SIDECAR).read_text())
    write_json(out_dir / SIDECAR, {**details, "cache_key": key})
    _WRITTEN_HERE.add(file_digest(out_dir / SIDECAR))


def reusable(out_dir: Path, key: str) -> bool:
    """Whether `out_dir` holds an intact export made with the same `key` (its files verified against their hashes):
    what it would export again. Such an export is this process's own from then on, as a reused single-pass export
    is (`deploycheck.exporting`)."""
    if not (Path(out_dir) / SIDECAR).is_file():
        return False
    try:
        if read_sidecar(out_dir).get("cache_key") != key:
            return False
    except (ArtifactError, KeyError, TypeError):
        return False
    _WRITTEN_HERE.add(file_digest(Path(out_dir) / SIDECAR))
    return True


def read_sidecar(path: Path) -> dict[str, Any]:
    """A generative artifact's sidecar, with each file verified against its recorded hash."""
    sidecar = Path(path) / SIDECAR
    try:
        details: dict[str, Any] = json.loads(sidecar.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"{path}: not a generative artifact ({SIDECAR}: {exc})") from exc
    for name, recorded in details["files"].items():
        if not (Path(path) / name).is_file() or file_digest(Path(path) / name) != recorded["sha256"]:
            raise ArtifactError(f"{path}/{name}: missing or altered since export (sha256 differs); not loaded")
    return details


def check_trusted(path: Path, label: str, executes_code: str, trust_code: bool, verify_key: Path | None) -> None:
    """Refuse to load an artifact whose loading runs its own code unless it verifies against `verify_key`, the
    caller trusts it (`trust_code`), or this process wrote it."""
    if verify_key is not None:
        verify_artifact(path, verify_key, label)
    elif not trust_code and file_digest(Path(path) / SIDECAR) not in _WRITTEN_HERE:
        raise ArtifactError(f"{label}: refusing to load {path}: {executes_code}. Sign it and pass verify_key=, or "
                            "say you trust its source with trust_code=True")
