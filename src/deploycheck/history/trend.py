"""Trends over the history: per model x format, the figures that tell whether a model got worse (latency
normalised by the reference workload, size, accuracy, parity error), read across the runs on comparable machines,
with their change points and the commits each one falls between.

Latency is read on the machine of the newest run only (same fingerprint): a timing is comparable within one
kind of machine, and normalising by the reference workload takes out how busy it was. Size, accuracy and parity
error do not depend on the machine, so every run counts for them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from deploycheck.costs import counter_changes
from deploycheck.history.changepoints import ChangePoint, change_points
from deploycheck.history.records import HistoryRecord
from deploycheck.run_result import RunInfo
from deploycheck.table import format_table, human_size

LATENCY_MIN_CHANGE = 0.02  # a latency level shift below 2% is not called a change (measurement noise)


@dataclass(frozen=True)
class Figure:
    """A tracked figure: its key in the records (`@` for the smallest batch timed), what it is called, whether
    higher is worse, whether it depends on the machine, and the smallest relative change worth naming."""

    key: str
    label: str
    higher_is_worse: bool
    per_machine: bool
    min_change: float = 0.0


DECODE_MIN_CHANGE = 0.10  # a decoder's median ITL is timed, not normalised: a shift below 10% is not named


FIGURES = (
    Figure("p50_norm@", "p50 / reference", True, True, LATENCY_MIN_CHANGE),
    Figure("itl_p50_ms@", "median ITL", True, True, DECODE_MIN_CHANGE),
    Figure("size_bytes", "size", True, False),
    Figure("accuracy", "accuracy", False, False),
    Figure("max_abs", "max abs error", True, False),
)


@dataclass(frozen=True)
class Change:
    """A change point of one figure, with the runs on either side of its transition."""

    model: str
    format: str
    figure: str
    point: ChangePoint
    last_before: RunInfo
    first_after: RunInfo
    # the cost counters that moved across the change (`deploycheck.costs`): [] when none did, which points at the
    # machine or the runtime; None when either run recorded none
    counters_moved: list[str] | None = None

    @property
    def worse(self) -> bool:
        figure = next(f for f in FIGURES if f.label == self.figure)
        return (self.point.after > self.point.before) == figure.higher_is_worse

    @property
    def commits(self) -> str:
        """`good..bad`, as git writes a range: the commits of the last run before and the first run after."""
        return f"{_run_label(self.last_before)}..{_run_label(self.first_after)}"


@dataclass(frozen=True)
class Trend:
    """One figure of one model x format across runs (oldest first) and its change points."""

    model: str
    format: str
    figure: Figure
    key: str
    runs: list[RunInfo]
    values: list[float]
    changes: list[Change]


def _run_label(run: RunInfo) -> str:
    return run.commit[:10] if run.commit else run.time


def _smallest_batch_key(records: Sequence[HistoryRecord], prefix: str) -> str | None:
    batches = {int(name[len(prefix):]) for record in records for name in record.figures if name.startswith(prefix)}
    return f"{prefix}{min(batches)}" if batches else None


def series(records: Sequence[HistoryRecord], figure: Figure) -> tuple[str | None, list[HistoryRecord], list[float]]:
    """The key, the records that hold it and their values of one figure across one model x format's records (in
    run order)."""
    key = _smallest_batch_key(records, figure.key) if figure.key.endswith("@") else figure.key
    if key is None or not records:
        return None, [], []
    machine = records[-1].run.machine
    kept = [r for r in records if key in r.figures and (not figure.per_machine or r.run.machine == machine)]
    return key, kept, [r.figures[key] for r in kept]


def trends(records: Sequence[HistoryRecord]) -> list[Trend]:
    """Every tracked figure of every model x format in `records`, with its change points."""
    grouped: dict[tuple[str, str], list[HistoryRecord]] = {}
    for record in records:
        grouped.setdefault((record.model, record.format), []).append(record)
    found = []
    for (model, format_name), group in grouped.items():
        for figure in FIGURES:
            key, kept, values = series(group, figure)
            if key is None or not values:
                continue
            changes = [Change(model, format_name, figure.label, point, kept[point.start].run, kept[point.end].run,
                              counter_changes(kept[point.start].counters, kept[point.end].counters))
                       for point in change_points(values, min_change=figure.min_change)]
            found.append(Trend(model, format_name, figure, key, [r.run for r in kept], values, changes))
    return found


def new_worse_changes(history: Sequence[HistoryRecord], current: Sequence[HistoryRecord]) -> list[Change]:
    """Change points that make a figure worse and appear only once this run's records are added to the history:
    what `--deploycheck-fail-on-change-point` fails (a creep no single run's limit caught)."""
    before = {(t.model, t.format, t.figure.label): t for t in trends(history)}
    new = []
    for trend in trends([*history, *current]):
        old = before.get((trend.model, trend.format, trend.figure.label))
        known = {c.point.start for c in old.changes} if old else set()
        for change in trend.changes:
            if change.worse and not any(abs(change.point.start - start) <= 2 for start in known):
                new.append(change)
    return new


SPARK = "▁▂▃▄▅▆▇█"


def sparkline(values: Sequence[float], width: int = 24) -> str:
    """The last `width` values as block characters, lowest to highest."""
    shown = list(values)[-width:]
    if not shown:
        return ""
    low, high = min(shown), max(shown)
    if high == low:
        return SPARK[0] * len(shown)
    return "".join(SPARK[round((v - low) / (high - low) * (len(SPARK) - 1))] for v in shown)


def _value(value: float, figure: Figure) -> str:
    if figure.label == "size":
        return human_size(int(value))
    if figure.label == "accuracy":
        return f"{value:.2%}"
    return f"{value:.4g}"


def describe(change: Change) -> str:
    """`+15.2%` (or, for accuracy, points) of a change, with whether it is worse."""
    point = change.point
    accuracy = change.figure == "accuracy"
    size = f"{(point.after - point.before) * 100:+.2f} pt" if accuracy else f"{point.change:+.1%}"
    return f"{size} ({'worse' if change.worse else 'better'})"


def counters_text(change: Change) -> str:
    """What the cost counters did across a change: "unchanged" (the machine or the runtime moved), the changes
    ("+2 MatMul, +24% FLOPs"), or "not recorded"."""
    if change.counters_moved is None:
        return "not recorded"
    return ", ".join(change.counters_moved) or "unchanged"


def trend_table(found: Sequence[Trend]) -> str:
    """The trends (one line per model x format x figure) and then every change point, with its commits."""
    lines = [format_table(
        ["model", "format", "figure", "runs", "first", "latest", "trend", "change points"],
        [[t.model, t.format, f"{t.figure.label} ({t.key})" if "@" in t.key else t.figure.label, str(len(t.values)),
          _value(t.values[0], t.figure), _value(t.values[-1], t.figure), sparkline(t.values), str(len(t.changes))]
         for t in found])]
    changes = [c for t in found for c in t.changes]
    if changes:
        lines += ["", f"{len(changes)} change point(s):", format_table(
            ["model", "format", "figure", "commits", "runs", "before", "after", "change", "p-value", "cost counters"],
            [[c.model, c.format, c.figure, c.commits, f"{c.point.start}..{c.point.end}", _value(c.point.before, f),
              _value(c.point.after, f), describe(c), f"{c.point.pvalue:.1e}", counters_text(c)]
             for t in found for c in t.changes for f in [t.figure]])]
    else:
        lines += ["", "no change points"]
    return "\n".join(lines)
