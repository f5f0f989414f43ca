"""The history as pictures: per model x format, a self-contained SVG of latency p50 (with its interval band), size
and accuracy over the runs, change points marked at their transition and the accepted baseline drawn as a line;
and the page `deploycheck history --html` writes for a whole store.

A long history is downsampled, never its change points: the newest `RECENT` runs are drawn one by one, older
runs in buckets (each drawn at its median, its band from the lowest to the highest value), so 10,000 runs cost
no more than `MAX_POINTS` points per line, and every change point is drawn where it falls.
"""

from __future__ import annotations

import datetime
import html
import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from deploycheck.history.records import HistoryRecord
from deploycheck.history.trend import Change, Trend, describe, trends
from deploycheck.table import human_size

MAX_POINTS = 240  # points per line at most, whatever the length of the history
RECENT = 120  # the newest runs, drawn one by one
WIDTH, HEIGHT, LEFT, TOP = 620, 96, 86, 18


@dataclass(frozen=True)
class Panel:
    """One figure of one model x format as drawn: x positions are run indexes, `low`/`high` the band (or None),
    `baseline` the accepted value (or None), `changes` the change points with the index of their first run
    after the transition."""

    title: str
    x: list[float]
    value: list[float]
    low: list[float] | None
    high: list[float] | None
    runs: int
    baseline: float | None
    changes: list[tuple[int, Change]]
    unit: str


def downsample(values: Sequence[float], low: Sequence[float] | None = None,
               high: Sequence[float] | None = None) -> tuple[list[float], list[float], list[float], list[float]]:
    """(x, median, band low, band high) with at most `MAX_POINTS` points: the last `RECENT` values as they are,
    older ones in equal buckets whose band spans their lowest to highest value."""
    n = len(values)
    lows = list(low) if low is not None else list(values)
    highs = list(high) if high is not None else list(values)
    if n <= MAX_POINTS:
        return [float(i) for i in range(n)], list(values), lows, highs
    old = n - RECENT
    edges = np.linspace(0, old, MAX_POINTS - RECENT + 1).round().astype(int)
    x, mid, lo, hi = [], [], [], []
    for start, end in itertools.pairwise(edges):
        if end > start:
            x.append((start + end - 1) / 2)
            mid.append(float(np.median(values[start:end])))
            lo.append(min(lows[start:end]))
            hi.append(max(highs[start:end]))
    for i in range(old, n):
        x.append(float(i))
        mid.append(values[i])
        lo.append(lows[i])
        hi.append(highs[i])
    return x, mid, lo, hi


def _accepted(records: Sequence[HistoryRecord], key: str) -> float | None:
    """The figure of the newest accepted run (`--deploycheck-update`): the baseline a compare run is held to."""
    accepted = [r for r in records if r.run.mode in ("update", "update-new") and key in r.figures]
    return accepted[-1].figures[key] if accepted else None


def panels(records: Sequence[HistoryRecord]) -> list[Panel]:
    """The panels of one model x format's records (oldest first): latency p50 on the newest run's machine with
    the window-spread band and the change points of the normalised latency, then size and accuracy."""
    found = {t.figure.label: t for t in trends(records)}
    drawn = []
    latency = found.get("p50 / reference")
    batch = latency.key.split("@")[1] if latency else None
    if latency and batch:
        machine = records[-1].run.machine
        timed = [r for r in records if r.run.machine == machine and f"p50_ms@{batch}" in r.figures]
        index = {r.run.run_id: i for i, r in enumerate(timed)}
        values = [r.figures[f"p50_ms@{batch}"] for r in timed]
        low = [r.figures.get(f"p50_low_ms@{batch}", v) for r, v in zip(timed, values)]
        high = [r.figures.get(f"p50_high_ms@{batch}", v) for r, v in zip(timed, values)]
        x, mid, lo, hi = downsample(values, low, high)
        changes = [(index[c.first_after.run_id], c) for c in latency.changes if c.first_after.run_id in index]
        drawn.append(Panel(f"p50 ms, batch {batch} (band: spread between timing windows; change points on "
                           "p50 / reference workload)", x, mid, lo, hi, len(values),
                           _accepted(timed, f"p50_ms@{batch}"), changes, "ms"))
    for label, title, unit in (("size", "size", "bytes"), ("accuracy", "accuracy", "%")):
        trend = found.get(label)
        if trend:
            drawn.append(_panel(trend, title, unit, records))
    return drawn


def _panel(trend: Trend, title: str, unit: str, records: Sequence[HistoryRecord]) -> Panel:
    x, mid, lo, hi = downsample(trend.values)
    index = {run.run_id: i for i, run in enumerate(trend.runs)}
    changes = [(index[c.first_after.run_id], c) for c in trend.changes]
    return Panel(title, x, mid, lo if lo != mid else None, hi if hi != mid else None, len(trend.values),
                 _accepted(records, trend.key), changes, unit)


def _label(value: float, unit: str) -> str:
    if unit == "bytes":
        return human_size(int(value))
    if unit == "%":
        return f"{value:.1%}"
    return f"{value:.3g} {unit}"


def svg_panels(name: str, drawn: Sequence[Panel]) -> str:
    """The panels of one model x format stacked in one SVG (`name` titles it)."""
    height = TOP + len(drawn) * (HEIGHT + 34) + 8
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{LEFT + WIDTH + 20}" height="{height}" '
             'font-family="sans-serif" font-size="11">',
             f'<text x="4" y="13" font-weight="bold">{html.escape(name)}</text>']
    for number, panel in enumerate(drawn):
        parts.append(_svg_panel(panel, TOP + 16 + number * (HEIGHT + 34)))
    parts.append("</svg>")
    return "".join(parts)


def _svg_panel(panel: Panel, top: float) -> str:
    shown = [*panel.value, *(panel.low or []), *(panel.high or []),
             *([panel.baseline] if panel.baseline is not None else [])]
    low, high = min(shown), max(shown)
    pad = (high - low) * 0.08 or abs(high) * 0.05 or 1.0
    low, high = low - pad, high + pad
    last = max(panel.runs - 1, 1)

    def px(i: float) -> float:
        return LEFT + i / last * WIDTH

    def py(v: float) -> float:
        return top + HEIGHT - (v - low) / (high - low) * HEIGHT

    def points(xs: Sequence[float], ys: Sequence[float]) -> str:
        return " ".join(f"{px(a):.1f},{py(b):.1f}" for a, b in zip(xs, ys))

    parts = [f'<text x="{LEFT}" y="{top - 4:.0f}">{html.escape(panel.title)} — {panel.runs} run(s)</text>',
             f'<rect x="{LEFT}" y="{top}" width="{WIDTH}" height="{HEIGHT}" fill="none" stroke="#bbb"/>',
             f'<text x="{LEFT - 4}" y="{top + 10}" text-anchor="end">{_label(high, panel.unit)}</text>',
             f'<text x="{LEFT - 4}" y="{top + HEIGHT}" text-anchor="end">{_label(low, panel.unit)}</text>']
    if panel.low is not None and panel.high is not None:
        band = points(panel.x, panel.high) + " " + points(panel.x[::-1], panel.low[::-1])
        parts.append(f'<polygon points="{band}" fill="#9ecae1" fill-opacity="0.45" stroke="none"/>')
    if panel.baseline is not None:
        y = py(panel.baseline)
        parts.append(f'<line x1="{LEFT}" y1="{y:.1f}" x2="{LEFT + WIDTH}" y2="{y:.1f}" stroke="#2ca02c" '
                     f'stroke-dasharray="6 3"><title>accepted baseline: {_label(panel.baseline, panel.unit)}'
                     '</title></line>')
    parts.append(f'<polyline points="{points(panel.x, panel.value)}" fill="none" stroke="#1f77b4" '
                 'stroke-width="1.3"/>')
    for index, change in panel.changes:
        x = px(index - 0.5)
        colour = "#d62728" if change.worse else "#2ca02c"
        parts.append(f'<line x1="{x:.1f}" y1="{top}" x2="{x:.1f}" y2="{top + HEIGHT}" stroke="{colour}" '
                     f'stroke-width="1.5"><title>change point {html.escape(change.commits)}: '
                     f'{html.escape(describe(change))}, p = {change.point.pvalue:.1e}</title></line>'
                     f'<text x="{x + 2:.1f}" y="{top + 10}" fill="{colour}">{html.escape(describe(change))}</text>')
    parts.append(f'<text x="{LEFT}" y="{top + HEIGHT + 13}">oldest</text>'
                 f'<text x="{LEFT + WIDTH}" y="{top + HEIGHT + 13}" text-anchor="end">newest</text>')
    return "".join(parts)


def trend_section(records: Sequence[HistoryRecord]) -> str:
    """The HTML of every model x format's trend pictures in `records` (empty when there is nothing to draw)."""
    grouped: dict[tuple[str, str], list[HistoryRecord]] = {}
    for record in records:
        grouped.setdefault((record.model, record.format), []).append(record)
    pictures = []
    for (model, format_name), group in sorted(grouped.items()):
        drawn = panels(group)
        if drawn:
            pictures.append(svg_panels(f"{model}/{format_name}", drawn))
    if not pictures:
        return ""
    return ("<h2>Over the history</h2><p>Each model x format over its runs: the accepted baseline dashed green, "
            "change points as vertical lines (red: worse). Hover a line for its commits.</p>" + "".join(pictures))


def history_page(records: Sequence[HistoryRecord], label: str) -> str:
    """The self-contained page of a whole history (`deploycheck history --html`)."""
    runs = len({record.run.run_id for record in records})
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    span = f"{records[0].run.time} to {records[-1].run.time}" if records else "no runs"
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>deploycheck history</title>
<style>body {{ font-family: system-ui, sans-serif; margin: 1.5em; max-width: 1240px; }}
svg {{ max-width: 100%; height: auto; display: block; margin: 0.5em 0 1.5em; }}</style></head><body>
<h1>deploycheck history</h1>
<p>{html.escape(label)}: {runs} run(s), {html.escape(span)}; generated {stamp}.</p>
{trend_section(records) or "<p>nothing to draw</p>"}
</body></html>
"""
