"""The history's figures, measured on this machine (run it with `python ../shared/tools/busy.py 2 &` too):

1. 30 real gate timings of a small model (ONNX Runtime, batch 1, `deploycheck.latency.bench` with the reference
   workload), kept as history records of 30 commits. Unchanged, every change point found is a false alarm.
   Scripted: the same measured figures with +15% from commit 12 and +3% a commit over commits 20-24 (the creep
   ends at commit 24, +15.9% in all): every change point should be found with its commit range.
2. A history of 10,000 runs x 12 formats in SQLite: how long `deploycheck history` takes to answer.

    python benchmarks/history.py [--runs 30] [--bench-time 1.0]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import deploycheck
from deploycheck.cli import main as cli
from deploycheck.history.records import HistoryRecord
from deploycheck.history.store import HistoryStore
from deploycheck.history.trend import trend_table, trends
from deploycheck.latency import bench
from deploycheck.run_result import RunInfo


def measured_p50_norm(runs: int, bench_time_s: float, out: Path) -> list[float]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.ReLU(), torch.nn.Linear(256, 10)).eval()
    spec = deploycheck.ModelSpec(name="small", model=model, example_inputs=(torch.randn(8, 64),))
    artifact = deploycheck.export(spec, "onnx", out)
    values = []
    for run in range(runs):
        stats = bench(artifact, batch_sizes=(1,), max_time_s=bench_time_s).stats[1]
        values.append(stats.p50_ms / stats.reference_p50_ms)
        print(f"  run {run:2d}: p50 {stats.p50_ms * 1e3:.1f} us, reference {stats.reference_p50_ms * 1e3:.1f} us, "
              f"ratio {values[-1]:.4f}", flush=True)
    return values


def history_of(values: list[float], machine: str = "this-machine") -> list[HistoryRecord]:
    return [HistoryRecord(RunInfo(f"run{i:05d}", f"commit-{i:02d}".ljust(40, "_"), "main",
                                  f"2026-12-01T00:{i // 60:02d}:{i % 60:02d}", "compare", machine, {}),
                          "small", "onnx", "ok", {"p50_norm@1": value, "size_bytes": 1e5}) for i, value in
            enumerate(values)]


def scripted(values: list[float]) -> list[float]:
    factors = np.ones(len(values))
    factors[12:] *= 1.15
    for commit in range(20, 25):
        factors[commit:] *= 1.03
    return [float(v * f) for v, f in zip(values, factors)]


def large_history(path: Path, runs: int, formats: int) -> float:
    store = HistoryStore(path)
    rng = np.random.default_rng(0)
    started = time.perf_counter()
    for first in range(0, runs, 500):
        batch = []
        for index in range(first, min(first + 500, runs)):
            run = RunInfo(f"run{index:06d}", f"{index:040x}", "main", f"2026-{1 + index // 100_000:02d}-01T"
                          f"{index:09d}", "compare", "m", {})
            batch += [HistoryRecord(run, "model", f"format{k:02d}", "ok",
                                    {"p50_norm@1": float(1 + rng.normal(0, 0.01)), "size_bytes": 1e6,
                                     "accuracy": 0.99, "max_abs": 1e-6}) for k in range(formats)]
        store.append(batch)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--bench-time", type=float, default=1.0,
                        help="seconds per timing, the gate's default (0.3 s is too noisy to see a 3%% step)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        print(f"{args.runs} gate timings of small/onnx on this machine:")
        values = measured_p50_norm(args.runs, args.bench_time, Path(scratch) / "artifacts")
        print("\nunchanged model (every change point is a false alarm):")
        print(trend_table(trends(history_of(values))))
        print("\nscripted: +15% at commit 12, +3% a commit over commits 20-24:")
        print(trend_table(trends(history_of(scripted(values)))))
        path = Path(scratch) / "large.sqlite"
        written = large_history(path, 10_000, 12)
        print(f"\n10,000 runs x 12 formats written in {written:.1f} s ({path.stat().st_size / 2**20:.1f} MiB)")
        for arguments in (["--last", "50"], ["--last", "10000", "--format", "format03"]):
            started = time.perf_counter()
            cli(["history", "--store", str(path), *arguments])
            print(f"deploycheck history {' '.join(arguments)}: {time.perf_counter() - started:.2f} s")


if __name__ == "__main__":
    main()
