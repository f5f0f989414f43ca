"""The accepted-artifact store: a copy of every artifact whose figures became a baseline, found again by content.

Timing the accepted model and the candidate interleaved in one process is the only latency comparison that
survives a busy shared machine (figures stored by another process on another day cannot say whether 8% is the
model or the machine). So every baseline written with latency figures names the sha256 of its artifact's sidecar
(`deploycheck.json`, which itself lists every file's sha256), and the artifact is copied into this store under
that digest. Later runs load it from there and time it side by side with the new artifact.

The store lives outside git (artifacts of real models are large): by default under the pytest cache, or in any
directory a CI cache step persists (`--deploycheck-accepted DIR`). Entries are written once, atomically, and
never changed; a missing entry only means the comparison falls back to the stored figures.
"""

from __future__ import annotations

import hashlib
import shutil
import uuid
from pathlib import Path

from deploycheck.artifact import METADATA_FILE


def artifact_digest(directory: Path, sidecar: str = METADATA_FILE) -> str:
    """The content address of an artifact directory: the sha256 of its sidecar, which lists every file's hash."""
    return hashlib.sha256((Path(directory) / sidecar).read_bytes()).hexdigest()


class AcceptedStore:
    """`root/<digest>/`: accepted artifacts by content, addressed by their `sidecar` (a single-pass artifact's
    `deploycheck.json`; a generative artifact has its own sidecar, and shares the store)."""

    def __init__(self, root: Path, sidecar: str = METADATA_FILE) -> None:
        self.root = Path(root)
        self.sidecar = sidecar

    def of_sidecar(self, sidecar: str) -> AcceptedStore:
        """The same store, addressing artifacts by another sidecar."""
        return AcceptedStore(self.root, sidecar)

    def path(self, digest: str) -> Path:
        return self.root / digest

    def get(self, digest: str) -> Path | None:
        """The stored artifact with this digest, None when this store does not have it (or it was altered)."""
        path = self.path(digest)
        if not (path / self.sidecar).is_file() or artifact_digest(path, self.sidecar) != digest:
            return None
        return path

    def put(self, directory: Path) -> str:
        """Copy an artifact directory into the store (once: an entry with the same digest is already the same
        content) and return its digest. The copy is staged beside its place and renamed in one step."""
        digest = artifact_digest(directory, self.sidecar)
        if self.get(digest) is not None:
            return digest
        self.root.mkdir(parents=True, exist_ok=True)
        staging = self.root / f".{digest}.{uuid.uuid4().hex}.staging"
        shutil.copytree(directory, staging)
        try:
            staging.rename(self.path(digest))
        except OSError:  # another process stored the same content first
            shutil.rmtree(staging, ignore_errors=True)
        return digest
