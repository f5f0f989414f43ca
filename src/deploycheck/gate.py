"""The gate's logic, free of pytest: exporting each model x format once per run (`ExportSession`) and the checks
behind the `deploycheck` fixture (`Gate`), which raise `AssertionError` with a table and record what they
measured through a callback (the plugin forwards it on the test report, so it survives pytest-xdist).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from filelock import FileLock

from deploycheck.errors import DeployCheckError
from deploycheck.formats import export, get_format
from deploycheck.parity import check_parity

if TYPE_CHECKING:
    from deploycheck.artifact import Artifact
    from deploycheck.parity import ParityReport
    from deploycheck.spec import ModelSpec

Record = Callable[[dict[str, Any]], None]


class ExportSession:
    """Exports on demand into `artifacts_dir/<model>/<format>`, once per process and, through a file lock in
    `lock_dir` and the on-disk export cache, once per run across pytest-xdist workers."""

    def __init__(self, artifacts_dir: Path, lock_dir: Path) -> None:
        self.artifacts_dir = Path(artifacts_dir)
        self.lock_dir = Path(lock_dir)
        self._done: dict[tuple[str, str], Artifact | DeployCheckError] = {}

    def artifact(self, spec: ModelSpec, format_name: str) -> Artifact:
        """The artifact of one model x format; a failed export raises the same error for each test that asks."""
        key = (spec.name, format_name)
        if key not in self._done:
            self._done[key] = self._export(spec, format_name)
        outcome = self._done[key]
        if isinstance(outcome, DeployCheckError):
            raise outcome
        return outcome

    def _export(self, spec: ModelSpec, format_name: str) -> Artifact | DeployCheckError:
        fmt = get_format(format_name)
        try:
            base = self.artifact(spec, fmt.base_format) if fmt.base_format else None
            self.lock_dir.mkdir(parents=True, exist_ok=True)
            with FileLock(str(self.lock_dir / f"deploycheck-export-{spec.name}-{format_name}.lock")):
                return export(spec, format_name, self.artifacts_dir / spec.name / format_name, base=base)
        except DeployCheckError as exc:
            return exc


class Gate:
    """The checks a test calls on an artifact (the `deploycheck` fixture is one of these)."""

    def __init__(self, record: Record | None = None) -> None:
        self._record = record or (lambda payload: None)

    def record(self, artifact: Artifact, **measured: Any) -> None:
        self._record({"model": artifact.model_name, "format": artifact.format, "size_bytes": artifact.size_bytes,
                      **measured})

    def check_parity(self, artifact: Artifact, batch_sizes: Sequence[int] | None = None,
                     tolerance: Any = None) -> ParityReport:
        report = check_parity(artifact, batch_sizes=batch_sizes, tolerance=tolerance)
        self.record(artifact, parity={"max_abs": report.max_abs, "top1_agreement": report.min_top1_agreement,
                                      "passed": report.passed})
        return report

    def assert_parity(self, artifact: Artifact, batch_sizes: Sequence[int] | None = None,
                      tolerance: Any = None) -> ParityReport:
        """Fail with the per-output table unless every output at every batch size is within tolerance."""
        __tracebackhide__ = True
        report = self.check_parity(artifact, batch_sizes, tolerance)
        if not report.passed:
            raise AssertionError(
                f"{report}\n\nTo accept a larger error for this format, set ModelSpec(tolerances="
                f"{{{artifact.format!r}: Tolerance(...)}}) (per output: {{output_name: Tolerance(...)}}).")
        return report
