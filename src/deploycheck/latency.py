"""Latency and throughput measurement that holds on a shared, noisy machine.

Discipline: inputs are prepared before timing and only the inference call is timed; outputs are materialised
(numpy arrays, so lazy runtimes cannot cheat); a warm-up precedes timing; thread counts are fixed (1 intra-op
thread by default, for both torch and ONNX Runtime) and recorded; the garbage collector is off while timing;
measurement stops when the median of the last three windows agrees within `stable_within`, or at a time cap,
and says which. Comparisons are made side by side (A B A B ...) in one run, as ratios with an interval, never
against an absolute time from another run.
"""

from __future__ import annotations

import gc
import os
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from deploycheck.artifact import Artifact, load_artifact, package_versions
from deploycheck.errors import FormatUnavailable

CPU_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "fma", "f16c", "sse4_2", "asimd")


@dataclass
class LatencyStats:
    """Per batch size: latencies in ms, throughput in samples/s from wall time, and how the run went."""

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
    samples_ms: list[float] = field(repr=False, default_factory=list)
    reference_samples_ms: list[float] = field(repr=False, default_factory=list)

    @property
    def reference_p50_ms(self) -> float | None:
        """Median time of the fixed reference workload timed between this batch size's windows (None if not)."""
        return float(np.median(self.reference_samples_ms)) if self.reference_samples_ms else None

    @classmethod
    def from_samples(cls, batch_size: int, samples_s: Sequence[float], wall_s: float, rounds: int,
                     stabilised: bool, reference_s: Sequence[float] = ()) -> LatencyStats:
        ms = np.asarray(samples_s, np.float64) * 1e3
        p25, p50, p75, p90, p95, p99 = np.percentile(ms, [25, 50, 75, 90, 95, 99])
        mean = float(ms.mean())
        stddev = float(ms.std(ddof=1)) if len(ms) > 1 else 0.0
        return cls(batch_size, float(p50), float(p90), float(p95), float(p99), mean, float(ms.max()),
                   float(ms.min()), stddev, float(p75 - p25), stddev / mean if mean else 0.0,
                   batch_size * len(ms) / wall_s if wall_s > 0 else 0.0, len(ms), rounds, stabilised,
                   [round(float(v), 4) for v in ms], [round(float(v) * 1e3, 4) for v in reference_s])

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


QUANTILES = 50


def compact_quantiles(samples: Sequence[float], count: int = QUANTILES) -> list[float]:
    """`count` order statistics at the midpoints of equal probability slices, to 4 significant digits."""
    if not len(samples):
        return []
    points = np.percentile(np.asarray(samples, np.float64), (np.arange(count) + 0.5) * 100 / count)
    return [float(f"{value:.4g}") for value in points]


@dataclass
class BenchResult:
    """What `bench` measured: `stats[batch_size]`, the settings, and the environment record."""

    model: str
    format: str
    stats: dict[int, LatencyStats]
    threads: int
    device: str
    environment: dict[str, Any]
    load_rss_bytes: int | None = None

    def to_dict(self, with_samples: bool = False) -> dict[str, Any]:
        return {"model": self.model, "format": self.format, "threads": self.threads, "device": self.device,
                "environment": self.environment, "load_rss_bytes": self.load_rss_bytes,
                "stats": {str(b): s.to_dict(with_samples) for b, s in self.stats.items()}}

    def __str__(self) -> str:
        from deploycheck.parity import format_table

        rows = [[str(b), f"{s.p50_ms:.3f}", f"{s.p90_ms:.3f}", f"{s.p99_ms:.3f}", f"{s.max_ms:.3f}", f"{s.cv:.2f}",
                 f"{s.throughput_per_s:.0f}", str(s.calls), "yes" if s.stabilised else "no (time cap)"]
                for b, s in sorted(self.stats.items())]
        return (f"latency of {self.model}/{self.format} ({self.device}, {self.threads} thread(s))\n"
                + format_table(["batch", "p50 ms", "p90 ms", "p99 ms", "max ms", "cv", "samples/s", "calls",
                                "stabilised"], rows))


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


def environment(threads: int, device: str = "cpu") -> dict[str, Any]:
    """CPU model, core count, instruction-set flags, versions and thread settings, stored with every result."""
    model = platform.processor() or ""
    flags: set[str] = set()
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and not model:
                    model = value.strip()
                elif key.strip() in ("flags", "Features") and not flags:
                    flags = set(value.split())
    except OSError:
        pass
    return {"cpu": model or platform.machine(), "cores": os.cpu_count(), "machine": platform.machine(),
            "cpu_flags": [f for f in CPU_FLAGS if f in flags], "versions": package_versions(),
            "threads": {"intra_op": threads, "inter_op": 1}, "device": device, "platform": platform.platform()}


def timed_runner(artifact: Artifact, threads: int, device: str) -> Artifact:
    """The artifact reloaded with fixed thread counts (and device); torch's own thread count is set as well.
    Runners return host numpy arrays, so a timed call on a GPU includes its synchronisation."""
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        raise FormatUnavailable(f"{artifact.model_name}/{artifact.format}: device='cuda' asked for, but torch sees "
                                "no CUDA device")
    torch.set_num_threads(threads)
    if artifact.path.is_dir():
        return load_artifact(artifact.path, spec=artifact.spec, intra_op_threads=threads, inter_op_threads=1,
                             device=device)
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


class ReferenceWorkload:
    """A fixed ONNX Runtime workload (a chain of 256-wide MatMul + Relu, seeded weights, one thread) timed between
    the model's windows. Its speed tracks the machine's speed at that moment, so a latency divided by it can be
    compared with one recorded on another machine or on a busier day."""

    WIDTH = 256
    LAYERS = 4

    def __init__(self) -> None:
        import onnx
        import onnxruntime as ort
        from onnx import TensorProto, helper, numpy_helper

        rng = np.random.default_rng(0)
        nodes, weights, previous = [], [], "x"
        for layer in range(self.LAYERS):
            weight = (rng.standard_normal((self.WIDTH, self.WIDTH)) / np.sqrt(self.WIDTH)).astype(np.float32)
            weights.append(numpy_helper.from_array(weight, f"w{layer}"))
            nodes.append(helper.make_node("MatMul", [previous, f"w{layer}"], [f"m{layer}"]))
            nodes.append(helper.make_node("Relu", [f"m{layer}"], [f"r{layer}"]))
            previous = f"r{layer}"
        graph = helper.make_graph(
            nodes, "deploycheck_reference", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [8, self.WIDTH])],
            [helper.make_tensor_value_info(previous, TensorProto.FLOAT, [8, self.WIDTH])], weights)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        model.ir_version = 8
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        onnx.checker.check_model(model)
        self._session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        self._feed = {"x": rng.standard_normal((8, self.WIDTH)).astype(np.float32)}
        for _ in range(10):
            self()

    def __call__(self) -> float:
        start = time.perf_counter()
        self._session.run(None, self._feed)
        return time.perf_counter() - start


def _call(artifact: Artifact, inputs: list[np.ndarray]) -> float:
    """One timed inference; runners return materialised numpy arrays, so the work is done when it returns."""
    start = time.perf_counter()
    artifact.runner(inputs)
    return time.perf_counter() - start


def bench(artifact: Artifact, batch_sizes: Sequence[int] = (1, 8, 32), max_time_s: float = 1.0,
          min_time_s: float | None = None, warmup_s: float = 0.1, threads: int = 1, device: str = "cpu",
          windows: int = 10, stable_within: float = 0.03, reference: bool = False) -> BenchResult:
    """Measure latency and throughput per batch size (see the module docstring for the discipline).

    With `reference=True`, a `ReferenceWorkload` is timed for a quarter of each window's time after each
    window, so every batch size carries the machine's speed at the moment it was measured (for baselines).
    """
    rss_before = _rss_bytes()
    timed = timed_runner(artifact, threads, device)
    rss_after = _rss_bytes()
    workload = ReferenceWorkload() if reference else None
    min_time_s = max_time_s / 3 if min_time_s is None else min_time_s
    stats = {}
    for batch_size in batch_sizes:
        inputs = bench_inputs(timed, batch_size)
        warm_end = time.perf_counter() + warmup_s
        for _ in range(3):
            _call(timed, inputs)
        while time.perf_counter() < warm_end:
            _call(timed, inputs)
        samples: list[float] = []
        reference_samples: list[float] = []
        medians: list[float] = []
        window_s = max_time_s / windows
        stabilised = False
        gc_was_enabled = gc.isenabled()
        gc.disable()
        try:
            started = time.perf_counter()
            wall = 0.0
            while True:
                window: list[float] = []
                window_start = time.perf_counter()
                window_end = window_start + window_s
                while time.perf_counter() < window_end or len(window) < 3:
                    window.append(_call(timed, inputs))
                wall += time.perf_counter() - window_start
                samples.extend(window)
                medians.append(float(np.median(window)))
                if workload is not None:
                    reference_end = time.perf_counter() + window_s / 4
                    while time.perf_counter() < reference_end:
                        reference_samples.append(workload())
                elapsed = time.perf_counter() - started
                last = medians[-3:]
                if len(last) == 3 and max(last) / min(last) - 1 <= stable_within and elapsed >= min_time_s:
                    stabilised = True
                    break
                if elapsed >= max_time_s:
                    break
        finally:
            if gc_was_enabled:
                gc.enable()
        stats[batch_size] = LatencyStats.from_samples(batch_size, samples, wall, len(medians), stabilised,
                                                      reference_samples)
    rss = rss_after - rss_before if rss_before is not None and rss_after is not None else None
    return BenchResult(artifact.model_name, artifact.format, stats, threads, device, environment(threads, device),
                       rss)


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
    timed_a = timed_runner(a, threads, device)
    timed_b = timed_a if b is a or b.path == a.path else timed_runner(b, threads, device)
    inputs_a, inputs_b = bench_inputs(timed_a, batch_size), bench_inputs(timed_b, batch_size)
    for _ in range(5):
        _call(timed_a, inputs_a)
        _call(timed_b, inputs_b)
    times_a: list[float] = []
    times_b: list[float] = []
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        end = time.perf_counter() + max_time_s
        while (time.perf_counter() < end and len(times_a) < max_pairs) or len(times_a) < 20:
            if len(times_a) % 2:
                times_b.append(_call(timed_b, inputs_b))
                times_a.append(_call(timed_a, inputs_a))
            else:
                times_a.append(_call(timed_a, inputs_a))
                times_b.append(_call(timed_b, inputs_b))
    finally:
        if gc_was_enabled:
            gc.enable()
    return np.array(times_a), np.array(times_b)


def bootstrap_ratio_interval(a: np.ndarray, b: np.ndarray, confidence: float = 0.95, resamples: int = 2000,
                             seed: int = 0, statistic: Callable[[np.ndarray], Any] | None = None
                             ) -> tuple[float, float]:
    """Percentile-bootstrap interval of statistic(a) / statistic(b) (default: the median; `statistic` reduces the
    last axis), resampling interleaved pairs together so that drifts shared by a neighbouring pair stay paired."""
    reduce = statistic or (lambda x: np.median(x, axis=-1))
    rng = np.random.default_rng(seed)
    index = rng.integers(0, len(a), size=(resamples, len(a)))
    ratios = reduce(a[index]) / reduce(b[index])
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(ratios, [tail, 100 - tail])
    return float(low), float(high)


def _rss_bytes() -> int | None:
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return None
