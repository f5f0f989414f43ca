"""Latency measurement on real runtimes: statistics are consistent, the environment is recorded, side-by-side
ratios separate different speeds and not identical ones. Speed goals themselves live in benchmarks/."""

from __future__ import annotations

import math
import time
from pathlib import Path
from types import SimpleNamespace

import deploycheck
from deploycheck.artifact import Artifact
from deploycheck.gate import Gate
from deploycheck.latency import Window, speed_claim, undisturbed
from deploycheck.stats import bootstrap_ratio_interval


def test_bench_reports_every_statistic_per_batch_size(digits_artifacts) -> None:
    result = deploycheck.bench(digits_artifacts["onnx"], batch_sizes=(1, 8), max_time_s=0.3)
    assert set(result.stats) == {1, 8}
    for batch_size, stats in result.stats.items():
        assert stats.batch_size == batch_size and stats.calls == len(stats.samples_ms) >= 3
        assert stats.min_ms <= stats.p50_ms <= stats.p90_ms <= stats.p95_ms <= stats.p99_ms <= stats.max_ms
        assert stats.iqr_ms >= 0 and stats.cv >= 0 and stats.rounds >= 1
        assert stats.throughput_per_s > 0
        assert stats.throughput_per_s <= batch_size / (stats.mean_ms / 1e3) * 1.001, "wall time includes the calls"
    assert result.threads == 1 and result.environment["threads"]["intra_op"] == 1
    assert result.environment["cores"] and result.environment["versions"]["onnxruntime"]
    assert "stabilised" in str(result)


def test_side_by_side_ratio_separates_eager_from_onnx_but_not_onnx_from_itself(digits_artifacts) -> None:
    eager_vs_onnx = deploycheck.compare_speed(digits_artifacts["eager"], digits_artifacts["onnx"], max_time_s=0.5)
    assert eager_vs_onnx.low <= eager_vs_onnx.ratio <= eager_vs_onnx.high
    assert eager_vs_onnx.excludes_one()
    itself = deploycheck.compare_speed(digits_artifacts["onnx"], digits_artifacts["onnx"], max_time_s=0.5)
    # the same runtime against itself: no difference beyond 1% (a 99% interval excludes a true ratio of exactly 1
    # once in a hundred runs by construction, so "contains 1" would be a flaky criterion)
    assert itself.low <= 1.01 and itself.high >= 0.99 and abs(itself.ratio - 1) < 0.01, str(itself)


def test_faster_or_slower_is_said_only_beyond_what_sets_two_runs_apart() -> None:
    assert speed_claim(1.06, 1.14) == "faster" and speed_claim(0.86, 0.94) == "slower"
    # 1.02x [1.02, 1.02]: the digits CNN and its equally costly unstructured-pruned twin, once, on a CI runner
    assert speed_claim(1.021, 1.026) is None and speed_claim(0.955, 0.965) is None
    assert speed_claim(0.9, 1.3) is None, "an interval across 1 says nothing"


def test_bootstrap_interval_covers_the_true_ratio() -> None:
    import numpy as np

    rng = np.random.default_rng(1)
    a = rng.lognormal(np.log(2.0), 0.2, 400)
    b = rng.lognormal(np.log(1.0), 0.2, 400)
    low, high = bootstrap_ratio_interval(a, b)
    assert low < 2.0 < high and high - low < 0.3


def test_reference_workload_and_load_memory_are_recorded(digits_artifacts) -> None:
    result = deploycheck.bench(digits_artifacts["torchscript"], batch_sizes=(1,), max_time_s=0.3)
    stats = result.stats[1]
    assert stats.reference_samples_ms and stats.reference_p50_ms > 0
    compact = stats.compact()
    assert len(compact["quantiles_ms"]) == len(compact["reference_quantiles_ms"]) == 50
    assert compact["quantiles_ms"] == sorted(compact["quantiles_ms"]) and compact["reference_calls"] > 0
    assert isinstance(result.load_rss_bytes, int), "the resident memory added by loading is measured"


def test_windows_in_which_the_reference_ran_slow_are_left_out() -> None:
    def window(*reference_ms: float) -> Window:
        return Window([2.7e-5] * 5, 0.1, [t / 1e3 for t in reference_ms])

    quiet, partly, slowed = window(0.070, 0.071, 0.100), window(0.070, 0.100, 0.101), window(0.100, 0.102, 0.099)
    windows = [quiet, partly, slowed, quiet]
    assert undisturbed(windows, fastest_reference_s=0.069e-3, disturbed_above=0.15) == [quiet, quiet]
    assert undisturbed(windows, fastest_reference_s=0.069e-3, disturbed_above=None) == windows
    assert undisturbed(windows, fastest_reference_s=0.060e-3, disturbed_above=0.15) == [], "all slower than seen"


def test_bench_accounts_for_every_window(digits_artifacts) -> None:
    everything = deploycheck.bench(digits_artifacts["onnx"], batch_sizes=(1,), max_time_s=0.3,
                                   disturbed_above=None).stats[1]
    assert everything.disturbed_rounds == 0 and everything.rounds >= 3
    assert everything.reference_samples_ms, "the reference runs between windows either way"
    filtered = deploycheck.bench(digits_artifacts["onnx"], batch_sizes=(1,), max_time_s=0.3).stats[1]
    assert filtered.rounds + filtered.disturbed_rounds >= 3 and filtered.calls == len(filtered.samples_ms)
    assert not filtered.stabilised or filtered.rounds >= 3, "stable means three undisturbed windows agreed"


def test_cuda_without_a_gpu_is_a_clear_refusal(digits_artifacts) -> None:
    import pytest
    import torch

    from deploycheck.errors import FormatUnavailable

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present: the refusal does not apply")
    with pytest.raises(FormatUnavailable, match="device='cuda' asked for, but torch sees no CUDA device"):
        deploycheck.bench(digits_artifacts["onnx"], batch_sizes=(1,), max_time_s=0.1, device="cuda")


def test_bench_on_cuda_is_synchronised_and_recorded(digits_artifacts) -> None:
    import pytest
    import torch

    if not torch.cuda.is_available():
        pytest.skip("no CUDA device on this machine")
    result = deploycheck.bench(digits_artifacts["torchscript"], batch_sizes=(1, 32), max_time_s=0.3, device="cuda")
    assert result.device == "cuda" and result.environment["device"] == "cuda"
    assert result.stats[32].p50_ms > 0 and result.stats[32].throughput_per_s > 0


def test_a_budget_shares_what_is_left_and_never_stops_timing_altogether() -> None:
    """Budget arithmetic with a fake clock: each timing of an artifact gets an even share of what is left of its
    budget, at most the bench time, and at least a sliver (one call) when nothing is left."""
    now = [0.0]
    recorded: list[dict] = []
    gate = Gate(recorded.append, bench_time_s=1.0, budget_s=6.0, clock=lambda: now[0])
    artifact = SimpleNamespace(model_name="m", format="onnx", spec=None, size_bytes=1, path=Path("m"), metadata={})
    assert gate._allowance(artifact, 4) == 1.0, "6 s for 4 timings: the bench time caps each"
    with gate._timing(artifact, 1.0):
        now[0] += 4.0
    assert gate._allowance(artifact, 4) == 0.5, "2 s left for 4 timings"
    with gate._timing(artifact, 0.5):
        now[0] += 3.0
    assert gate._allowance(artifact, 2) == 0.001
    assert gate._allowance(SimpleNamespace(model_name="m", format="torchscript"), 2) == 1.0, \
        "each model x format has its own budget"
    assert recorded[-1]["timing"] == {"spent_s": 7.0, "allowed_per_batch_s": 0.5, "shortened": True}
    assert Gate(bench_time_s=0.3)._allowance(artifact, 9) == 0.3, "no budget: the bench time"


def test_a_call_longer_than_the_window_is_one_call_per_window(digits_artifacts) -> None:
    """Windows are sized from the cost of a call: a slow model (here a 64 ms sleep per call) gets one call per
    window, not ten blocks of two calls, and no untimed settling call, so `max_time_s` holds whatever the model.
    Counted, not timed: the calls the runner saw are the one warm-up call and one per window."""
    onnx = digits_artifacts["onnx"]
    seen = []

    def slow_runner(inputs):
        seen.append(len(inputs))
        time.sleep(0.064)
        return onnx.runner(inputs)

    slow = Artifact(onnx.format, Path("<in-memory slow onnx>"), onnx.metadata, slow_runner)
    stats = deploycheck.bench(slow, batch_sizes=(1,), max_time_s=0.2, warmup_s=0.0).stats[1]
    assert stats.calls == stats.rounds
    assert len(seen) == 1 + stats.rounds + stats.disturbed_rounds
    if not stats.disturbed_rounds:
        assert 2 <= stats.calls <= 4
    else:  # a busy machine: disturbed windows are made up for, within patience (5) x max_time_s of wall time
        assert stats.rounds + stats.disturbed_rounds <= math.ceil(5 * 0.2 / 0.064) + 1
