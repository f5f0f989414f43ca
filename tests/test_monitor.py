"""The production monitor on simulated traffic with an injected clock (no sleeps)."""

from __future__ import annotations

import numpy as np
import pytest

import deploycheck
from deploycheck.monitor import Monitor


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize("distribution", ["lognormal", "uniform", "bimodal"])
def test_window_percentiles_within_one_percent_of_numpy(distribution: str) -> None:
    rng = np.random.default_rng(0)
    values = {"lognormal": rng.lognormal(0, 0.7, 20000), "uniform": rng.uniform(0.5, 20, 20000),
              "bimodal": np.concatenate([rng.normal(2, 0.1, 15000), rng.normal(40, 3, 5000)])}[distribution]
    values = np.abs(values) + 0.01
    clock = Clock()
    monitor = Monitor("m", window_s=60, clock=clock, rules=[])
    for value in values:
        clock.now += 0.002
        monitor.record(float(value))
    latency = monitor.metrics()["latency_ms"]
    for q in (50, 95, 99):
        assert latency[f"p{q}"] == pytest.approx(np.percentile(values, q), rel=0.01)
    assert latency["max"] == values.max() and latency["mean"] == pytest.approx(values.mean())


def simulate(monitor: Monitor, clock: Clock, seconds: float, rate: int, latency: float = 5.0, error_every: int = 0,
             prediction=lambda i: i % 10, label=None) -> None:
    rng = np.random.default_rng(1)
    steps = int(seconds * rate)
    for i in range(steps):
        clock.now += 1 / rate
        error = "RuntimeError" if error_every and i % error_every == 0 else None
        rid = f"{clock.now:.6f}"
        monitor.record(latency * float(rng.uniform(0.9, 1.1)), error=error, prediction=prediction(i), request_id=rid)
        if label is not None:
            monitor.record_ground_truth(rid, label(i))


def test_latency_doubling_fires_once_and_resolves() -> None:
    clock = Clock()
    fired: list = []
    monitor = Monitor("m", window_s=10, clock=clock, baseline={"p95_ms": 5.5}, sinks=[fired.append])
    simulate(monitor, clock, 60, 100)
    assert monitor.alerts() == []
    simulate(monitor, clock, 30, 100, latency=12.0)
    simulate(monitor, clock, 60, 100)
    alerts = monitor.alerts()
    assert [(a.type, a.state) for a in alerts] == [("latency", "resolved")]
    assert len(fired) == 2 and alerts[0].first_seen < alerts[0].last_seen


def test_error_burst_accuracy_drop_and_drift_each_fire_one_alert() -> None:
    clock = Clock()
    baseline = {"accuracy": 0.95, "class_distribution": {c: 0.1 for c in range(10)}}
    monitor = Monitor("m", window_s=10, clock=clock, baseline=baseline)
    simulate(monitor, clock, 30, 100, label=lambda i: i % 10 if i % 100 >= 3 else -1)
    assert monitor.alerts() == []
    simulate(monitor, clock, 20, 100, error_every=7, label=lambda i: i % 10 if i % 100 >= 3 else -1)
    assert [a.type for a in monitor.alerts()] == ["error_rate"]
    simulate(monitor, clock, 20, 100, label=lambda i: i % 10 if i % 100 >= 10 else -1)
    assert [a.type for a in monitor.alerts()].count("accuracy") == 1
    simulate(monitor, clock, 20, 100, prediction=lambda i: 0 if i % 2 else i % 10)
    assert [a.type for a in monitor.alerts()].count("drift") == 1
    assert all(a.state in ("firing", "resolved") for a in monitor.alerts())


def test_metrics_and_report() -> None:
    clock = Clock()
    monitor = deploycheck.Monitor("digits", window_s=60, clock=clock)
    for i in range(600):
        clock.now += 0.09
        monitor.record(2.0, batch_size=4, prediction=i % 3, request_id=str(i))
    assert monitor.record_ground_truth("599", 2) and not monitor.record_ground_truth("599", 2)
    m = monitor.metrics()
    assert m["requests"] == 600 and m["samples"] == 2400 and m["accuracy"] == 1.0
    assert m["throughput_rps"] == pytest.approx(600 / 54, rel=0.01), "real requests over wall-clock time"
    assert m["predictions"] == {0: 200, 1: 200, 2: 200}
    assert "requests 600" in monitor.report()


def test_old_requests_leave_the_window_but_stay_in_lifetime() -> None:
    clock = Clock()
    monitor = Monitor("m", window_s=10, clock=clock, rules=[])
    for _ in range(100):
        clock.now += 0.05
        monitor.record(1.0)
    clock.now += 30
    monitor.record(3.0)
    m = monitor.metrics()
    assert m["requests"] == 1 and m["latency_ms"]["p50"] == pytest.approx(3.0, rel=0.01)
    assert m["lifetime"]["requests"] == 101
