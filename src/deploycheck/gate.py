"""The gate's logic, free of pytest: exporting each model x format once per run (`ExportSession`) and the checks
behind the `deploycheck` fixture (`Gate`), which raise `AssertionError` with a table and record what they
measured through a callback (the plugin forwards it on the test report, so it survives pytest-xdist).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from filelock import FileLock

from deploycheck.accuracy import check_accuracy, reference_artifact
from deploycheck.errors import DeployCheckError
from deploycheck.formats import export, get_format
from deploycheck.latency import BenchResult, SpeedRatio, bench, compare_speed
from deploycheck.parity import check_parity

if TYPE_CHECKING:
    from deploycheck.accuracy import AccuracyReport
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
    """The checks a test calls on an artifact (the `deploycheck` fixture is one of these).

    `bench_lock` (a file path) serialises timing across pytest-xdist workers, so two benchmarks never share the
    CPU; `skip_bench` is called instead of timing when benchmarks are switched off (the plugin passes
    `pytest.skip`).
    """

    def __init__(self, record: Record | None = None, bench_time_s: float = 1.0, bench_lock: Path | None = None,
                 skip_bench: Callable[[str], Any] | None = None) -> None:
        self._record = record or (lambda payload: None)
        self.bench_time_s = bench_time_s
        self.bench_lock = bench_lock
        self.skip_bench = skip_bench

    def record(self, artifact: Artifact, **measured: Any) -> None:
        extra = {}
        if artifact.spec is not None:
            extra["parameters"] = sum(p.numel() for p in artifact.spec.model.parameters())
        self._record({"model": artifact.model_name, "format": artifact.format, "size_bytes": artifact.size_bytes,
                      **extra, **measured})

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

    def check_accuracy(self, artifact: Artifact) -> AccuracyReport:
        report = check_accuracy(artifact)
        self.record(artifact, accuracy=report.to_dict())
        return report

    def assert_accuracy(self, artifact: Artifact) -> AccuracyReport:
        """Fail with reference and obtained accuracy, drop, budget, worst classes and, for a quantized format,
        the layers the error comes from, unless the drop is within the spec's budget."""
        __tracebackhide__ = True
        report = self.check_accuracy(artifact)
        if not report.passed:
            raise AssertionError(
                f"{report}\n\nTo accept this drop, raise ModelSpec(max_accuracy_drop=...) or set "
                f"accuracy_overrides={{{artifact.format!r}: {{'max_accuracy_drop': ...}}}}; to find an int8 "
                "configuration within budget, run `deploycheck quantize MODULE:FUNC --max-accuracy-drop ...`.")
        return report

    def bench(self, artifact: Artifact, batch_sizes: Sequence[int] = (1, 8, 32), **options: Any) -> BenchResult:
        """Latency and throughput per batch size (one benchmark at a time across xdist workers)."""
        if self.skip_bench is not None:
            self.skip_bench("benchmarks are off (--deploycheck-no-bench)")
        options.setdefault("max_time_s", self.bench_time_s)
        with self._bench_lock():
            result = bench(artifact, batch_sizes, **options)
        first = result.stats[min(result.stats)]
        self.record(artifact, speed={"p50_ms": first.p50_ms, "p99_ms": first.p99_ms, "batch_size": first.batch_size,
                                     "throughput_per_s": max(s.throughput_per_s for s in result.stats.values())})
        return result

    def check_speedup(self, artifact: Artifact, against: Artifact | None = None) -> SpeedRatio:
        """Speedup of the artifact over `against` (default: the eager reference), measured side by side."""
        if self.skip_bench is not None:
            self.skip_bench("benchmarks are off (--deploycheck-no-bench)")
        if artifact.spec is None:
            raise DeployCheckError(f"{artifact!r} has no spec; speedups need the eager reference")
        reference = against or reference_artifact(artifact.spec)
        with self._bench_lock():
            ratio = compare_speed(reference, artifact, max_time_s=self.bench_time_s)
        key = "speedup_vs_eager" if against is None else f"speedup_vs_{against.format}"
        self.record(artifact, speed={key: ratio.ratio, f"{key}_interval": [ratio.low, ratio.high]})
        return ratio

    def assert_speedup(self, artifact: Artifact, min_speedup: float | None = None,
                       against: Artifact | None = None) -> SpeedRatio:
        """Fail unless the artifact is at least `min_speedup` times faster than `against` (default: eager), judged
        on the lower end of the interval. The default minimum comes from `ModelSpec.min_speedup[format]`."""
        __tracebackhide__ = True
        ratio = self.check_speedup(artifact, against)
        spec_minimum = artifact.spec.min_speedup.get(artifact.format) if artifact.spec else None
        minimum = min_speedup if min_speedup is not None else spec_minimum
        if minimum is not None and ratio.low < minimum:
            raise AssertionError(f"{artifact.model_name}/{artifact.format} is not {minimum:.2f}x faster than "
                                 f"{ratio.a}: speedup {ratio.ratio:.3f} [{ratio.low:.3f}, {ratio.high:.3f}] "
                                 f"({ratio.confidence:.0%} interval)\n{ratio}")
        return ratio

    @contextlib.contextmanager
    def _bench_lock(self) -> Iterator[None]:
        if self.bench_lock is None:
            yield
            return
        with FileLock(str(self.bench_lock)):
            yield
