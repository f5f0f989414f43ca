"""Prometheus metrics of served models through `prometheus_client`: request and error counters, a latency
histogram with buckets for millisecond inference, and gauges for the monitor's window figures.

With several worker processes (`deploycheck serve --workers N`), `PROMETHEUS_MULTIPROC_DIR` is set before the
workers start; counters and histograms then add up across workers and the gauges report the largest worker's
value (`multiprocess_mode="max"`), as prometheus_client's multiprocess mode prescribes.
"""

from __future__ import annotations

import os
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

LATENCY_BUCKETS_S = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                     2.5, 5.0, 10.0)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def multiprocess() -> bool:
    return bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))


class PrometheusMetrics:
    """The metrics of every model a server holds, labelled by model name, in their own registry."""

    def __init__(self, namespace: str = "deploycheck") -> None:
        self.registry = CollectorRegistry()
        gauge_mode: dict[str, Any] = {"multiprocess_mode": "max"} if multiprocess() else {}
        self.requests = Counter(f"{namespace}_requests", "Inference requests", ["model"], registry=self.registry)
        self.samples = Counter(f"{namespace}_samples", "Rows inferred", ["model"], registry=self.registry)
        self.errors = Counter(f"{namespace}_errors", "Failed requests by error type", ["model", "type"],
                              registry=self.registry)
        self.latency = Histogram(f"{namespace}_request_latency_seconds", "Inference latency of a request",
                                 ["model"], buckets=LATENCY_BUCKETS_S, registry=self.registry)
        self.window_latency = Gauge(f"{namespace}_window_latency_seconds", "Latency percentile over the monitor's "
                                    "sliding window", ["model", "quantile"], registry=self.registry, **gauge_mode)
        self.accuracy = Gauge(f"{namespace}_window_accuracy", "Accuracy over the window from ground-truth labels",
                              ["model"], registry=self.registry, **gauge_mode)
        self.drift = Gauge(f"{namespace}_prediction_drift_psi", "PSI of predicted classes against the baseline",
                           ["model"], registry=self.registry, **gauge_mode)
        self.alerts = Gauge(f"{namespace}_alerts_firing", "Alerts firing", ["model"], registry=self.registry,
                            **gauge_mode)

    def observe(self, model: str, latency_ms: float, rows: int, error: str | None = None) -> None:
        self.requests.labels(model).inc()
        if error is not None:
            self.errors.labels(model, error).inc()
            return
        self.samples.labels(model).inc(rows)
        self.latency.labels(model).observe(latency_ms / 1e3)

    def refresh(self, model: str, figures: dict[str, Any]) -> None:
        """Copy a monitor's window figures into the gauges (called when /metrics is scraped)."""
        for quantile in ("p50", "p95", "p99"):
            self.window_latency.labels(model, quantile).set(figures["latency_ms"][quantile] / 1e3)
        if figures.get("accuracy") is not None:
            self.accuracy.labels(model).set(figures["accuracy"])
        if figures.get("drift_psi") is not None:
            self.drift.labels(model).set(figures["drift_psi"])
        self.alerts.labels(model).set(len(figures.get("alerts", [])))

    def render(self) -> bytes:
        """The text exposition: this process's registry, or every worker's when in multiprocess mode."""
        if multiprocess():
            registry = CollectorRegistry()
            MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
            return generate_latest(registry)  # type: ignore[no-any-return]
        return generate_latest(self.registry)  # type: ignore[no-any-return]
