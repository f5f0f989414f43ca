"""Change points in a series of runs, found the way Apache Otava (formerly Hunter; Fleming et al., "Hunter: Using
Change Point Detection to Hunt for Performance Regressions", ICPE 2023) finds them: E-divisive means (Matteson &
James, "A Nonparametric Approach for Multiple Change Point Analysis of Multivariate Data", JASA 2014) locates the
split that best separates a segment's distribution, and Welch's t-test between the runs on either side decides
whether it is significant (deterministic, unlike the original permutation test, and far cheaper). Accepted
splits are re-tested against their neighbouring segments until every one is significant.

A slow creep is found as well as a step: each point of the creep is below any per-run limit, but the segments
before and after it differ. Each change point is reported with its *transition*: the runs between the last one
at the old level and the first one at the new level (a least-squares fit of old level, ramp, new level), so a
step names one commit and a creep over five commits names all five. Adjacent change points in the same direction
whose transitions touch are one change.

A busy neighbour slows or (by taking the reference workload's share) flatters a single run. Before the search,
such a run is replaced by the mean of its neighbours' levels: a run off, in the same direction, by more than
`OUTLIER_SIGMAS` times the series' noise from both the median of the `OUTLIER_SIDE` runs before it and that of the
runs after it (a Hampel-style filter whose two one-sided medians keep a step's edge: the first run at a new level
agrees with the runs after it). The noise is estimated from how far runs lie from their neighbours' levels, so a
step or a creep does not count as noise; the newest run is never replaced, having no runs after it. Each change
point's transition is then fitted twice (see `_with_transitions`). Without both, 5 in 50 scripted histories with
three runs 10% low merged a step at commit 12 and a creep over commits 20-24 into one change spanning both.

Long histories are searched in overlapping windows (`WINDOW` runs), as Otava does, so the cost grows with the
length of the history and not with its square; the significance pass then runs over the whole series.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.special import stdtr

MAX_PVALUE = 0.001  # Otava's default significance
MIN_SIZE = 3  # runs on each side of a split: a single outlier run is not a level
WINDOW = 128
MAX_RAMP = 16  # the longest transition (in runs) a change point is given
OUTLIER_SIGMAS = 4.0
OUTLIER_SIDE = 3  # the runs on each side of a run whose median is its neighbours' level
MEDIAN_OFF_PER_SIGMA = 0.75  # median |run - its neighbours' level| of normal noise, in standard deviations


@dataclass(frozen=True)
class ChangePoint:
    """A change in a series' level: `start` is the index of the last run at the old level, `end` of the first run
    at the new level (end == start + 1 for a step); `before` and `after` are the fitted old and new levels,
    `pvalue` the significance of the difference."""

    start: int
    end: int
    before: float
    after: float
    pvalue: float

    @property
    def change(self) -> float:
        """The relative change of the level (after / before - 1); infinite from a level of 0."""
        if self.before == 0:
            return 0.0 if self.after == 0 else math.copysign(math.inf, self.after)
        return self.after / self.before - 1


def change_points(values: Sequence[float], max_pvalue: float = MAX_PVALUE, min_size: int = MIN_SIZE,
                  min_change: float = 0.0, window: int = WINDOW) -> list[ChangePoint]:
    """The significant change points of `values` (in run order), each at least `min_change` (relative) in size."""
    x = without_outliers(np.asarray(values, dtype=np.float64))
    n = len(x)
    if n < 2 * min_size or np.all(x == x[0]):
        return []
    splits: set[int] = set()
    step = max(window // 2, 2 * min_size)
    starts = range(0, max(n - window, 0) + 1, step) if n > window else [0]
    for first in starts:
        splits.update(first + s for s in _bisect(x[first:first + window], max_pvalue, min_size))
    if n > window and (n - window) % step:
        splits.update(n - window + s for s in _bisect(x[n - window:], max_pvalue, min_size))
    kept = _prune(x, sorted(splits), max_pvalue, min_size)
    points = _with_transitions(x, kept, min_size)
    return [point for point in _merge(points) if abs(point.change) >= min_change]


def without_outliers(x: np.ndarray) -> np.ndarray:
    """`x` with each single-run outlier replaced by the mean of its neighbours' levels: a run off, in one
    direction, both from the median of the `OUTLIER_SIDE` runs before it and from that of the runs after it."""
    n = len(x)
    if n < 2 * OUTLIER_SIDE + 1:
        return x
    medians = np.median(np.lib.stride_tricks.sliding_window_view(np.pad(x, OUTLIER_SIDE, mode="edge"),
                                                                 OUTLIER_SIDE), axis=1)
    before, after = medians[:n], medians[OUTLIER_SIDE + 1:OUTLIER_SIDE + 1 + n]
    level = (before + after) / 2
    noise = float(np.median(np.abs(x - level))) / MEDIAN_OFF_PER_SIGMA
    if noise == 0:
        return x
    off_before, off_after = x - before, x - after
    outlier = (np.minimum(np.abs(off_before), np.abs(off_after)) > OUTLIER_SIGMAS * noise) & \
        (np.sign(off_before) == np.sign(off_after))
    return np.where(outlier, level, x)


def _best_split(x: np.ndarray, min_size: int) -> int:
    """The split maximising the E-divisive statistic Q(tau) (alpha = 1) over tau in [min_size, n - min_size]."""
    n = len(x)
    distance = np.abs(x[:, None] - x[None, :])
    prefix = np.zeros((n + 1, n + 1))
    prefix[1:, 1:] = distance.cumsum(0).cumsum(1)
    tau = np.arange(min_size, n - min_size + 1)
    left = prefix[tau, tau]  # sum over ordered pairs within the left part
    across = prefix[tau, n] - left
    right = prefix[n, n] - 2 * prefix[tau, n] + left
    m = n - tau
    divergence = 2 * across / (tau * m) - left / (tau * (tau - 1)) - right / (m * (m - 1))
    return int(tau[int(np.argmax(tau * m / n * divergence))])


def _pvalue(left: np.ndarray, right: np.ndarray) -> float:
    """Welch's t-test of two segments' means; two constant segments differ with certainty unless equal."""
    if np.ptp(left) == 0 and np.ptp(right) == 0:
        return 1.0 if left[0] == right[0] else 0.0
    # Welch's t and its Welch-Satterthwaite degrees of freedom, two-sided from Student's t distribution
    # (scipy.stats.ttest_ind(equal_var=False) computes the same; scipy.special is a third of its import time,
    # which every gate run that records history pays)
    left_var, right_var = left.var(ddof=1) / len(left), right.var(ddof=1) / len(right)
    t = (left.mean() - right.mean()) / math.sqrt(left_var + right_var)
    df = (left_var + right_var) ** 2 / (left_var ** 2 / (len(left) - 1) + right_var ** 2 / (len(right) - 1))
    return float(2 * stdtr(df, -abs(t)))


def _bisect(x: np.ndarray, max_pvalue: float, min_size: int) -> list[int]:
    found, pending = [], [(0, len(x))]
    while pending:
        first, last = pending.pop()
        if last - first < 2 * min_size:
            continue
        split = first + _best_split(x[first:last], min_size)
        if _pvalue(x[first:split], x[split:last]) <= max_pvalue:
            found.append(split)
            pending += [(first, split), (split, last)]
    return found


def _prune(x: np.ndarray, splits: list[int], max_pvalue: float, min_size: int) -> list[int]:
    """Drop splits too close to a stronger one, then the least significant split against its neighbouring
    segments, until every remaining one is significant."""
    kept: list[int] = []
    for split in splits:
        if kept and split - kept[-1] < min_size:
            bounds = [kept[-2] if len(kept) > 1 else 0, kept[-1], split, len(x)]
            if _pvalue(x[bounds[0]:bounds[2]], x[bounds[2]:bounds[3]]) < \
                    _pvalue(x[bounds[0]:bounds[1]], x[bounds[1]:bounds[3]]):
                kept[-1] = split
            continue
        kept.append(split)
    while kept:
        bounds = [0, *kept, len(x)]
        pvalues = [_pvalue(x[bounds[i]:bounds[i + 1]], x[bounds[i + 1]:bounds[i + 2]]) for i in range(len(kept))]
        worst = int(np.argmax(pvalues))
        if pvalues[worst] <= max_pvalue:
            break
        kept.pop(worst)
    return kept


def _with_transitions(x: np.ndarray, splits: list[int], min_size: int) -> list[ChangePoint]:
    """Each split with its transition: the (last old, first new) pair of runs whose model (the old level, a
    straight ramp over the runs between, the new level; levels fitted by least squares) fits the runs around the
    split best. A step fits best with no ramp; a creep, with the ramp over its commits. The fit is made twice:
    first between the neighbouring splits, then between the neighbouring transitions, so the start of a creep
    next to a step (which E-divisive splits in its middle) does not pull the step's fit into a long ramp."""
    bounds = [0, *splits, len(x)]
    fits = [_transition(x, bounds[i], bounds[i + 2], split, min_size) for i, split in enumerate(splits)]
    refined = []
    for i, split in enumerate(splits):
        low = min(max(bounds[i], fits[i - 1][1] if i else 0), split - min_size)
        high = max(min(bounds[i + 2], fits[i + 1][0] + 1 if i + 1 < len(fits) else len(x)), split + min_size)
        refined.append(_transition(x, low, high, split, min_size))
    return [ChangePoint(start, end, before, after, _pvalue(x[bounds[i]:split], x[split:bounds[i + 2]]))
            for i, (split, (start, end, before, after)) in enumerate(zip(splits, refined))]


def _transition(x: np.ndarray, low: int, high: int, split: int, min_size: int) -> tuple[int, int, float, float]:
    """(last old run, first new run, old level, new level) of the best old level - ramp - new level fit of
    `x[low:high]` whose ramp spans `split`."""
    segment = x[low:high]
    best: tuple[float, int, int, float, float] | None = None
    for start in range(max(low + min_size - 1, split - MAX_RAMP), split):
        for end in range(split, min(high - min_size, split + MAX_RAMP - 1) + 1):
            weight = np.clip((np.arange(low, high) - start) / (end - start), 0.0, 1.0)
            basis = np.stack([1.0 - weight, weight], axis=1)
            levels, _, _, _ = np.linalg.lstsq(basis, segment, rcond=None)
            error = float(np.sum((basis @ levels - segment) ** 2))
            if best is None or error < best[0] - 1e-12 * max(1.0, abs(error)):
                best = (error, start, end, float(levels[0]), float(levels[1]))
    assert best is not None  # the runs around a split hold min_size on each side
    return best[1:]


def _merge(points: list[ChangePoint]) -> list[ChangePoint]:
    """Adjacent change points in one direction whose transitions meet are one change (a creep found in pieces)."""
    merged: list[ChangePoint] = []
    for point in points:
        previous = merged[-1] if merged else None
        if previous is not None and point.start <= previous.end and \
                (point.after > point.before) == (previous.after > previous.before):
            merged[-1] = ChangePoint(previous.start, point.end, previous.before, point.after,
                                     max(previous.pvalue, point.pvalue))
        else:
            merged.append(point)
    return merged
