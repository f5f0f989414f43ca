"""The statistics that writing and reading a latency record share: the stored quantile grid, and the bootstrap
interval of a ratio of medians (or of any statistic) over paired samples."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

import numpy as np

QUANTILES = 50


def quantile_grid(count: int) -> np.ndarray:
    """The percentiles of `count` stored order statistics: the midpoints of equal probability slices (a stored
    record is read back on this grid, so it is written here once)."""
    return (np.arange(count) + 0.5) * 100 / count


def compact_quantiles(samples: Sequence[float], count: int = QUANTILES) -> list[float]:
    """`count` order statistics at the midpoints of equal probability slices, to 4 significant digits."""
    if not len(samples):
        return []
    points = np.percentile(np.asarray(samples, np.float64), quantile_grid(count))
    return [float(f"{value:.4g}") for value in points]


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


def interval_verdict(low: float, high: float, limit: float) -> Literal["ok", "REGRESSED", "inconclusive"]:
    """A figure that must stay at or below `limit` (a slowdown: new time over old, 1.25 allowing +25%), judged on
    its interval: REGRESSED only when the whole interval lies above the limit, inconclusive (said, not failed)
    when the interval straddles it, ok when it lies at or below. Every speed verdict against a baseline or an
    accepted artifact, single-pass or generative, is this one rule."""
    if low > limit:
        return "REGRESSED"
    return "inconclusive" if high > limit else "ok"
