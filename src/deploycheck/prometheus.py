"""Prometheus metrics of served models through `prometheus_client`: request and error counters, a latency
histogram with buckets for millisecond inference, and gauges for the monitor's window figures.

With several worker processes (`deploycheck serve --workers N`), `PROMETHEUS_MULTIPROC_DIR` is set before the
workers start; counters and histograms then add up across workers and the gauges report the largest worker's
value (`multiprocess_mode="max"`), as prometheus_client's multiprocess mode prescribes.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

from deploycheck.alerts import DEFAULT_RULES
from deploycheck.baseline.store import BaselineStore
from deploycheck.errors import DeployCheckError

LATENCY_BUCKETS_S = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                     2.5, 5.0, 10.0)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LABELS = ["model", "format"]  # of every series: a served model's name and its format


def multiprocess() -> bool:
    return bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))


class PrometheusMetrics:
    """The metrics of every model a server holds, in their own registry, labelled by model name and format (so a
    dashboard keyed on the model survives a change of format, and an int8 variant beside its fp32 one is a label
    away). Each method takes a served model's `(model, format)` labels."""

    def __init__(self, namespace: str = "deploycheck") -> None:
        self.registry = CollectorRegistry()
        gauge_mode: dict[str, Any] = {"multiprocess_mode": "max"} if multiprocess() else {}
        self.requests = Counter(f"{namespace}_requests", "Inference requests", LABELS, registry=self.registry)
        self.samples = Counter(f"{namespace}_samples", "Rows inferred", LABELS, registry=self.registry)
        self.errors = Counter(f"{namespace}_errors", "Failed requests by error type", [*LABELS, "type"],
                              registry=self.registry)
        self.batches = Counter(f"{namespace}_batches", "Inference batches run (samples / batches is the mean "
                               "batch size)", LABELS, registry=self.registry)
        self.latency = Histogram(f"{namespace}_request_latency_seconds", "Inference latency of a request",
                                 LABELS, buckets=LATENCY_BUCKETS_S, registry=self.registry)
        self.window_latency = Gauge(f"{namespace}_window_latency_seconds", "Latency percentile over the monitor's "
                                    "sliding window", [*LABELS, "quantile"], registry=self.registry, **gauge_mode)
        self.accuracy = Gauge(f"{namespace}_window_accuracy", "Accuracy over the window from ground-truth labels",
                              LABELS, registry=self.registry, **gauge_mode)
        self.drift = Gauge(f"{namespace}_prediction_drift_psi", "PSI of predicted classes against the baseline",
                           LABELS, registry=self.registry, **gauge_mode)
        self.input_drift = Gauge(f"{namespace}_input_drift_psi", "PSI of an input (values, or the rank buckets of "
                                 "ids, or '<input> length') against the calibration data; absent, or NaN once "
                                 f"reported, while the window holds too few requests ({namespace}_input_drift_"
                                 "requests)", [*LABELS, "input"], registry=self.registry, **gauge_mode)
        self.input_drift_requests = Gauge(f"{namespace}_input_drift_requests", "Requests whose inputs were "
                                          "profiled in the window; input drift is reported from the monitor's "
                                          "min_drift_requests on", LABELS, registry=self.registry, **gauge_mode)
        self._drift_reported: dict[tuple[str, str], set[str]] = {}
        self.latency_reference = Gauge(f"{namespace}_latency_reference_seconds", "The p95 latency alerts hold the "
                                       "window to: the server's own over its first requests, or the release "
                                       "baseline's plus the queue delay if higher", LABELS,
                                       registry=self.registry, **gauge_mode)
        self.alerts = Gauge(f"{namespace}_alerts_firing", "Alerts firing", LABELS, registry=self.registry,
                            **gauge_mode)
        self.ttft = Histogram(f"{namespace}_time_to_first_token_seconds", "Time from a generate request's arrival "
                              "to its first token (a generated sequence's request latency)", LABELS,
                              buckets=LATENCY_BUCKETS_S, registry=self.registry)
        self.tpot = Histogram(f"{namespace}_time_per_output_token_seconds", "A generated sequence's (end to end - "
                              "TTFT) / (tokens - 1)", LABELS, buckets=LATENCY_BUCKETS_S, registry=self.registry)
        self.itl = Histogram(f"{namespace}_inter_token_latency_seconds", "Time between two tokens of a sequence",
                             LABELS, buckets=LATENCY_BUCKETS_S, registry=self.registry)
        self.tokens = Counter(f"{namespace}_generated_tokens", "Tokens generated", LABELS, registry=self.registry)
        self.sequences = Gauge(f"{namespace}_active_sequences", "Sequences being generated now", LABELS,
                               registry=self.registry, multiprocess_mode="livesum")
        self.window_tpot = Gauge(f"{namespace}_window_time_per_output_token_seconds", "TPOT percentile over the "
                                 "monitor's sliding window", [*LABELS, "quantile"], registry=self.registry,
                                 **gauge_mode)

    def observe(self, labels: tuple[str, str], latency_ms: float, rows: int, error: str | None = None) -> None:
        self.requests.labels(*labels).inc()
        if error is not None:
            self.errors.labels(*labels, error).inc()
            return
        self.samples.labels(*labels).inc(rows)
        self.latency.labels(*labels).observe(latency_ms / 1e3)

    def observe_generation(self, labels: tuple[str, str], ttft_s: float, token_gaps_s: list[float]) -> None:
        """One generated sequence: its TTFT, its TPOT (with a second token), each gap between two tokens."""
        self.requests.labels(*labels).inc()
        self.samples.labels(*labels).inc(len(token_gaps_s) + 1)
        self.tokens.labels(*labels).inc(len(token_gaps_s) + 1)
        self.ttft.labels(*labels).observe(ttft_s)
        if token_gaps_s:
            self.tpot.labels(*labels).observe(sum(token_gaps_s) / len(token_gaps_s))
        for gap in token_gaps_s:
            self.itl.labels(*labels).observe(gap)

    def observe_batch(self, labels: tuple[str, str], rows: int) -> None:
        self.batches.labels(*labels).inc()

    def refresh(self, labels: tuple[str, str], figures: dict[str, Any]) -> None:
        """Copy a monitor's window figures into the gauges (called when /metrics is scraped)."""
        for quantile in ("p50", "p95", "p99"):
            self.window_latency.labels(*labels, quantile).set(figures["latency_ms"][quantile] / 1e3)
        if figures.get("accuracy") is not None:
            self.accuracy.labels(*labels).set(figures["accuracy"])
        if figures.get("drift_psi") is not None:
            self.drift.labels(*labels).set(figures["drift_psi"])
        drift = figures.get("input_drift_psi") or {}
        reported = self._drift_reported.setdefault(labels, set())
        for input_name in reported | set(drift):
            self.input_drift.labels(*labels, input_name).set(drift.get(input_name, math.nan))
        reported.update(drift)
        if "input_drift_requests" in figures:
            self.input_drift_requests.labels(*labels).set(figures["input_drift_requests"])
        self.alerts.labels(*labels).set(len(figures.get("alerts", [])))
        tpot = figures.get("generation", {}).get("tpot_ms")
        for quantile in ("p50", "p95", "p99") if tpot else ():
            self.window_tpot.labels(*labels, quantile).set(tpot[quantile] / 1e3)
        if figures.get("latency_reference_ms") is not None:
            self.latency_reference.labels(*labels).set(figures["latency_reference_ms"] / 1e3)

    def render(self) -> bytes:
        """The text exposition: this process's registry, or every worker's when in multiprocess mode."""
        if multiprocess():
            registry = CollectorRegistry()
            MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
            return generate_latest(registry)  # type: ignore[no-any-return]
        return generate_latest(self.registry)  # type: ignore[no-any-return]


def alerting_rules(baselines: Path, format_name: str | None = None, window: str = "5m", hold: str = "2m") -> str:
    """Prometheus alerting rules (YAML) holding served models to their release baselines with the thresholds of
    the monitor's default rules: p95 latency above `factor` x the latency reference the server exports
    (`deploycheck_latency_reference_seconds`: its own p95 over its first requests, HTTP and queueing included,
    or the release p95 plus the queue delay if higher), error rate, accuracy below the baseline
    minus its budget, prediction drift, and input drift when the baseline has an input profile. One model per
    baseline directory entry; `format_name` picks which format's figures (default: onnx when stored, else the
    first stored format)."""
    store = BaselineStore(baselines)
    by_model: dict[str, list[str]] = {}
    for model, stored_format in store.entries():
        by_model.setdefault(model, []).append(stored_format)
    if not by_model:
        raise DeployCheckError(f"{baselines}: no baselines found (expected <model>/<format>.json files)")
    rules = {rule.type: rule for rule in DEFAULT_RULES}
    lines = ["groups:", "  - name: deploycheck", "    rules:"]
    for model, formats in sorted(by_model.items()):
        chosen = format_name or ("onnx" if "onnx" in formats else formats[0])
        if chosen not in formats:
            raise DeployCheckError(f"{baselines}: model {model!r} has no {chosen!r} baseline (it has {formats})")
        record: Mapping[str, Any] = store.read(model, chosen) or {}
        label = f'model="{model}",format="{chosen}"'
        factor = rules["latency"].factor
        lines += _rule("DeploycheckLatencyHigh", f"histogram_quantile(0.95, sum by (le) (rate("
                       f"deploycheck_request_latency_seconds_bucket{{{label}}}[{window}]))) > {factor:g} * "
                       f"max(deploycheck_latency_reference_seconds{{{label}}})", hold, rules["latency"].severity,
                       model, chosen, f"p95 latency above {factor:g} x the latency the server measured for itself")
        error_rate = rules["error_rate"]
        lines += _rule("DeploycheckErrorRateHigh", f"sum(rate(deploycheck_errors_total{{{label}}}[{window}])) / "
                       f"sum(rate(deploycheck_requests_total{{{label}}}[{window}])) > {error_rate.threshold:g}",
                       hold, error_rate.severity, model, chosen, f"error rate above {error_rate.threshold:.0%}")
        accuracy = (record.get("accuracy") or {}).get("value")
        if accuracy is not None:
            floor = accuracy - rules["accuracy"].threshold
            lines += _rule("DeploycheckAccuracyLow", f"deploycheck_window_accuracy{{{label}}} < {floor:.6g}", hold,
                           rules["accuracy"].severity, model, chosen,
                           f"accuracy below the release baseline {accuracy:.2%} minus "
                           f"{rules['accuracy'].threshold * 100:g} points")
        lines += _rule("DeploycheckPredictionDrift", f"deploycheck_prediction_drift_psi{{{label}}} > "
                       f"{rules['drift'].threshold:g}", hold, rules["drift"].severity, model, chosen,
                       f"PSI of predicted classes above {rules['drift'].threshold:g}")
        if (record.get("accuracy") or {}).get("input_profile"):
            lines += _rule("DeploycheckInputDrift", f"max(deploycheck_input_drift_psi{{{label}}}) > "
                           f"{rules['input_drift'].threshold:g}", hold, rules["input_drift"].severity, model, chosen,
                           f"PSI of some input's values against the calibration data above "
                           f"{rules['input_drift'].threshold:g}")
    return "\n".join(lines) + "\n"


def _rule(name: str, expression: str, hold: str, severity: str, model: str, format_name: str,
          summary: str) -> list[str]:
    return [f"      - alert: {name}", f"        expr: {json.dumps(expression)}", f"        for: {hold}",
            "        labels:", f"          severity: {severity}", f"          model: {json.dumps(model)}",
            f"          format: {json.dumps(format_name)}", "        annotations:",
            f"          summary: {json.dumps(f'{model}: {summary}')}"]
