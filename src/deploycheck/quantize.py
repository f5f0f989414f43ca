"""Accuracy-aware static int8 quantization: search for the cheapest `onnx_int8_static` configuration whose
accuracy drop fits a budget, and write it.

The search tries every calibration method (MinMax, Entropy, Percentile at 99.999, 99.99 and 99.9) with
per-channel weights on and off.
When none fits, it keeps the layers with the worst SQNR in float (`nodes_to_exclude`, as
`explain_quantization` ranks them), one more at a time, until the budget is met. Every trial is a real export
evaluated on the spec's eval data; the trade-off table lists them all.
"""

from __future__ import annotations

import dataclasses
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from deploycheck.accuracy import check_accuracy, evaluate, reference_artifact
from deploycheck.errors import DeployCheckError
from deploycheck.explain import explain_quantization
from deploycheck.exporting import export
from deploycheck.latency import bench
from deploycheck.table import format_table, human_size

if TYPE_CHECKING:
    from deploycheck.artifact import Artifact
    from deploycheck.spec import ModelSpec

FORMAT = "onnx_int8_static"
CALIBRATIONS: tuple[dict[str, Any], ...] = (
    {"calibrate_method": "MinMax"},
    {"calibrate_method": "Entropy"},
    {"calibrate_method": "Percentile"},
    {"calibrate_method": "Percentile", "extra_options": {"CalibPercentile": 99.99}},
    {"calibrate_method": "Percentile", "extra_options": {"CalibPercentile": 99.9}},
)


@dataclass
class Trial:
    settings: dict[str, Any]
    accuracy: float
    drop: float
    size_bytes: int
    p50_ms: float | None = None

    def describe(self) -> str:
        excluded = self.settings.get("nodes_to_exclude") or []
        method = self.settings["calibrate_method"]
        percentile = (self.settings.get("extra_options") or {}).get("CalibPercentile")
        parts = [f"{method} {percentile}" if percentile else method,
                 "per-channel" if self.settings["per_channel"] else "per-tensor"]
        if excluded:
            parts.append(f"{len(excluded)} node(s) in float: {', '.join(excluded)}")
        return ", ".join(parts)


@dataclass
class SearchResult:
    model: str
    budget: float
    reference_accuracy: float
    trials: list[Trial] = field(default_factory=list)
    winner: Trial | None = None
    artifact: Artifact | None = None

    def __str__(self) -> str:
        rows = [[t.describe(), f"{t.accuracy:.2%}", f"{t.drop:.2%}", human_size(t.size_bytes),
                 "" if t.p50_ms is None else f"{t.p50_ms:.3f}",
                 "<- chosen" if t is self.winner else ("fits" if t.drop <= self.budget else "")]
                for t in self.trials]
        head = (f"accuracy-aware int8 search for {self.model}: reference accuracy {self.reference_accuracy:.2%}, "
                f"budget {self.budget:.2%}")
        table = format_table(["configuration", "accuracy", "drop", "size", "p50 ms (batch 1)", ""], rows)
        verdict = ("no configuration fits the budget" if self.winner is None
                   else f"chosen: {self.winner.describe()} -> {self.artifact.path if self.artifact else ''}")
        return f"{head}\n{table}\n{verdict}"


def search_quantization(spec: ModelSpec, max_accuracy_drop: float, out_dir: str | Path,
                        calibrations: tuple[dict[str, Any], ...] = CALIBRATIONS, max_excluded: int = 8,
                        measure_latency: bool = False) -> SearchResult:
    """Find a static int8 configuration within `max_accuracy_drop` (a fraction) and export it to `out_dir`.

    Raises `DeployCheckError` when nothing fits, with the trade-off table in the message.
    """
    if not spec.eval_data:
        raise DeployCheckError(f"{spec.name}: accuracy-aware quantization needs labelled eval_data")
    out_dir = Path(out_dir)
    base = export(spec, "onnx", out_dir.with_name(f"{out_dir.name}.onnx"))
    reference = evaluate(reference_artifact(spec), spec.eval_data, spec.metric, f"{spec.name}/eager").value
    result = SearchResult(spec.name, max_accuracy_drop, reference)
    with tempfile.TemporaryDirectory(prefix="deploycheck-quantize-") as scratch:

        def trial(settings: dict[str, Any]) -> Trial:
            candidate = _with_settings(spec, settings)
            artifact = export(candidate, FORMAT, Path(scratch) / f"trial-{len(result.trials)}", base=base)
            report = check_accuracy(artifact, candidate, explain=False)
            latency = _p50_ms(artifact) if measure_latency else None
            result.trials.append(Trial(settings, report.obtained, report.drop, artifact.size_bytes, latency))
            return result.trials[-1]

        for calibration in calibrations:
            for per_channel in (True, False):
                trial({**calibration, "per_channel": per_channel})
        if min(t.drop for t in result.trials) > max_accuracy_drop:
            best = min(result.trials, key=lambda t: t.drop)
            probe = export(_with_settings(spec, best.settings), FORMAT, Path(scratch) / "probe", base=base)
            ranked = explain_quantization(probe, spec).worst_nodes(max_excluded)
            for count in range(1, len(ranked) + 1):
                if trial({**best.settings, "nodes_to_exclude": ranked[:count]}).drop <= max_accuracy_drop:
                    break
    fitting = [t for t in result.trials if t.drop <= max_accuracy_drop]
    if not fitting:
        raise DeployCheckError(f"{result}\n{spec.name}: no static int8 configuration fits a drop of "
                               f"{max_accuracy_drop:.2%}; raise the budget or keep the model in fp32")
    result.winner = min(fitting, key=lambda t: (len(t.settings.get("nodes_to_exclude") or []), t.drop))
    result.artifact = export(_with_settings(spec, result.winner.settings), FORMAT, out_dir, base=base)
    return result


def _with_settings(spec: ModelSpec, settings: dict[str, Any]) -> ModelSpec:
    options = {**spec.format_options, FORMAT: {**spec.options(FORMAT), **settings}}
    return dataclasses.replace(spec, format_options=options)


def _p50_ms(artifact: Artifact) -> float:
    return bench(artifact, batch_sizes=(1,), max_time_s=0.5).stats[1].p50_ms
