"""Latency and throughput measurement that holds on a shared, noisy machine.

Discipline: inputs are prepared before timing and only the inference call is timed; outputs are materialised
(numpy arrays, so lazy runtimes cannot cheat); a warm-up precedes timing; thread counts are fixed (1 intra-op
thread by default, for both torch and ONNX Runtime) and recorded; the garbage collector is off while timing;
measurement stops when the median of the last three windows agrees within `stable_within`, or at a time cap,
and says which. Comparisons are made side by side (A B A B ...) in one run, as ratios with an interval, never
against an absolute time from another run.

Neighbours on a shared host do not time-slice us (that would only lengthen the tail): they slow every
instruction for 0.05 to a few seconds at a time (a busy sibling hyperthread or a thrashed cache on the host),
which moves the median itself by up to 2x. `bench` therefore interleaves a fixed reference workload
(`ReferenceWorkload`) with the model in blocks of a tenth of a window (an eighth of the model's time each), so
both see the same machine; a window in which the reference ran more than `disturbed_above` slower than the
fastest it has run in this process is left out of the statistics and measuring goes on, up to `patience` times
the time cap, until enough undisturbed windows were collected. The number of windows left out is reported with
every result, and the kept reference times go with it, so a baseline can be normalised by the machine's speed.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from deploycheck.artifact import Artifact
from deploycheck.errors import FormatUnavailable
from deploycheck.exporting import load_artifact
from deploycheck.formats import get_format
from deploycheck.machine import ReferenceWorkload, environment, gc_paused, reference_workload, torch_threads
from deploycheck.stats import bootstrap_ratio_interval, compact_quantiles
from deploycheck.table import format_table


@dataclass
class LatencyStats:
    """Per batch size: latencies in ms, throughput in samples/s from wall time, and how the run went: `rounds`
    windows in the statistics, `disturbed_rounds` left out because the reference ran slow in them,
    `all_disturbed` when no window was undisturbed (so every one was kept), and `window_spread`, how much the
    median moved from one kept window to the next (relative; see `window_spread`): the noise of this
    measurement, which a verdict against stored figures must exceed."""

    batch_size: int
    p50_ms: float
    p90_ms: float
    p95_ms: float
    p99_ms: float
    mean_ms: float
    max_ms: float
    min_ms: float
    stddev_ms: float
    iqr_ms: float
    cv: float
    throughput_per_s: float
    calls: int
    rounds: int
    stabilised: bool
    disturbed_rounds: int = 0
    all_disturbed: bool = False
    window_spread: float = 0.0
    samples_ms: list[float] = field(repr=False, default_factory=list)
    reference_samples_ms: list[float] = field(repr=False, default_factory=list)

    @property
    def reference_p50_ms(self) -> float | None:
        """Median time of the fixed reference workload timed between this batch size's windows (None if not)."""
        return float(np.median(self.reference_samples_ms)) if self.reference_samples_ms else None

    @classmethod
    def from_samples(cls, batch_size: int, samples_s: Sequence[float], wall_s: float, rounds: int,
                     stabilised: bool, reference_s: Sequence[float] = (), disturbed_rounds: int = 0,
                     all_disturbed: bool = False, spread: float = 0.0) -> LatencyStats:
        ms = np.asarray(samples_s, np.float64) * 1e3
        p25, p50, p75, p90, p95, p99 = np.percentile(ms, [25, 50, 75, 90, 95, 99])
        mean = float(ms.mean())
        stddev = float(ms.std(ddof=1)) if len(ms) > 1 else 0.0
        return cls(batch_size, float(p50), float(p90), float(p95), float(p99), mean, float(ms.max()),
                   float(ms.min()), stddev, float(p75 - p25), stddev / mean if mean else 0.0,
                   batch_size * len(ms) / wall_s if wall_s > 0 else 0.0, len(ms), rounds, stabilised,
                   disturbed_rounds, all_disturbed, spread, [round(float(v), 4) for v in ms],
                   [round(float(v) * 1e3, 4) for v in reference_s])

    def to_dict(self, with_samples: bool = False) -> dict[str, Any]:
        data = asdict(self)
        if not with_samples:
            for key in ("samples_ms", "reference_samples_ms"):
                data.pop(key)
        return data

    def compact(self) -> dict[str, Any]:
        """What a baseline keeps: the summary figures plus `QUANTILES` evenly spaced order statistics of the
        latencies and of the reference workload, enough for a significance test at a few hundred bytes."""
        data = {key: float(f"{value:.4g}") if isinstance(value, float) else value
                for key, value in self.to_dict().items()}
        data["quantiles_ms"] = compact_quantiles(self.samples_ms)
        if self.reference_samples_ms:
            data["reference_p50_ms"] = float(f"{self.reference_p50_ms:.4g}")
            data["reference_calls"] = len(self.reference_samples_ms)
            data["reference_quantiles_ms"] = compact_quantiles(self.reference_samples_ms)
        return data


@dataclass
class BenchResult:
    """What `bench` measured: `stats[batch_size]`, the settings, the environment record, and `skipped`: batch
    sizes left out, with the reason (one call longer than the time allowed, with `skip_slower=True`)."""

    model: str
    format: str
    stats: dict[int, LatencyStats]
    threads: int
    device: str
    environment: dict[str, Any]
    load_rss_bytes: int | None = None
    skipped: dict[int, str] = field(default_factory=dict)

    def to_dict(self, with_samples: bool = False) -> dict[str, Any]:
        return {"model": self.model, "format": self.format, "threads": self.threads, "device": self.device,
                "skipped": {str(b): reason for b, reason in self.skipped.items()},
                "environment": self.environment, "load_rss_bytes": self.load_rss_bytes,
                "stats": {str(b): s.to_dict(with_samples) for b, s in self.stats.items()}}

    def __str__(self) -> str:
        rows = [[str(b), f"{s.p50_ms:.3f}", f"{s.p90_ms:.3f}", f"{s.p99_ms:.3f}", f"{s.max_ms:.3f}", f"{s.cv:.2f}",
                 f"{s.throughput_per_s:.0f}", str(s.calls), "yes" if s.stabilised else "no (time cap)",
                 "all (kept)" if s.all_disturbed else str(s.disturbed_rounds)]
                for b, s in sorted(self.stats.items())]
        return (f"latency of {self.model}/{self.format} ({self.device}, {self.threads} thread(s))\n"
                + format_table(["batch", "p50 ms", "p90 ms", "p99 ms", "max ms", "cv", "samples/s", "calls",
                                "stabilised", "disturbed windows left out"], rows))


# Two artifacts of equal cost (the digits CNN and its 50% unstructured-pruned twin in ONNX Runtime) measured
# 1.02x [1.02, 1.02] apart on a shared 2-core CI runner, and 0.99-1.00x here: a run's interval holds the noise of
# its own pairs, not what sets one run apart from the next.
SAME_SPEED_WITHIN = 0.05


def speed_claim(low: float, high: float) -> str | None:
    """What may be said of b against a from the interval of a's time over b's: "faster" when the whole interval
    lies above a 5% gain (`SAME_SPEED_WITHIN`), "slower" when it lies below a 5% loss, else nothing."""
    if low > 1 + SAME_SPEED_WITHIN:
        return "faster"
    if high < 1 - SAME_SPEED_WITHIN:
        return "slower"
    return None


@dataclass
class SpeedRatio:
    """a's median time over b's, with a bootstrap confidence interval: above 1 means a is slower than b."""

    a: str
    b: str
    ratio: float
    low: float
    high: float
    confidence: float
    a_p50_ms: float
    b_p50_ms: float
    pairs: int

    @property
    def speedup(self) -> float:
        """How many times faster b is than a (the ratio itself, named for reading)."""
        return self.ratio

    def excludes_one(self) -> bool:
        return self.low > 1.0 or self.high < 1.0

    def __str__(self) -> str:
        return (f"{self.a} / {self.b} median time ratio {self.ratio:.3f} "
                f"[{self.low:.3f}, {self.high:.3f}] ({self.confidence:.0%} CI, {self.pairs} interleaved pairs; "
                f"p50 {self.a_p50_ms:.3f} ms vs {self.b_p50_ms:.3f} ms)")


def timed_runner(artifact: Artifact, threads: int, device: str) -> Artifact:
    """The artifact ready to time with fixed thread counts on `device`: reloaded from disk when its runtime fixes
    threads at load time (ONNX Runtime) or it is to run on another device, else as it is (torch's thread count is
    set by the caller, `torch_threads`; reloading a large torch program costs seconds). Runners return host numpy
    arrays, so a timed call on a GPU includes its synchronisation."""
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        raise FormatUnavailable(f"{artifact.model_name}/{artifact.format}: device='cuda' asked for, but torch sees "
                                "no CUDA device")
    reload = device != "cpu" or get_format(artifact.format).threads_fixed_at_load
    if artifact.path.is_dir() and reload:
        # loaded once already in this process, so its code (if any) was trusted then
        return load_artifact(artifact.path, spec=artifact.spec, trust_code=True, intra_op_threads=threads,
                             inter_op_threads=1, device=device)
    return artifact


def bench_inputs(artifact: Artifact, batch_size: int) -> list[np.ndarray]:
    """Real inputs from the spec when there is one; otherwise seeded random values of the declared shapes."""
    if artifact.spec is not None:
        return artifact.prepare_inputs(artifact.spec.sample_inputs(batch_size))
    rng = np.random.default_rng(0)
    arrays = []
    for tensor in artifact.inputs:
        shape = [batch_size if size is None else size for size in tensor.shape]
        arrays.append(rng.standard_normal(shape).astype(tensor.dtype))
    return artifact.prepare_inputs(arrays)


@dataclass
class Window:
    """One timing window: the model's call times, the wall time of its blocks, and the reference workload's call
    times from the blocks interleaved with them."""

    samples_s: list[float]
    wall_s: float
    reference_samples_s: list[float]

    @property
    def median_s(self) -> float:
        return float(np.median(self.samples_s))

    @property
    def reference_median_s(self) -> float:
        return float(np.median(self.reference_samples_s))


def undisturbed(windows: Sequence[Window], fastest_reference_s: float, disturbed_above: float | None
                ) -> list[Window]:
    """The windows in which the reference ran within `disturbed_above` of its fastest (all of them when
    `disturbed_above` is None)."""
    if disturbed_above is None:
        return list(windows)
    limit = fastest_reference_s * (1 + disturbed_above)
    return [w for w in windows if w.reference_median_s <= limit]


def window_spread(windows: Sequence[Window]) -> float:
    """Half the spread between the 16th and 84th percentile of the windows' median latencies, relative to their
    median (one standard deviation for normal data, robust to a stray window): how far a median measured in one
    window of this run would move in the next. 0 with fewer than three windows."""
    if len(windows) < 3:
        return 0.0
    medians = np.array([w.median_s for w in windows])
    low, centre, high = np.percentile(medians, [16, 50, 84])
    return float((high - low) / 2 / centre) if centre > 0 else 0.0


def _timed_window(timed: Artifact, inputs: list[np.ndarray], reference: ReferenceWorkload, window_s: float,
                  call_s: float) -> Window:
    """Blocks of model calls, each followed by an eighth as long of reference calls: ten blocks, or as many as
    hold two calls each (one, for a call longer than half the window: the window is then that one call). The
    first model call of a block runs untimed (the reference has just used the cache) unless a call is long
    enough for a cold cache not to matter; the first reference call is always untimed."""
    samples: list[float] = []
    reference_samples: list[float] = []
    wall = 0.0
    blocks = max(1, min(10, int(window_s / (2 * call_s))))
    block_s = window_s / blocks
    settle = call_s < block_s / 4
    for _ in range(blocks):
        if settle:
            _call(timed, inputs)
        block_start = time.perf_counter()
        block_end = block_start + block_s
        samples.append(_call(timed, inputs))
        while time.perf_counter() < block_end:
            samples.append(_call(timed, inputs))
        wall += time.perf_counter() - block_start
        reference_samples.extend(reference.run_for(block_s / 8))
    return Window(samples, wall, reference_samples)


def _warm_up(timed: Artifact, inputs: list[np.ndarray], warmup_s: float) -> float:
    """Untimed calls for `warmup_s`, and at least one; returns the fastest, the cost of a call that sizes the
    timing windows (so a model whose call takes seconds is warmed once, not three times)."""
    end = time.perf_counter() + warmup_s
    costs = [_call(timed, inputs)]
    while time.perf_counter() < end:
        costs.append(_call(timed, inputs))
    return min(costs)


def _call(artifact: Artifact, inputs: list[np.ndarray]) -> float:
    """One timed inference; runners return materialised numpy arrays, so the work is done when it returns."""
    start = time.perf_counter()
    artifact.runner(inputs)
    return time.perf_counter() - start


def bench(artifact: Artifact, batch_sizes: Sequence[int] = (1, 8, 32), max_time_s: float = 1.0,
          min_time_s: float | None = None, warmup_s: float = 0.1, threads: int = 1, device: str = "cpu",
          windows: int = 10, stable_within: float = 0.03, disturbed_above: float | None = 0.15,
          patience: float = 5.0, skip_slower: bool = False) -> BenchResult:
    """Measure latency and throughput per batch size (see the module docstring for the discipline).

    Time is counted in undisturbed windows: measuring stops once their medians agree (after `min_time_s`) or
    once they add up to `max_time_s`, and in any case after `patience * max_time_s` of wall time; if no window
    was undisturbed by then, every window is used (and the result says it did not stabilise).
    `disturbed_above=None` keeps every window, for a picture of the machine as it is. `skip_slower` leaves out a
    batch size whose warm-up call alone took longer than `max_time_s` (a time budget then holds to one call per
    batch size), and says so in `BenchResult.skipped`.
    """
    with torch_threads(threads):
        return _bench(artifact, batch_sizes, max_time_s, min_time_s, warmup_s, threads, device, windows,
                      stable_within, disturbed_above, patience, skip_slower)


def _bench(artifact: Artifact, batch_sizes: Sequence[int], max_time_s: float, min_time_s: float | None,
           warmup_s: float, threads: int, device: str, windows: int, stable_within: float,
           disturbed_above: float | None, patience: float, skip_slower: bool) -> BenchResult:
    rss_before = _rss_bytes()
    timed = timed_runner(artifact, threads, device)
    rss_after = _rss_bytes()
    reference = reference_workload()
    min_time_s = max_time_s / 3 if min_time_s is None else min_time_s
    window_s = max_time_s / windows
    stats = {}
    skipped = {}
    for batch_size in batch_sizes:
        inputs = bench_inputs(timed, batch_size)
        call_s = _warm_up(timed, inputs, warmup_s)
        if skip_slower and call_s > max_time_s:
            skipped[batch_size] = f"one call takes {call_s * 1e3:.0f} ms, over the {max_time_s * 1e3:.0f} ms allowed"
            continue
        measured: list[Window] = []
        quiet: list[Window] = []
        stabilised = False
        with gc_paused():
            started = time.perf_counter()
            while True:
                measured.append(_timed_window(timed, inputs, reference, window_s, call_s))
                reference.fastest_median_s = min(reference.fastest_median_s, measured[-1].reference_median_s)
                quiet = undisturbed(measured, reference.fastest_median_s, disturbed_above)
                quiet_s = sum(w.wall_s for w in quiet)
                last = [w.median_s for w in quiet[-3:]]
                if len(last) == 3 and max(last) / min(last) - 1 <= stable_within and quiet_s >= min_time_s:
                    stabilised = True
                    break
                if quiet_s >= max_time_s or time.perf_counter() - started >= patience * max_time_s:
                    break
        used = quiet or measured
        stats[batch_size] = LatencyStats.from_samples(
            batch_size, [t for w in used for t in w.samples_s], sum(w.wall_s for w in used), len(used), stabilised,
            [t for w in used for t in w.reference_samples_s], len(measured) - len(used), not quiet,
            window_spread(used))
    rss = rss_after - rss_before if rss_before is not None and rss_after is not None else None
    return BenchResult(artifact.model_name, artifact.format, stats, threads, device, environment(threads, device),
                       rss, skipped)


def compare_speed(a: Artifact, b: Artifact, batch_size: int = 1, max_time_s: float = 2.0, threads: int = 1,
                  device: str = "cpu", confidence: float = 0.99, max_pairs: int = 2000, resamples: int = 2000,
                  seed: int = 0) -> SpeedRatio:
    """Run a and b interleaved on the same inputs and return the ratio of median times (a over b), with a
    bootstrap confidence interval (see `interleaved_times`). The 99% default keeps "same speed" verdicts
    stable over many runs: a 95% interval misses a true ratio of 1 once in twenty by construction."""
    times_a, times_b = interleaved_times(a, b, batch_size, max_time_s, threads, device, max_pairs)
    low, high = bootstrap_ratio_interval(times_a, times_b, confidence, resamples, seed)
    return SpeedRatio(f"{a.model_name}/{a.format}", f"{b.model_name}/{b.format}",
                      float(np.median(times_a) / np.median(times_b)), low, high, confidence,
                      float(np.median(times_a) * 1e3), float(np.median(times_b) * 1e3), len(times_a))


def interleaved_times(a: Artifact, b: Artifact, batch_size: int = 1, max_time_s: float = 2.0, threads: int = 1,
                      device: str = "cpu", max_pairs: int = 2000) -> tuple[np.ndarray, np.ndarray]:
    """Per-call times in seconds of a and b run interleaved on the same inputs, pair by pair. The order
    alternates A B B A, so neither side always runs first, and drifts of the machine hit both alike. The same
    artifact given twice shares one loaded runtime."""
    with torch_threads(threads):
        return _interleaved_times(a, b, batch_size, max_time_s, threads, device, max_pairs)


def _interleaved_times(a: Artifact, b: Artifact, batch_size: int, max_time_s: float, threads: int, device: str,
                       max_pairs: int) -> tuple[np.ndarray, np.ndarray]:
    timed_a = timed_runner(a, threads, device)
    timed_b = timed_a if b is a or b.path == a.path else timed_runner(b, threads, device)
    inputs_a, inputs_b = bench_inputs(timed_a, batch_size), bench_inputs(timed_b, batch_size)
    for _ in range(2):
        _warm_up(timed_a, inputs_a, 0.05)
        _warm_up(timed_b, inputs_b, 0.05)
    times_a: list[float] = []
    times_b: list[float] = []
    with gc_paused():
        started = time.perf_counter()
        while True:
            elapsed = time.perf_counter() - started
            enough = elapsed >= max_time_s or len(times_a) >= max_pairs
            # 20 pairs at least for the interval, unless that would take over three times the time asked for
            if enough and (len(times_a) >= 20 or elapsed >= 3 * max_time_s) and len(times_a) >= 3:
                break
            if len(times_a) % 2:
                times_b.append(_call(timed_b, inputs_b))
                times_a.append(_call(timed_a, inputs_a))
            else:
                times_a.append(_call(timed_a, inputs_a))
                times_b.append(_call(timed_b, inputs_b))
    return np.array(times_a), np.array(times_b)


def _rss_bytes() -> int | None:
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return None
