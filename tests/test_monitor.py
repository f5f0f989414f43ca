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


def test_webhook_sink_retries_and_never_blocks_the_caller() -> None:
    """A receiver on loopback that fails the first POST and holds every answer until the caller has returned."""
    import http.server
    import json
    import threading

    from deploycheck.alerts import Alert
    from deploycheck.sinks import WebhookSink

    received: list[dict] = []
    release = threading.Event()

    class Receiver(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            release.wait(10)
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            received.append(body)
            self.send_response(500 if len(received) == 1 else 200)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    sink = WebhookSink(f"http://127.0.0.1:{server.server_address[1]}/alerts", timeout_s=5, backoff_s=0.01)
    try:
        sink(Alert("latency", "warning", 3.0, 2.0, 1.0, 1.0, model="digits_cnn", message="slow"))
        assert not received, "the call returned before the receiver answered"
        release.set()
        sink.close()
    finally:
        server.shutdown()
    assert len(received) == 2 and sink.delivered == 1 and sink.failed == 0
    assert received[1]["type"] == "latency" and received[1]["model"] == "digits_cnn"
    assert received[1]["state"] == "firing" and received[1]["threshold"] == 2.0


def test_a_million_steady_records_raise_no_alert() -> None:
    rng = np.random.default_rng(0)
    latencies = rng.lognormal(np.log(2.0), 0.2, 1_000_000)
    clock = [0.0]
    monitor = Monitor("m", window_s=60, baseline={"p95_ms": 3.0, "accuracy": 0.9}, clock=lambda: clock[0])
    for index, latency in enumerate(latencies.tolist()):
        clock[0] = index * 0.001
        monitor.record(latency, prediction=index % 10, request_id=None)
    assert monitor.alerts() == [] and monitor.metrics()["lifetime"]["requests"] == 1_000_000


def test_unscaled_inputs_fire_one_input_drift_alert_before_any_label() -> None:
    from deploycheck.digits import load_split
    from deploycheck.drift import input_profile

    x_train, _, x_test, _ = load_split()
    profile = input_profile([(x_train[i:i + 64],) for i in range(0, 512, 64)], ["image"])
    assert profile["image"]["edges"][0] == 0.0 and profile["image"]["fractions"][0] > 0.25, "blank pixels"
    clock = Clock()
    monitor = Monitor("digits", window_s=10, clock=clock, baseline={"input_profile": profile})

    def serve(seconds: float, scale: float) -> None:
        for i in range(int(seconds * 20)):
            clock.now += 0.05
            image = x_test[i % len(x_test)].numpy()[None] * scale
            monitor.record(1.0, prediction=0)
            monitor.record_inputs({"image": image})

    serve(30, 1.0)
    assert monitor.alerts() == [] and monitor.metrics()["input_drift_psi"]["image"] < 0.05
    serve(20, 16.0)
    assert monitor.metrics()["input_drift_psi"]["image"] > 1.0
    serve(30, 1.0)
    alerts = monitor.alerts()
    assert [(a.type, a.state) for a in alerts] == [("input_drift", "resolved")]
    assert "input 'image'" in alerts[0].message


def test_input_drift_needs_a_profile_and_enough_requests() -> None:
    clock = Clock()
    plain = Monitor("m", clock=clock)
    plain.record_inputs({"x": np.ones(4)})
    assert plain.metrics()["input_drift_psi"] == {}
    profile = {"x": {"edges": [0.5], "fractions": [0.5, 0.5]}}
    few = Monitor("m", clock=clock, baseline={"input_profile": profile})
    for _ in range(50):
        few.record_inputs({"x": np.ones(4)})
    assert few.metrics()["input_drift_psi"] == {} and few.metrics()["input_drift_requests"] == 50, \
        "no PSI is reported below min_drift_requests (100)"
    for _ in range(100):
        few.record_inputs({"x": np.ones(4)})
    assert few.metrics()["input_drift_psi"]["x"] > 1 and few.alerts() == [], "150 requests are below min_samples"


def test_a_doubling_of_latency_for_thirty_seconds_fires() -> None:
    """Exactly twice the baseline p95 for 30 s: the default factor (1.5) fires on a doubling."""
    clock = Clock()
    monitor = Monitor("m", window_s=10, clock=clock, baseline={"p95_ms": 5.5})
    simulate(monitor, clock, 30, 100)
    simulate(monitor, clock, 30, 100, latency=10.0)
    assert [a.type for a in monitor.alerts()] == ["latency"]


def test_an_idle_window_reads_empty_and_its_alerts_resolve() -> None:
    """Traffic stops with half the requests failing; two hours later the window is empty and the alert over."""
    clock = Clock()
    monitor = Monitor("m", window_s=60, clock=clock)
    simulate(monitor, clock, 10, 30, error_every=2)
    assert monitor.metrics()["errors"] > 0 and [a.state for a in monitor.alerts()] == ["firing"]
    clock.now += 2 * 3600
    figures = monitor.metrics()
    assert figures["requests"] == 0 and figures["errors"] == 0 and figures["throughput_rps"] == 0
    assert [a.state for a in monitor.alerts()] == ["resolved"]


@pytest.mark.parametrize("latency", [-1.0, float("nan"), float("inf"), "5"])
def test_an_impossible_latency_is_refused(latency: float) -> None:
    monitor = Monitor("m")
    with pytest.raises(ValueError, match=r"latency_ms=.*expected a finite number >= 0"):
        monitor.record(latency)
    assert monitor.metrics()["requests"] == 0


def test_a_clock_stepping_back_counts_as_no_time_passing() -> None:
    clock = Clock()
    clock.now = 10_000.0
    monitor = Monitor("m", window_s=60, clock=clock)
    simulate(monitor, clock, 10, 30)
    clock.now -= 3600
    simulate(monitor, clock, 1, 30)
    figures = monitor.metrics()
    assert figures["requests"] == 330 and 0 < figures["throughput_rps"] < 100
    assert figures["latency_ms"]["p95"] < 6


def test_a_server_holds_latency_to_what_it_measured_for_itself_not_the_in_process_release_figure() -> None:
    """Served requests take 5 ms where the release measured 2 ms in process (HTTP and queueing): the first 1,000
    become the reference, so steady serving never fires and a doubling of the served latency still does."""
    clock = Clock()
    monitor = Monitor("m", window_s=10, clock=clock, baseline={"p95_ms": 2.0}, learn_latency_requests=1000)
    assert monitor.latency_reference_ms is None
    simulate(monitor, clock, 5, 100)
    assert monitor.alerts() == [] and monitor.metrics()["latency_reference_ms"] is None  # still learning
    simulate(monitor, clock, 55, 100)
    assert 5.0 < monitor.latency_reference_ms < 5.6 and monitor.alerts() == []
    simulate(monitor, clock, 30, 100, latency=10.0)
    assert [a.type for a in monitor.alerts()] == ["latency"]
    slow_release = Monitor("m", window_s=10, clock=Clock(), baseline={"p95_ms": 50.0}, learn_latency_requests=100)
    simulate(slow_release, slow_release.clock, 2, 100)  # type: ignore[arg-type]
    assert slow_release.latency_reference_ms == 50.0, "a release figure above the served one is kept"


def test_generated_sequences_keep_their_ttft_as_latency_and_their_tpot_apart() -> None:
    clock = Clock()
    monitor = Monitor("llama", window_s=60, clock=clock)
    for index in range(200):
        monitor.record_generation(ttft_ms=20.0 + index % 10, tpot_ms=2.0 + (index % 4) / 2, tokens=32)
        clock.now += 0.1
    monitor.record_generation(ttft_ms=15.0, tpot_ms=None, tokens=1)
    monitor.record_generation(ttft_ms=30.0, tpot_ms=None, tokens=3, error="RuntimeError")
    figures = monitor.metrics()
    assert figures["requests"] == 202 and figures["errors"] == 1 and figures["samples"] == 200 * 32 + 1 + 3
    assert figures["latency_ms"]["p50"] == pytest.approx(np.median([20.0 + i % 10 for i in range(200)] + [15, 30]),
                                                         rel=0.01)
    generation = figures["generation"]
    assert generation["sequences"] == 200, "TPOT counts the sequences that had a second token and no error"
    assert generation["tpot_ms"]["p50"] == pytest.approx(2.75, rel=0.01), "numpy's median of 2, 2.5, 3, 3.5"
    assert generation["tpot_ms"]["max"] == 3.5 and generation["tpot_ms"]["mean"] == pytest.approx(2.75)
    assert generation["tokens_per_s"] == pytest.approx(figures["throughput_samples_per_s"])
    clock.now += 120
    assert "generation" not in monitor.metrics(), "an idle window has no generation figures"
    assert monitor.metrics()["lifetime"]["generation"]["sequences"] == 200
    with pytest.raises(ValueError, match="tpot_ms=nan"):
        monitor.record_generation(ttft_ms=1.0, tpot_ms=float("nan"), tokens=2)
    assert monitor.metrics()["lifetime"]["requests"] == 202, "a refused record counts nothing"
