"""The gate's logic, free of pytest: exporting each model x format once per run (`ExportSession`) and the checks
behind the `deploycheck` fixture (`Gate`), which raise `AssertionError` with a table and record what they
measured through a callback (the plugin forwards it on the test report, so it survives pytest-xdist).
"""

from __future__ import annotations

import contextlib
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from filelock import FileLock

from deploycheck.accepted import AcceptedStore
from deploycheck.accuracy import check_accuracy, reference_artifact
from deploycheck.artifact import Artifact
from deploycheck.baseline.compare import (
    Comparison,
    Finding,
    compare_records,
    confirmed,
    latency_side_by_side,
    throughput_side_by_side,
)
from deploycheck.baseline.rules import Rules, resolve_rules
from deploycheck.baseline.store import BaselineStore, record_from_row
from deploycheck.compression import OriginalReport, check_against_original, compression_facts
from deploycheck.errors import DeployCheckError
from deploycheck.exporting import Progress, export, load_artifact, no_progress
from deploycheck.formats import get_format
from deploycheck.generation.check import GenerationCheck
from deploycheck.latency import BenchResult, SpeedRatio, bench, compare_speed, interleaved_times
from deploycheck.parity import check_parity
from deploycheck.rows import Row
from deploycheck.spec import original_spec

if TYPE_CHECKING:
    from deploycheck.accuracy import AccuracyReport
    from deploycheck.generation.gate import GenerationReport
    from deploycheck.generation.spec import GenerativeSpec
    from deploycheck.parity import ParityReport
    from deploycheck.spec import ModelSpec

RecordRow = Callable[[Row], None]
ORIGINAL_BUDGETS = ("max_accuracy_drop_vs_original", "min_agreement_vs_original", "min_speedup_vs_original",
                    "max_size_ratio_vs_original")


class BaselineCheck:
    """Holds a run to its stored baselines. `mode`: "compare" (a missing baseline fails), "update" (measure only;
    the plugin's controller rewrites the files at the end of the run), or "update-new" (compare where a baseline
    exists; the controller creates the missing ones). `rule_layers` are `(source, data)` pairs applied over the
    defaults before the spec's own `baseline_rules`.

    Latency is judged side by side whenever the accepted model can be had, first found wins: `against` (a
    directory of artifacts exported from another git revision, and its label), the artifact kept beside the
    baseline, the `accepted` store (by the digest the baseline names). Otherwise the stored figures are used.
    `strict_latency` fails an inconclusive latency verdict instead of warning."""

    def __init__(self, store: BaselineStore, mode: str = "compare",
                 rule_layers: Sequence[tuple[str, Mapping[str, Any] | None]] = (),
                 accepted: AcceptedStore | None = None, against: tuple[Path, str] | None = None,
                 strict_latency: bool = False) -> None:
        if mode not in ("compare", "update", "update-new"):
            raise ValueError(f"baseline mode {mode!r}: expected compare, update or update-new")
        self.store = store
        self.mode = mode
        self.rule_layers = list(rule_layers)
        self.accepted = accepted
        self.against = against
        self.strict_latency = strict_latency

    def accepted_artifact(self, model: str, format_name: str) -> tuple[Path, str] | None:
        """Where the accepted artifact of a model x format is, and how to name it; None when it cannot be had."""
        if self.against is not None:
            directory, label = self.against
            if (directory / model / format_name).is_dir():
                return directory / model / format_name, f"{label}'s artifact"
        kept = self.store.artifact_dir(model, format_name)
        if kept.is_dir():
            return kept, "the kept baseline artifact"
        record = self.store.read(model, format_name) if self.accepted is not None else None
        digest = record.get("accepted_artifact") if record else None
        if self.accepted is not None and isinstance(digest, str):
            found = self.accepted.get(digest)
            if found is not None:
                return found, "the accepted artifact"
        return None

    def rules(self, artifact: Artifact) -> Rules:
        spec_rules = artifact.spec.baseline_rules if artifact.spec is not None else None
        return resolve_rules(artifact.format, *self.rule_layers,
                             (f"ModelSpec {artifact.model_name!r} baseline_rules", spec_rules))

    def compare(self, artifact: Artifact, row: Row, sections: Sequence[str]) -> Comparison | None:
        """The comparison of the measured sections with the stored record; None when this run only records."""
        if self.mode == "update":
            return None
        old = self.store.read(artifact.model_name, artifact.format)
        path = self.store.path(artifact.model_name, artifact.format)
        if old is None:
            if self.mode == "update-new":
                return None
            raise AssertionError(f"no baseline for {artifact.model_name}/{artifact.format}: {path} does not exist; "
                                 "run with --deploycheck-update-new to record the missing baselines "
                                 "(or --deploycheck-update to rewrite all)")
        if self.mode == "update-new" and not all(s in old for s in sections):
            return None
        return compare_records(old, record_from_row(row, passed_only=False), self.rules(artifact), str(path),
                               sections)


class Gate:
    """The checks a test calls on an artifact (the `deploycheck` fixture is one of these).

    `bench_lock` (a file path) serialises timing across pytest-xdist workers, so two benchmarks never share the
    CPU; `budget_s`, when given, is the timing time of one model x format (benchmarks, speedups and side-by-side
    comparisons together): each timing gets an even share of what is left, at most `bench_time_s` (`spent`, the
    time used so far per model x format, is shared by the gates of one process);
    `skip_bench` is called instead of timing when benchmarks are switched off (the plugin passes
    `pytest.skip`), and `not_applicable` with the reason where a check does not apply to the model
    (`assert_original` on a model without an original: the plugin passes `pytest.skip`, so one test function
    serves a project that mixes models with and without one; without it, that is a `SpecError`); `baselines`,
    when given, holds every measurement to the stored baseline of its model x
    format, and the check that measured it fails with the rule table when it fell behind.
    """

    def __init__(self, record: RecordRow | None = None, bench_time_s: float = 1.0, bench_lock: Path | None = None,
                 skip_bench: Callable[[str], Any] | None = None, baselines: BaselineCheck | None = None,
                 exporter: Callable[[ModelSpec, str], Artifact] | None = None,
                 resolve: Callable[[str], ModelSpec] | None = None, budget_s: float | None = None,
                 clock: Callable[[], float] = time.perf_counter, progress: Progress = no_progress,
                 spent: dict[tuple[str, str], float] | None = None,
                 not_applicable: Callable[[str], Any] | None = None, generation: GenerationCheck | None = None) -> None:
        self._record = record or (lambda payload: None)
        self.generation = generation  # without one, a decoder's exports go to a new temporary directory
        self.not_applicable = not_applicable
        self.bench_time_s = bench_time_s
        self.bench_lock = bench_lock
        self.skip_bench = skip_bench
        self.baselines = baselines
        self.exporter = exporter
        self.resolve = resolve
        self.budget_s = budget_s
        self.clock = clock
        self.progress = progress
        self._facts: dict[int, dict[str, Any]] = {}
        self._spent = spent if spent is not None else {}  # shared by the Gates of one run (one per test)

    def _allowance(self, artifact: Artifact, timings: int) -> float:
        """Seconds for one of `timings` timings still to come for this artifact: `bench_time_s`, or less to stay
        within the budget (never zero: a timing always makes at least one call)."""
        if self.budget_s is None:
            return self.bench_time_s
        left = self.budget_s - self._spent.get((artifact.model_name, artifact.format), 0.0)
        return min(self.bench_time_s, max(left / timings, 1e-3))

    @contextlib.contextmanager
    def _timing(self, artifact: Artifact, allowed_s: float) -> Iterator[None]:
        """Count the wall time of a timing against the artifact's budget, and record the running total."""
        started = self.clock()
        try:
            yield
        finally:
            key = (artifact.model_name, artifact.format)
            self._spent[key] = self._spent.get(key, 0.0) + self.clock() - started
            self.record(artifact, timing={"spent_s": self._spent[key], "allowed_per_batch_s": allowed_s,
                                          "shortened": allowed_s < self.bench_time_s})

    def _row(self, artifact: Artifact, **measured: Any) -> Row:
        extra: dict[str, Any] = {}
        if artifact.spec is not None:
            model = artifact.spec.model
            if id(model) not in self._facts:
                self._facts[id(model)] = compression_facts(model)
            extra.update(self._facts[id(model)])
            budgets = [key for key in ORIGINAL_BUDGETS if getattr(artifact.spec, key) is not None]
            if budgets:
                extra["budgets_vs_original"] = budgets
        fraction = (artifact.metadata.get("quantization") or {}).get("int8_weight_fraction")
        if fraction is not None:
            extra["int8_weight_fraction"] = fraction
        if artifact.metadata.get("counters"):
            extra["counters"] = artifact.metadata["counters"]
        row: Row = {"model": artifact.model_name, "format": artifact.format, "size_bytes": artifact.size_bytes,
                    "artifact_path": str(artifact.path)}
        row.update(extra, **measured)  # type: ignore[typeddict-item]  # keys as declared in Row
        return row

    def record(self, artifact: Artifact, **measured: Any) -> None:
        self._record(self._row(artifact, **measured))

    def check_parity(self, artifact: Artifact, batch_sizes: Sequence[int] | None = None,
                     tolerance: Any = None) -> ParityReport:
        with self.progress(f"parity of {artifact.model_name}/{artifact.format}"):
            report = check_parity(artifact, batch_sizes=batch_sizes, tolerance=tolerance)
        self.record(artifact, parity=report.figures())
        return report

    def assert_parity(self, artifact: Artifact, batch_sizes: Sequence[int] | None = None,
                      tolerance: Any = None) -> ParityReport:
        """Fail with the per-output table unless every output at every batch size is within tolerance, then hold
        the parity error to the baseline."""
        __tracebackhide__ = True
        report = self.check_parity(artifact, batch_sizes, tolerance)
        if not report.passed:
            raise AssertionError(
                f"{report}\n\nTo accept a larger error for this format, set ModelSpec(tolerances="
                f"{{{artifact.format!r}: Tolerance(...)}}) (per output: {{output_name: Tolerance(...)}}).")
        self.assert_baseline(artifact, ("parity",), parity=report.figures())
        return report

    def assert_size(self, artifact: Artifact) -> Comparison | None:
        """Hold the artifact's size to the baseline: its own check, so a CI listing names a size regression as
        one (`test_size`), not as an output mismatch."""
        __tracebackhide__ = True
        self.record(artifact)
        if self.baselines is None and self.not_applicable is not None:
            self.not_applicable("baselines are off: the size is held to no baseline")
        return self.assert_baseline(artifact, ("size",))

    def check_accuracy(self, artifact: Artifact) -> AccuracyReport:
        with self.progress(f"accuracy of {artifact.model_name}/{artifact.format}"):
            report = check_accuracy(artifact)
        self.record(artifact, accuracy=report.to_dict())
        return report

    def assert_accuracy(self, artifact: Artifact) -> AccuracyReport:
        """Fail with reference and obtained accuracy, drop, budget, worst classes and, for a quantized format,
        the layers the error comes from, unless the drop is within the spec's budget; then hold the accuracy to
        the baseline."""
        __tracebackhide__ = True
        report = self.check_accuracy(artifact)
        if not report.passed:
            raise AssertionError(
                f"{report}\n\nTo accept this drop, raise ModelSpec(max_accuracy_drop=...) or set "
                f"accuracy_overrides={{{artifact.format!r}: {{'max_accuracy_drop': ...}}}}; to find an int8 "
                "configuration within budget, run `deploycheck quantize MODULE:FUNC --max-accuracy-drop ...`.")
        self.assert_baseline(artifact, ("accuracy",), accuracy=report.to_dict())
        return report

    def bench(self, artifact: Artifact, batch_sizes: Sequence[int] = (1, 8, 32), **options: Any) -> BenchResult:
        """Latency and throughput per batch size (one benchmark at a time across xdist workers), held to the
        baseline. A batch size whose one call takes longer than the bench time is skipped, with the reason
        in the summary (a ResNet's batch of 32 on one thread: raise `--deploycheck-bench-time` to measure
        it). A latency regression is measured a second time before it fails, and fails only if the second
        measurement regresses too; with the baseline's artifact kept, every latency and throughput rule is
        judged on the two artifacts timed side by side."""
        __tracebackhide__ = True
        if self.skip_bench is not None:
            self.skip_bench("benchmarks are off (--deploycheck-no-bench)")
        if self.budget_s is not None:
            options.setdefault("max_time_s", self._allowance(artifact, len(batch_sizes) + 1))
            options.setdefault("patience", 1.0)  # a disturbed window is not made up for beyond the budget
        options.setdefault("max_time_s", self.bench_time_s)
        options.setdefault("skip_slower", True)  # a batch size whose one call exceeds its time is left out
        result, row = self._measure_latency(artifact, batch_sizes, options)
        if self.baselines is None:
            return result
        comparison = self._latency_comparison(artifact, result, row)
        if comparison is not None and (not comparison.passed or comparison.inconclusive):
            result, row = self._measure_latency(artifact, batch_sizes, options)
            second = self._latency_comparison(artifact, result, row)
            assert second is not None
            comparison = confirmed(comparison, second)
        if comparison is not None:
            self._judge(artifact, comparison, "latency")
        return result

    def _measure_latency(self, artifact: Artifact, batch_sizes: Sequence[int],
                         options: dict[str, Any]) -> tuple[BenchResult, Row]:
        """One benchmark (under the lock), recorded; returns the result and the recorded row."""
        with self._bench_lock(), self._timing(artifact, options["max_time_s"]), \
                self.progress(f"timing {artifact.model_name}/{artifact.format} at batch sizes "
                              f"{', '.join(map(str, batch_sizes))}"):
            result = bench(artifact, batch_sizes, **options)
        if result.skipped:
            self.record(artifact, timing={"skipped_batches": {str(b): why for b, why in result.skipped.items()}})
        row = self._row(artifact, **latency_payload(result))
        self._record(row)
        return result, row

    def _latency_comparison(self, artifact: Artifact, result: BenchResult,
                            row: Row) -> Comparison | None:
        """The latency section against the baseline; when the accepted artifact can be had (see `BaselineCheck`),
        every latency rule is judged on old and new timed interleaved in this run instead (the same machine state
        for both)."""
        assert self.baselines is not None
        comparison = self.baselines.compare(artifact, row, ("latency",))
        found = self.baselines.accepted_artifact(artifact.model_name, artifact.format)
        if comparison is None or found is None or not get_format(artifact.format).writes_files or not result.stats:
            return comparison
        kept, label = found
        try:
            old = load_artifact(kept, spec=artifact.spec, trust_code=True)  # the repository's or our own export
        except Exception as exc:  # the accepted artifact may no longer load with today's model code
            warnings.warn(f"deploycheck: {label} {kept} does not load ({exc}); latency is judged against the "
                          "stored figures", stacklevel=2)
            return comparison
        rules = self.baselines.rules(artifact)
        smallest, largest = min(result.stats), max(result.stats)
        allowed = self._allowance(artifact, 2)
        with self._bench_lock(), self._timing(artifact, allowed):
            new_times, old_times = interleaved_times(artifact, old, batch_size=smallest, max_time_s=allowed)
            side_by_side: dict[tuple[str, int | None], Finding] = {
                (limit.statistic, smallest): latency_side_by_side(new_times, old_times, limit, smallest,
                                                                  rules.confidence, label) for limit in rules.latency}
            if largest != smallest:
                new_times, old_times = interleaved_times(artifact, old, batch_size=largest, max_time_s=allowed)
            side_by_side[("throughput", largest)] = throughput_side_by_side(
                new_times, old_times, rules.throughput_drop, largest, rules.confidence, label)
        comparison.findings = [side_by_side.get((f.metric, f.batch_size), f) for f in comparison.findings]
        return comparison

    def assert_baseline(self, artifact: Artifact, sections: Sequence[str], **measured: Any) -> Comparison | None:
        """Hold the given sections of this measurement to the stored baseline (nothing when baselines are off)."""
        __tracebackhide__ = True
        if self.baselines is None:
            return None
        comparison = self.baselines.compare(artifact, self._row(artifact, **measured), sections)
        if comparison is not None:
            self._judge(artifact, comparison, "+".join(sections))
        return comparison

    def _judge(self, artifact: Artifact, comparison: Comparison, key: str) -> None:
        __tracebackhide__ = True
        self.record(artifact, baseline={key: comparison.to_dict()})
        strict = self.baselines is not None and self.baselines.strict_latency and key == "latency"
        if comparison.inconclusive and not strict:
            warnings.warn(f"deploycheck: {comparison.model}/{comparison.format} against its baseline is "
                          f"inconclusive: {comparison.inconclusive[0].note}", stacklevel=3)
        if not comparison.passed or (strict and comparison.inconclusive):
            raise AssertionError(str(comparison) + ("\n\n--deploycheck-strict-latency fails inconclusive latency "
                                                    "verdicts" if comparison.passed else ""))

    def check_speedup(self, artifact: Artifact, against: Artifact | None = None) -> SpeedRatio:
        """Speedup of the artifact over `against` (default: the eager reference), measured side by side."""
        if self.skip_bench is not None:
            self.skip_bench("benchmarks are off (--deploycheck-no-bench)")
        if artifact.spec is None:
            raise DeployCheckError(f"{artifact!r} has no spec; speedups need the eager reference")
        reference = against or reference_artifact(artifact.spec)
        allowed = self._allowance(artifact, 1)
        with self._bench_lock(), self._timing(artifact, allowed):
            ratio = compare_speed(reference, artifact, max_time_s=allowed)
        key = "vs_eager" if against is None else f"vs_{against.format}"
        self.record(artifact, speedup={key: {"ratio": ratio.ratio, "low": ratio.low, "high": ratio.high}})
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

    def check_original(self, artifact: Artifact) -> OriginalReport:
        """The artifact against the spec's original model: agreement, accuracy drop, size ratio against the
        original in the same format, and (unless benchmarks are off) the speedup measured side by side."""
        __tracebackhide__ = True  # a check that does not apply is reported at the test that called it
        if artifact.spec is None:
            raise DeployCheckError(f"{artifact!r} has no spec; comparing with the original needs it")
        if artifact.spec.original is None and self.not_applicable is not None:
            self.not_applicable(f"{artifact.model_name} has no original to compare with (it is not a compressed "
                                "model: ModelSpec(original=...) is not set)")
        original = original_spec(artifact.spec, self.resolve)
        original_artifact = self._export(original, artifact.format)

        def speed(slow: Artifact, fast: Artifact) -> SpeedRatio:
            with self._bench_lock():
                return compare_speed(slow, fast, max_time_s=self.bench_time_s)

        report = check_against_original(artifact, original, original_artifact,
                                        None if self.skip_bench is not None else speed)
        self.record(artifact, original=report.to_dict())
        return report

    def assert_original(self, artifact: Artifact) -> OriginalReport:
        """Fail with the table (both models, both accuracies, agreement, size ratio, speedup, the budget) unless
        the artifact is within the spec's `*_vs_original` budgets."""
        __tracebackhide__ = True
        report = self.check_original(artifact)
        if not report.passed:
            raise AssertionError(f"{report}\n\nTo accept this, relax ModelSpec(max_accuracy_drop_vs_original=..., "
                                 "min_agreement_vs_original=..., min_speedup_vs_original=..., "
                                 "max_size_ratio_vs_original=...).")
        return report

    def assert_generation(self, spec: GenerativeSpec) -> GenerationReport:
        """The generative gate of a decoder (`deploycheck.generation.check`), its report in the run's summary."""
        __tracebackhide__ = True
        check = self.generation or GenerationCheck(Path(tempfile.mkdtemp(prefix="deploycheck-generative-")))
        return check.assert_generation(spec, timing_lock=self._bench_lock)

    def _export(self, spec: ModelSpec, format_name: str) -> Artifact:
        if self.exporter is not None:
            return self.exporter(spec, format_name)
        return export(spec, format_name, Path(tempfile.mkdtemp(prefix="deploycheck-original-")) / format_name)

    def _bench_lock(self) -> contextlib.AbstractContextManager[Any]:
        """One benchmark at a time across the run's xdist workers."""
        return contextlib.nullcontext() if self.bench_lock is None else FileLock(str(self.bench_lock))


def latency_payload(result: BenchResult) -> dict[str, Any]:
    """What a benchmark contributes to the report and the baseline: compact stats per batch size, the
    environment record."""
    return {"latency": {str(batch): stats.compact() for batch, stats in result.stats.items()},
            "environment": result.environment}
