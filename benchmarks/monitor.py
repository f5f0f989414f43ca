"""Per-call cost of `Monitor.record` next to a naive monitor, measured in the same run (prints, asserts nothing).

The naive monitor is what a hand-rolled service often does: append to a 1000-entry deque and recompute a numpy
mean over it on every call (the issue's reference point, about 26 us). Both are timed over the same latencies,
interleaved in rounds so machine drift hits both; the figure is the median per-call cost over rounds.

    python benchmarks/monitor.py [--calls 200000]
"""

from __future__ import annotations

import argparse
import time
from collections import deque

import numpy as np

from deploycheck.monitor import Monitor


class NaiveMonitor:
    def __init__(self) -> None:
        self.latencies: deque[float] = deque(maxlen=1000)
        self.requests = 0
        self.mean = 0.0

    def record(self, latency_ms: float, batch_size: int = 1, prediction: int | None = None) -> None:
        self.requests += 1
        self.latencies.append(latency_ms)
        self.mean = float(np.mean(self.latencies))


def per_call_us(record: object, latencies: list[float], predictions: list[int]) -> float:
    start = time.perf_counter()
    for latency, prediction in zip(latencies, predictions):
        record(latency, 1, prediction=prediction)  # type: ignore[operator]
    return (time.perf_counter() - start) / len(latencies) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=200_000, help="calls per monitor and round")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    latencies = rng.lognormal(np.log(2.0), 0.3, args.calls).tolist()
    predictions = rng.integers(0, 10, args.calls).tolist()
    naive_calls = max(1, args.calls // 10)
    ours, naive = [], []
    for _ in range(args.rounds):
        ours.append(per_call_us(Monitor("bench").record, latencies, predictions))
        naive.append(per_call_us(NaiveMonitor().record, latencies[:naive_calls], predictions[:naive_calls]))
    ours_us, naive_us = float(np.median(ours)), float(np.median(naive))
    print(f"Monitor.record:            {ours_us:6.2f} us per call (median of {args.rounds} rounds of "
          f"{args.calls} calls; rounds {', '.join(f'{v:.2f}' for v in ours)})")
    print(f"naive deque + numpy mean:  {naive_us:6.2f} us per call (rounds {', '.join(f'{v:.2f}' for v in naive)})")
    print(f"Monitor.record is {naive_us / ours_us:.1f}x faster")


if __name__ == "__main__":
    main()
