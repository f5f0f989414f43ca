"""The report's plots as self-contained SVG: the latency distribution of each format, and accuracy against size and
speed."""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from typing import Any

from deploycheck.baseline.compare import smallest_batch
from deploycheck.rows import best_throughput, nested
from deploycheck.table import human_size


def svg_latency(rows: Sequence[dict[str, Any]]) -> str:
    """Box plot per model x format of the smallest batch's latency (box p25-p75, whiskers p5-p95, dot p99), on a
    logarithmic axis."""
    entries = []
    for row in rows:
        stats = smallest_batch(row.get("latency"))
        q = stats.get("quantiles_ms")
        if q:
            n = len(q)

            def at(fraction: float, q: list[float] = q, n: int = n) -> float:
                return float(q[min(n - 1, max(0, round(fraction * n - 0.5)))])
            entries.append((f"{row['model']}/{row['format']}", at(0.05), at(0.25), at(0.5), at(0.75), at(0.95),
                            stats.get("p99_ms") or q[-1], stats.get("batch_size")))
    if not entries:
        return ""
    low = min(e[1] for e in entries) / 1.5
    high = max(e[6] for e in entries) * 1.5
    left, width, step = 20 + 7 * max(len(e[0]) + 10 for e in entries), 560, 24
    height = 40 + step * len(entries)

    def x(value: float) -> float:
        return left + (math.log10(value) - math.log10(low)) / (math.log10(high) - math.log10(low)) * width

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{left + width + 30}" height="{height + 30}" '
             'role="img" aria-label="latency distribution per format">']
    decade = 10 ** math.floor(math.log10(low))
    while decade <= high:
        for mantissa in (1, 2, 5):
            tick = decade * mantissa
            if low <= tick <= high:
                parts.append(f'<line x1="{x(tick):.1f}" y1="20" x2="{x(tick):.1f}" y2="{height}" stroke="#ddd"/>'
                             f'<text x="{x(tick):.1f}" y="{height + 15}" font-size="11" text-anchor="middle">'
                             f'{tick:g}</text>')
        decade *= 10
    parts.append(f'<text x="{left + width / 2}" y="{height + 28}" font-size="12" text-anchor="middle">'
                 'latency (ms, log scale): box p25-p75, line p50, whiskers p5-p95, dot p99</text>')
    for index, (name, p5, p25, p50, p75, p95, p99, batch) in enumerate(entries):
        y = 30 + index * step
        parts.append(f'<text x="{left - 8}" y="{y + 4}" font-size="12" text-anchor="end">'
                     f'{html.escape(name)} (batch {batch})</text>'
                     f'<line x1="{x(p5):.1f}" y1="{y}" x2="{x(p95):.1f}" y2="{y}" stroke="#555"/>'
                     f'<rect x="{x(p25):.1f}" y="{y - 8}" width="{max(1.0, x(p75) - x(p25)):.1f}" height="16" '
                     'fill="#9ecae1" stroke="#3182bd"/>'
                     f'<line x1="{x(p50):.1f}" y1="{y - 8}" x2="{x(p50):.1f}" y2="{y + 8}" stroke="#08306b" '
                     'stroke-width="2"/>'
                     f'<circle cx="{x(p99):.1f}" cy="{y}" r="3" fill="#e6550d"><title>p99 {p99:.3f} ms</title>'
                     '</circle>')
    parts.append("</svg>")
    return "".join(parts)


PALETTE = ("#1b9e77", "#d95f02", "#7570b3", "#e7298a", "#66a61e", "#e6ab02", "#a6761d", "#666666")


def svg_tradeoff(rows: Sequence[dict[str, Any]]) -> str:
    """Accuracy against size on disk (log), one circle per model x format whose area grows with throughput."""
    points = [(f"{r['model']}/{r['format']}", float(r["size_bytes"]), float(nested(r, "accuracy", "value")),
               best_throughput(r))
              for r in rows if r.get("size_bytes") and nested(r, "accuracy", "value") is not None]
    if not points:
        return ""
    left, top, width, height = 70, 20, 560, 300
    sizes = [p[1] for p in points]
    accuracies = [p[2] for p in points]
    s_low, s_high = min(sizes) / 1.3, max(sizes) * 1.3
    a_low, a_high = min(accuracies), max(accuracies)
    pad = max(0.002, (a_high - a_low) * 0.2)
    a_low, a_high = a_low - pad, a_high + pad
    fastest = max((p[3] or 0) for p in points) or 1.0

    def x(size: float) -> float:
        return left + (math.log(size) - math.log(s_low)) / (math.log(s_high) - math.log(s_low)) * width

    def y(accuracy: float) -> float:
        return top + (a_high - accuracy) / (a_high - a_low) * height

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{left + width + 220}" height="{top + height + 50}" '
             'role="img" aria-label="accuracy against size and speed">',
             f'<rect x="{left}" y="{top}" width="{width}" height="{height}" fill="none" stroke="#999"/>']
    for fraction in (0, 0.25, 0.5, 0.75, 1):
        accuracy = a_low + (a_high - a_low) * fraction
        parts.append(f'<text x="{left - 6}" y="{y(accuracy) + 4:.1f}" font-size="11" text-anchor="end">'
                     f'{accuracy:.2%}</text>')
    for fraction in (0, 0.5, 1):
        size = math.exp(math.log(s_low) + (math.log(s_high) - math.log(s_low)) * fraction)
        parts.append(f'<text x="{x(size):.1f}" y="{top + height + 15}" font-size="11" text-anchor="middle">'
                     f'{html.escape(human_size(size))}</text>')
    parts.append(f'<text x="{left + width / 2}" y="{top + height + 32}" font-size="12" text-anchor="middle">'
                 'size on disk (log scale); circle area: samples/s; y: accuracy; hover for the format</text>')
    models = sorted({name.split("/", 1)[0] for name, *_ in points})
    colour = {model: PALETTE[i % len(PALETTE)] for i, model in enumerate(models)}
    for name, size, accuracy, throughput in points:
        model, format_name = name.split("/", 1)
        radius = 4 + 14 * math.sqrt((throughput or 0) / fastest)
        label = f"{name}: {accuracy:.2%}, {human_size(size)}" + (f", {throughput:.0f}/s" if throughput else "")
        parts.append(f'<circle cx="{x(size):.1f}" cy="{y(accuracy):.1f}" r="{radius:.1f}" fill="{colour[model]}" '
                     f'fill-opacity="0.45" stroke="{colour[model]}"><title>{html.escape(label)}</title></circle>')
        if len(points) <= 10:
            parts.append(f'<text x="{x(size) + radius + 3:.1f}" y="{y(accuracy) + 4:.1f}" font-size="11">'
                         f'{html.escape(format_name)}</text>')
    for index, model in enumerate(models):
        parts.append(f'<circle cx="{left + width + 20}" cy="{top + 10 + 18 * index}" r="6" fill="{colour[model]}" '
                     f'fill-opacity="0.6"/><text x="{left + width + 32}" y="{top + 14 + 18 * index}" '
                     f'font-size="12">{html.escape(model)}</text>')
    parts.append("</svg>")
    return "".join(parts)
