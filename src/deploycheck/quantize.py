"""Accuracy-aware static int8 quantization: search for the cheapest `onnx_int8_static` (or `openvino_int8`)
configuration whose accuracy drop fits a budget, and write it.

For `onnx_int8_static` the search tries every calibration method (MinMax, Entropy, Percentile at 99.999, 99.99
and 99.9) and A16W8 (16-bit activations, 8-bit weights: the usual answer to outlier activations), with
per-channel weights on and off.
When none fits, it keeps the layers with the worst SQNR in float (`nodes_to_exclude`, as
`explain_quantization` ranks them), one more at a time, until the budget is met. Every trial is a real export
evaluated on the spec's eval data; the trade-off table lists them all, with the fraction of weights each keeps in
int8. A configuration with fewer than `min_int8_fraction` of its weights in int8 (the gate's "int8 in name only"
rule) is not an answer, however accurate: keeping every layer in float fits any budget. A calibrator that fails
on a model (ONNX Runtime's Entropy histogram on a constant tensor) is a row of the table, not the end.

Each candidate's speed is timed side by side with the fp32 model it was quantized from (ONNX, or the OpenVINO
IR; interleaved calls on the same inputs, so a busy machine slows both alike): its batch-1 median as a multiple
of fp32's, with a bootstrap interval. Timed one after another, a neighbour's burst during one candidate would
read as that candidate's cost.

For `openvino_int8` it tries NNCF's presets with and without SmoothQuant at a few alphas (SmoothQuant moves an
outlier activation's range into the weights it multiplies). ONNX Runtime's own `SmoothQuant` option cannot be
searched: it runs neural-compressor's 2.x ONNX helper (`neural_compressor.adaptor.ox_utils.smooth_quant`), which
neural-compressor 3 no longer ships; NNCF's is the SmoothQuant on offer.
"""

from __future__ import annotations

import dataclasses
import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from deploycheck.accuracy import check_accuracy, evaluate, reference_artifact
from deploycheck.errors import DeployCheckError, ExportError, one_line
from deploycheck.explain import explain_quantization
from deploycheck.exporting import export
from deploycheck.formats import get_format, searchable_formats
from deploycheck.formats.base import MIN_INT8_WEIGHT_FRACTION, int8_in_name_only
from deploycheck.latency import interleaved_times, speed_claim
from deploycheck.stats import bootstrap_ratio_interval
from deploycheck.table import format_table, human_size

if TYPE_CHECKING:
    from deploycheck.artifact import Artifact
    from deploycheck.spec import ModelSpec

TIMING_S = 0.5  # per candidate, interleaved with fp32


@dataclass
class Trial:
    settings: dict[str, Any]
    accuracy: float
    drop: float
    size_bytes: int
    p50_ms: float | None = None
    speed_vs_fp32: tuple[float, float, float] | None = None  # fp32's median / this one's, and its interval
    error: str | None = None  # why this configuration could not be made (a calibrator failing on this model)
    int8_fraction: float | None = None  # of the weights, in 8 bits (excluded nodes keep theirs in float)

    @property
    def a16w8(self) -> bool:
        """16-bit activations (`QInt16` / `QUInt16`) with int8 weights."""
        return "16" in str(self.settings.get("activation_type", ""))

    def describe(self) -> str:
        if "calibrate_method" not in self.settings:  # NNCF's settings
            alpha = self.settings.get("smooth_quant_alpha")
            return f"NNCF {self.settings['preset']}" + (f", SmoothQuant alpha {alpha}" if alpha is not None else "")
        excluded = self.settings.get("nodes_to_exclude") or []
        method = self.settings["calibrate_method"]
        percentile = (self.settings.get("extra_options") or {}).get("CalibPercentile")
        parts = [f"{method} {percentile}" if percentile else method,
                 "per-channel" if self.settings["per_channel"] else "per-tensor"]
        if self.a16w8:
            parts.append("A16W8 (16-bit activations)")
        if excluded:
            parts.append(f"{len(excluded)} node(s) in float: {', '.join(excluded)}")
        return ", ".join(parts)


@dataclass
class SearchResult:
    model: str
    format: str
    budget: float
    reference_accuracy: float
    min_int8_fraction: float = MIN_INT8_WEIGHT_FRACTION
    trials: list[Trial] = field(default_factory=list)
    winner: Trial | None = None
    artifact: Artifact | None = None

    def eligible(self, trial: Trial) -> bool:
        """Made, and int8 in more than name: a configuration that keeps most weights in float is not an int8
        configuration, whatever its accuracy (excluding every node "fits" any budget)."""
        return trial.error is None and not int8_in_name_only(trial.int8_fraction, self.min_int8_fraction)

    def fits(self, trial: Trial) -> bool:
        return self.eligible(trial) and trial.drop <= self.budget

    def closest(self) -> Trial | None:
        """The eligible configuration with the smallest drop."""
        return min((t for t in self.trials if self.eligible(t)), key=lambda t: t.drop, default=None)

    def format_options(self) -> dict[str, dict[str, Any]]:
        """The chosen configuration as `ModelSpec(format_options=...)` takes it, to gate it from then on."""
        assert self.winner is not None
        return {self.format: dict(self.winner.settings)}

    def how_to_gate(self, spec: ModelSpec) -> str:
        """The line that gates the chosen configuration, and a warning when the spec's own budget is tighter
        than the searched one (the gate would then fail what the search chose)."""
        line = f"to gate this configuration: ModelSpec(format_options={self.format_options()!r})"
        own = spec.max_accuracy_drop
        if own is not None and own < self.budget:
            line += (f"\nnote: {spec.name}'s own max_accuracy_drop ({own:.2%}) is tighter than the searched budget "
                     f"({self.budget:.2%}): the gate fails this configuration until the spec's budget is raised")
        return line

    def __str__(self) -> str:
        def note(t: Trial) -> str:
            if t is self.winner:
                return "<- chosen"
            if not self.eligible(t):
                return f"int8 in name only (< {self.min_int8_fraction:.0%} of weights)"
            return "fits" if t.drop <= self.budget else ""

        rows = [[t.describe(), "", "", "", "", "", "", f"failed: {t.error}"] if t.error is not None else
                [t.describe(), f"{t.accuracy:.2%}", f"{t.drop:.2%}", human_size(t.size_bytes),
                 "" if t.int8_fraction is None else f"{t.int8_fraction:.0%}",
                 "" if t.p50_ms is None else f"{t.p50_ms:.3f}", _speed(t.speed_vs_fp32), note(t)]
                for t in self.trials]
        head = (f"accuracy-aware {self.format} search for {self.model}: reference accuracy "
                f"{self.reference_accuracy:.2%}, budget {self.budget:.2%}, at least {self.min_int8_fraction:.0%} of "
                "weights in int8")
        table = format_table(["configuration", "accuracy", "drop", "size", "int8 weights", "p50 ms (batch 1)",
                              "speed vs fp32, side by side", ""], rows)
        closest = self.closest()
        verdict = (f"chosen: {self.winner.describe()} -> {self.artifact.path if self.artifact else ''}"
                   if self.winner is not None else "no int8 configuration within the budget; the closest: "
                   + (f"{closest.describe()} (drop {closest.drop:.2%})" if closest else "none could be made"))
        return f"{head}\n{table}\n{verdict}"


def search_quantization(spec: ModelSpec, max_accuracy_drop: float, out_dir: str | Path, measure_latency: bool = False,
                        min_int8_fraction: float | None = None, candidates: tuple[dict[str, Any], ...] | None = None,
                        max_excluded: int = 8, format_name: str = "onnx_int8_static") -> SearchResult:
    """Find a static int8 configuration of `format_name` (one of `searchable_formats()`) within
    `max_accuracy_drop` (a fraction), with at least `min_int8_fraction` (default `MIN_INT8_WEIGHT_FRACTION`) of the
    weights in int8, and export it to `out_dir`. `candidates`, when given, are tried instead of the format's own
    `int8_search_space`.

    Raises `DeployCheckError` when nothing fits, with the trade-off table and the closest configuration.
    """
    if format_name not in searchable_formats():
        raise DeployCheckError(f"{spec.name}: the int8 search covers {', '.join(searchable_formats())}, not "
                               f"{format_name!r}")
    if not spec.eval_data:
        raise DeployCheckError(f"{spec.name}: accuracy-aware quantization needs labelled eval_data")
    out_dir = Path(out_dir)
    fp32_format = get_format(format_name).base_format
    assert fp32_format is not None
    base = export(spec, fp32_format, out_dir.with_name(f"{out_dir.name}.{fp32_format}"))
    reference = evaluate(reference_artifact(spec), spec.eval_data, spec.metric, f"{spec.name}/eager").value
    result = SearchResult(spec.name, format_name, max_accuracy_drop, reference,
                          MIN_INT8_WEIGHT_FRACTION if min_int8_fraction is None else min_int8_fraction)
    candidates = candidates or get_format(format_name).int8_search_space
    with tempfile.TemporaryDirectory(prefix="deploycheck-quantize-") as scratch:

        def trial(settings: dict[str, Any]) -> Trial:
            candidate = _with_settings(spec, format_name, settings)
            try:
                artifact = export(candidate, format_name, Path(scratch) / f"trial-{len(result.trials)}", base=base)
            except ExportError as exc:  # e.g. ONNX Runtime's Entropy histogram on a constant tensor: the next one
                result.trials.append(Trial(settings, math.nan, math.inf, 0, error=one_line(exc.__cause__ or exc, 160)))
                return result.trials[-1]
            report = check_accuracy(artifact, candidate, explain=False)
            fraction = (artifact.metadata.get("quantization") or {}).get("int8_weight_fraction")
            result.trials.append(Trial(settings, report.obtained, report.drop, artifact.size_bytes,
                                       int8_fraction=fraction))
            if measure_latency:
                result.trials[-1].p50_ms, result.trials[-1].speed_vs_fp32 = _timed_beside(artifact, base)
            return result.trials[-1]

        for settings in candidates:
            trial(settings)
        best = result.closest()
        excludable = format_name == "onnx_int8_static"  # ranked by explain_quantization, kept out by name
        if excludable and best is not None and not any(result.fits(t) for t in result.trials):
            probe = export(_with_settings(spec, format_name, best.settings), format_name, Path(scratch) / "probe",
                           base=base)
            ranked = explain_quantization(probe, spec).worst_nodes(max_excluded)
            for count in range(1, len(ranked) + 1):  # the fewest of the most sensitive nodes kept in float
                excluded = trial({**best.settings, "nodes_to_exclude": ranked[:count]})
                if result.fits(excluded) or not result.eligible(excluded):
                    break
    fitting = [t for t in result.trials if result.fits(t)]
    if not fitting:
        raise DeployCheckError(f"{result}\n{spec.name}: raise the budget, lower --min-int8-fraction, or keep the "
                               "model in fp32")
    # the fewest nodes in float, then 8-bit activations over 16-bit ones (cheaper to run), then the smallest drop
    result.winner = min(fitting, key=lambda t: (len(t.settings.get("nodes_to_exclude") or []), t.a16w8, t.drop))
    result.artifact = export(_with_settings(spec, format_name, result.winner.settings), format_name, out_dir,
                             base=base)
    return result


def _with_settings(spec: ModelSpec, format_name: str, settings: dict[str, Any]) -> ModelSpec:
    options = {**spec.format_options, format_name: {**spec.options(format_name), **settings}}
    return dataclasses.replace(spec, format_options=options)


def _timed_beside(candidate: Artifact, fp32: Artifact) -> tuple[float, tuple[float, float, float]]:
    """The candidate's batch-1 median (ms) and fp32's median over its, with the interval, timed interleaved."""
    mine, theirs = interleaved_times(candidate, fp32, batch_size=1, max_time_s=TIMING_S)
    low, high = bootstrap_ratio_interval(theirs, mine)
    return float(np.median(mine)) * 1e3, (float(np.median(theirs) / np.median(mine)), low, high)


def _speed(speed: tuple[float, float, float] | None) -> str:
    """fp32's median over the candidate's with its interval, and "faster" or "slower" where that may be said."""
    if speed is None:
        return ""
    claim = speed_claim(speed[1], speed[2])
    return f"{speed[0]:.2f}x [{speed[1]:.2f}, {speed[2]:.2f}]" + (f" {claim}" if claim else "")
