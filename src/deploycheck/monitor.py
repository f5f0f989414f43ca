"""`Monitor`: production metrics over a sliding time window, with alerts that fire once and resolve.

`record` is O(1): it adds to the current time slice (a count, sums, and a log-bucketed latency histogram with
relative error `RELATIVE_ERROR`, DDSketch-style). Window figures merge the slices that are still inside the
window; rules are evaluated when a slice closes and whenever `metrics()` or `alerts()` is called, never per
record. The clock is injectable, so tests simulate hours of traffic without sleeping.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from deploycheck.alerts import DEFAULT_RULES, Alert, Rule
from deploycheck.drift import add_bins, expected_fractions, population_stability_index, profile_binners

RELATIVE_ERROR = 0.005
_GAMMA = (1 + RELATIVE_ERROR) / (1 - RELATIVE_ERROR)
_LOG_GAMMA = math.log(_GAMMA)
_MIN_MS = 1e-6
LOGGER = logging.getLogger("deploycheck.monitor")


def _bucket(latency_ms: float) -> int:
    return math.ceil(math.log(max(latency_ms, _MIN_MS)) / _LOG_GAMMA)


def _bucket_value(index: int) -> float:
    """The value a bucket stands for: within RELATIVE_ERROR of every latency that fell into it."""
    return 2 * _GAMMA**index / (_GAMMA + 1)


@dataclass
class _Slice:
    start: float
    requests: int = 0
    samples: int = 0
    errors: int = 0
    latency_sum: float = 0.0
    latency_max: float = 0.0
    histogram: Counter[int] = field(default_factory=Counter)
    error_types: Counter[str] = field(default_factory=Counter)
    predictions: Counter[Any] = field(default_factory=Counter)
    labelled: int = 0
    correct: int = 0
    inputs_recorded: int = 0
    input_bins: dict[str, np.ndarray] = field(default_factory=dict)
    sequences: int = 0  # generated sequences (their request latency is the time to first token)
    tpot_sum: float = 0.0
    tpot_max: float = 0.0
    tpot_histogram: Counter[int] = field(default_factory=Counter)


class Monitor:
    """Production metrics of one model: latency percentiles, throughput, errors, accuracy, drift, alerts.

    `baseline` is a mapping with any of `p95_ms`, `accuracy`, `class_distribution` ({class: fraction}) and
    `input_profile` (see `input_profile`), typically read from the gate's baselines; `sinks` are callables
    receiving each `Alert` when it fires or resolves (alerts are also logged on the `deploycheck.monitor` logger).
    `learn_latency_requests`: the p95 of the first that many successful requests becomes the latency reference
    when it is above the baseline's `p95_ms` (a server adds HTTP and queueing to the release figure, so its own
    latency is what a slowdown is measured against); until then the latency rule is not judged.
    `min_drift_requests`: input drift is reported once the window holds that many requests with inputs recorded
    (`metrics()["input_drift_requests"]` says how many it holds).
    """

    def __init__(self, model_name: str, window_s: float = 60, baseline: Mapping[str, Any] | None = None,
                 rules: Sequence[Rule] | None = None, sinks: Sequence[Callable[[Alert], None]] | None = None,
                 clock: Callable[[], float] = time.monotonic, slices: int = 12, max_pending_labels: int = 100_000,
                 learn_latency_requests: int = 0, min_drift_requests: int = 100) -> None:
        self.model_name = model_name
        self.window_s = float(window_s)
        self.baseline = dict(baseline or {})
        self.rules = list(DEFAULT_RULES if rules is None else rules)
        self.sinks = list(sinks or [])
        self.clock = clock
        self._slice_s = self.window_s / slices
        self._lock = threading.Lock()
        self._started = clock()
        self._latest = self._started
        self._slices: deque[_Slice] = deque()
        self._current = _Slice(self._slice_start(self._started))
        self._lifetime = _Slice(self._started)
        self._pending: OrderedDict[str, Any] = OrderedDict()
        self._max_pending = max_pending_labels
        self._window_p95_history: deque[float] = deque(maxlen=30)
        self._active: dict[str, Alert] = {}
        self._history: list[Alert] = []
        self._last_resolved: dict[str, float] = {}
        self._learn_left = learn_latency_requests
        self._learning: list[float] = []
        self._input_profile = self.baseline.get("input_profile") or {}
        self._input_binners = profile_binners(self._input_profile)
        self.min_drift_requests = min_drift_requests

    def record(self, latency_ms: float, batch_size: int = 1, error: str | BaseException | None = None,
               prediction: Any = None, request_id: str | None = None) -> None:
        """Count one request. O(1): no percentile, no rule evaluation here. A latency that is negative, NaN or
        infinite is refused (ValueError): it would corrupt every figure of the window."""
        if not (isinstance(latency_ms, (int, float)) and math.isfinite(latency_ms) and latency_ms >= 0):
            raise ValueError(f"monitor {self.model_name}: latency_ms={latency_ms!r}; expected a finite number >= 0")
        now = self._now()
        bucket = _bucket(latency_ms)
        with self._lock:
            if now - self._current.start >= self._slice_s:
                self._rotate(now)
            for part in (self._current, self._lifetime):
                part.requests += 1
                part.samples += batch_size
                part.latency_sum += latency_ms
                if latency_ms > part.latency_max:
                    part.latency_max = latency_ms
                part.histogram[bucket] += 1
                if error is not None:
                    part.errors += 1
                    part.error_types[error if isinstance(error, str) else type(error).__name__] += 1
                elif prediction is not None:
                    part.predictions[prediction] += 1
            if self._learn_left and error is None:
                self._learn(latency_ms)
            if request_id is not None and prediction is not None:
                self._pending[request_id] = prediction
                if len(self._pending) > self._max_pending:
                    self._pending.popitem(last=False)

    def record_generation(self, ttft_ms: float, tpot_ms: float | None, tokens: int,
                          error: str | BaseException | None = None, request_id: str | None = None) -> None:
        """Count one generated sequence: a request whose latency is its time to first token (what a user of a
        stream waits for, so the latency rule watches TTFT) and whose samples are its `tokens`, plus its time per
        output token (None for a single token: TPOT needs a second one) in a histogram of its own."""
        if tpot_ms is not None and not (isinstance(tpot_ms, (int, float)) and math.isfinite(tpot_ms) and tpot_ms >= 0):
            raise ValueError(f"monitor {self.model_name}: tpot_ms={tpot_ms!r}; expected a finite number >= 0")
        self.record(ttft_ms, tokens, error=error, request_id=request_id)
        if tpot_ms is None or error is not None:
            return
        with self._lock:
            for part in (self._current, self._lifetime):
                part.sequences += 1
                part.tpot_sum += tpot_ms
                part.tpot_max = max(part.tpot_max, tpot_ms)
                part.tpot_histogram[_bucket(tpot_ms)] += 1

    def _learn(self, latency_ms: float) -> None:
        """Collect the first successful latencies; at the last one, set the latency reference (under the lock)."""
        self._learning.append(latency_ms)
        self._learn_left -= 1
        if not self._learn_left:
            served = float(np.percentile(self._learning, 95))
            if served > float(self.baseline.get("p95_ms", 0.0)):
                self.baseline["p95_ms"], self.baseline["p95_source"] = served, "served"
            self._learning = []

    @property
    def latency_reference_ms(self) -> float | None:
        """The p95 the latency rule holds the window to: the release baseline's, or the served one learned."""
        if self._learn_left:
            return None
        return float(self.baseline["p95_ms"]) if "p95_ms" in self.baseline else None

    def record_inputs(self, inputs: Mapping[str, Any], max_values: int = 4096) -> None:
        """Count a request's input values into the bins of the baseline's `input_profile` (nothing without one).
        Kept apart from `record` because it costs numpy work (8 us for a digits image, 35 us for a 3x224x224 one
        on the 2-core test machine); large inputs are subsampled evenly to at most `max_values` values each."""
        if not self._input_binners:
            return
        binned = {}
        for name, (input_name, binner) in self._input_binners.items():
            if input_name in inputs:
                binned[name] = binner(np.asarray(inputs[input_name]), max_values)
        now = self._now()
        with self._lock:
            if now - self._current.start >= self._slice_s:
                self._rotate(now)
            for part in (self._current, self._lifetime):
                part.inputs_recorded += 1
                add_bins(part.input_bins, binned)

    def record_ground_truth(self, request_id: str, label: Any) -> bool:
        """Match a late label to its request; False when the request is unknown or already labelled."""
        with self._lock:
            prediction = self._pending.pop(request_id, None)
            if prediction is None:
                return False
            for part in (self._current, self._lifetime):
                part.labelled += 1
                part.correct += int(prediction == label)
            return True

    def metrics(self) -> dict[str, Any]:
        """Window and lifetime figures; evaluates the alert rules."""
        with self._lock:
            now = self._now()
            if now - self._current.start >= self._slice_s:  # no traffic since: the window still moves on
                self._rotate(now)
            self._expire(now)
            window = self._merge([*self._slices, self._current])
            result = self._figures(window, now - max(self._started, now - self.window_s))
            result["lifetime"] = self._figures(self._lifetime, now - self._started)
            expected = self.baseline.get("class_distribution")
            result["drift_psi"] = (population_stability_index(expected, window.predictions)
                                   if expected and window.predictions else None)
            result["input_drift_psi"] = self._input_drift(window)
            result["input_drift_requests"] = window.inputs_recorded
            result["latency_reference_ms"] = self.latency_reference_ms
            self._evaluate(window, result, now)
        result["alerts"] = [a.type for a in self._active.values()]
        return result

    def alerts(self) -> list[Alert]:
        """Every alert raised so far (firing ones and resolved ones), oldest first."""
        self.metrics()
        return list(self._history)

    def report(self) -> str:
        m = self.metrics()
        lat = m["latency_ms"]
        accuracy = "n/a" if m["accuracy"] is None else f"{m['accuracy']:.2%} ({m['labelled']} labels)"
        lines = [f"monitor {self.model_name} (window {self.window_s:g} s)",
                 f"  requests {m['requests']}  samples {m['samples']}  errors {m['errors']} "
                 f"({m['error_rate']:.2%})",
                 f"  latency ms  mean {lat['mean']:.3f}  p50 {lat['p50']:.3f}  p95 {lat['p95']:.3f}  "
                 f"p99 {lat['p99']:.3f}  max {lat['max']:.3f}" if m["requests"] else "  latency: no requests",
                 f"  throughput {m['throughput_rps']:.1f} req/s, {m['throughput_samples_per_s']:.1f} samples/s",
                 f"  accuracy {accuracy}"]
        for alert in self._history[-5:]:
            lines.append(f"  alert {alert.type} {alert.state}: {alert.message}")
        return "\n".join(lines)

    def _now(self) -> float:
        """The clock, never going back: a clock stepped back (NTP, a VM restored) counts as no time passing,
        instead of turning window arithmetic negative."""
        self._latest = max(self._latest, self.clock())
        return self._latest

    def _slice_start(self, now: float) -> float:
        return math.floor(now / self._slice_s) * self._slice_s

    def _rotate(self, now: float) -> None:
        self._slices.append(self._current)
        self._current = _Slice(self._slice_start(now))
        self._expire(now)
        window = self._merge([*self._slices])
        self._evaluate(window, self._figures(window, self.window_s), now)
        if window.requests:
            self._window_p95_history.append(self._percentile(window.histogram, window.requests, 95))

    def _expire(self, now: float) -> None:
        while self._slices and self._slices[0].start <= now - self.window_s:
            self._slices.popleft()

    @staticmethod
    def _merge(parts: Sequence[_Slice]) -> _Slice:
        merged = _Slice(parts[0].start if parts else 0.0)
        for part in parts:
            merged.requests += part.requests
            merged.samples += part.samples
            merged.errors += part.errors
            merged.latency_sum += part.latency_sum
            merged.latency_max = max(merged.latency_max, part.latency_max)
            merged.histogram.update(part.histogram)
            merged.error_types.update(part.error_types)
            merged.predictions.update(part.predictions)
            merged.labelled += part.labelled
            merged.correct += part.correct
            merged.inputs_recorded += part.inputs_recorded
            merged.sequences += part.sequences
            merged.tpot_sum += part.tpot_sum
            merged.tpot_max = max(merged.tpot_max, part.tpot_max)
            merged.tpot_histogram.update(part.tpot_histogram)
            add_bins(merged.input_bins, part.input_bins)
        return merged

    def _input_drift(self, window: _Slice) -> dict[str, float]:
        """PSI of each profiled input in the window against the calibration data's; none before the window holds
        `min_drift_requests` requests with inputs recorded (a PSI of three requests measures nothing)."""
        if window.inputs_recorded < self.min_drift_requests:
            return {}
        return {name: population_stability_index(dict(enumerate(expected_fractions(self._input_profile, name))),
                                                 dict(enumerate(counts.tolist())))
                for name, counts in window.input_bins.items() if counts.sum()}

    @staticmethod
    def _percentile(histogram: Counter[int], total: int, q: float) -> float:
        """The q-th percentile from the histogram (of `total` > 0 requests), with numpy's linear-interpolation rank
        convention."""
        rank = q / 100 * (total - 1)
        lower, upper = math.floor(rank), math.ceil(rank)
        values, seen = {}, 0
        for index in sorted(histogram):
            count = histogram[index]
            for wanted in (lower, upper):
                if wanted not in values and seen <= wanted < seen + count:
                    values[wanted] = _bucket_value(index)
            seen += count
            if upper in values:
                break
        return values[lower] + (values[upper] - values[lower]) * (rank - lower)

    def _figures(self, part: _Slice, elapsed_s: float) -> dict[str, Any]:
        elapsed_s = max(elapsed_s, 1e-9)
        total = part.requests
        generation = {"sequences": part.sequences, "tokens_per_s": part.samples / elapsed_s,
                      "tpot_ms": self._summary(part.tpot_histogram, part.sequences, part.tpot_sum, part.tpot_max)
                      } if part.sequences else {}
        return {
            "requests": total, "samples": part.samples, "errors": part.errors,
            "error_rate": part.errors / total if total else 0.0, "errors_by_type": dict(part.error_types),
            "throughput_rps": total / elapsed_s, "throughput_samples_per_s": part.samples / elapsed_s,
            "accuracy": part.correct / part.labelled if part.labelled else None, "labelled": part.labelled,
            "predictions": dict(part.predictions),
            "latency_ms": self._summary(part.histogram, total, part.latency_sum, part.latency_max),
            **({"generation": generation} if generation else {}),
        }

    def _summary(self, histogram: Counter[int], total: int, total_ms: float, max_ms: float) -> dict[str, float]:
        """Mean, p50, p95, p99 and max of `total` recorded milliseconds; NaN when idle (no latency, not 0)."""
        if not total:
            return dict.fromkeys(("mean", "p50", "p95", "p99", "max"), math.nan)
        return {"mean": total_ms / total, "p50": self._percentile(histogram, total, 50),
                "p95": self._percentile(histogram, total, 95), "p99": self._percentile(histogram, total, 99),
                "max": max_ms}

    def _evaluate(self, window: _Slice, figures: dict[str, Any], now: float) -> None:
        for rule in self.rules:
            condition = self._condition(rule, window, figures)
            if condition is None and window.requests == 0 and rule.type in self._active:
                condition = (False, 0.0, self._active[rule.type].threshold, "")  # idle: nothing is going wrong
            if condition is None:
                continue
            breached, value, threshold, subject = condition
            active = self._active.get(rule.type)
            if breached and active is None:
                if now - self._last_resolved.get(rule.type, -math.inf) < rule.cooldown_s:
                    continue
                alert = Alert(rule.type, rule.severity, value, threshold, now, now, model=self.model_name,
                              message=f"{self.model_name}: {rule.type}{subject} {value:.4g} beyond {threshold:.4g}")
                self._active[rule.type] = alert
                self._history.append(alert)
                self._emit(alert)
            elif breached and active is not None:
                active.last_seen, active.value = now, value
            elif not breached and active is not None:
                active.state, active.last_seen = "resolved", now
                del self._active[rule.type]
                self._last_resolved[rule.type] = now
                self._emit(active)

    def _condition(self, rule: Rule, window: _Slice, figures: dict[str, Any]
                   ) -> tuple[bool, float, float, str] | None:
        """(breached, value, threshold, what it concerns) of one rule on the window; None when it cannot be
        judged (too few samples, or no baseline figure to hold it to)."""
        if rule.type == "latency":
            if window.requests < rule.min_samples or self._learn_left:
                return None
            p95 = figures["latency_ms"]["p95"]
            limits = []
            if "p95_ms" in self.baseline:
                limits.append(rule.factor * float(self.baseline["p95_ms"]))
            if self._window_p95_history:
                limits.append(rule.factor * sum(self._window_p95_history) / len(self._window_p95_history))
            if not limits:
                return None
            limit = max(limits)
            return p95 > limit, p95, limit, ""
        if rule.type == "error_rate":
            if window.requests < rule.min_samples:
                return None
            return figures["error_rate"] > rule.threshold, figures["error_rate"], rule.threshold, ""
        if rule.type == "accuracy":
            if window.labelled < rule.min_samples or "accuracy" not in self.baseline:
                return None
            floor = float(self.baseline["accuracy"]) - rule.threshold
            return figures["accuracy"] < floor, figures["accuracy"], floor, ""
        if rule.type == "drift":
            expected = self.baseline.get("class_distribution")
            counted = sum(window.predictions.values())
            if not expected or counted < rule.min_samples:
                return None
            psi = population_stability_index(expected, window.predictions)
            return psi > rule.threshold, psi, rule.threshold, ""
        if rule.type == "input_drift":
            drift = self._input_drift(window)
            if not drift or window.inputs_recorded < rule.min_samples:
                return None
            name, psi = max(drift.items(), key=lambda item: item[1])
            return psi > rule.threshold, psi, rule.threshold, f" of input {name!r}"
        return None

    def _emit(self, alert: Alert) -> None:
        LOGGER.warning("alert %s %s: %s", alert.type, alert.state, alert.message)
        for sink in self.sinks:
            try:
                sink(alert)
            except Exception:  # a broken sink must never break recording
                LOGGER.exception("alert sink %r failed", sink)


