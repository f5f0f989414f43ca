"""The report files of a run document: JSON (the document itself), Markdown (also the GitHub job summary), one
self-contained HTML page with inline SVG plots (no JavaScript, no network, so it can be attached to a CI run as
it is), and the latencies in pytest-benchmark's JSON schema. Each is a function of the document alone."""

from __future__ import annotations

import datetime
import html
import os
from collections.abc import Sequence
from importlib.metadata import version
from pathlib import Path
from typing import Any

from deploycheck.jsonio import write_json, write_text
from deploycheck.plots import svg_latency, svg_tradeoff
from deploycheck.report.checks import check_text
from deploycheck.report.generative import generation_cells
from deploycheck.report.summary import (
    COLUMNS,
    MAIN_COLUMNS,
    baseline_findings,
    fell_behind,
    run_line,
    table_cells,
)
from deploycheck.rows import ACCEPT_COMMAND
from deploycheck.run_result import RunResult

FINDING_TITLES = ["model/format", "metric", "baseline", "obtained", "change", "limit", "status", "note"]


def findings(document: RunResult) -> list[list[str]]:
    """Every comparison that is not ok: single-pass baseline findings, and decoders' checks against their
    baseline or accepted artifact (their whole check in the "obtained" cell)."""
    found = [[name, str(f.get("label") or f.get("metric")), *(str(f.get(k, "")) for k in FINDING_TITLES[2:])]
             for name, f in baseline_findings(document.rows(), only_problems=True)]
    found += [[result.name, check.metric, "", check_text(check), "", "", check.status, ""]
              for result in document.of_kind("generative") for check in result.checks
              if check.against in ("baseline", "accepted") and (check.failed or check.status == "inconclusive")]
    return found


def markdown_report(document: RunResult) -> str:
    """GitHub-flavoured Markdown: the verdict with commit and machine, the single-pass and generative tables,
    then every comparison with a baseline that is not ok."""

    def line(values: Sequence[str]) -> str:
        return "| " + " | ".join(v.replace("|", "\\|") for v in values) + " |"

    def table(titles: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
        return [line(titles), "| " + " | ".join("---" for _ in titles) + " |", *(line(row) for row in rows)]

    failing, total = len(document.failed), len(document.results)
    parts = [f"## deploycheck: {document.outcome}", "", f"**{run_line(document)}**", "",
             f"{total} model x format result(s), {failing} failing.", ""]
    if document.of_kind("single-pass"):
        parts += table(*table_cells(document.of_kind("single-pass")))
    if document.of_kind("generative"):
        parts += ["", "### Generative decoders", "", *table(*generation_cells(document.of_kind("generative")))]
    problems = findings(document)
    if problems:
        parts += ["", "### Against the baselines", "", *table(FINDING_TITLES, problems)]
    behind = any(fell_behind(result) for result in document.failed)
    parts += ["", f"**Verdict: {document.outcome}** ({total - failing} of {total} passed)."
              + (f" If the changes are intended, accept them with `{ACCEPT_COMMAND}`." if behind else "")]
    return "\n".join(parts) + "\n"


def _html_table(titles: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    head = "".join(f"<th>{html.escape(t)}</th>" for t in titles)
    body = "".join("<tr>" + "".join(f'<td class="{"bad" if c in ("FAIL", "REGRESSED") else ""}">{html.escape(c)}'
                                    "</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def html_report(document: RunResult, trends_html: str = "") -> str:
    """One self-contained page that fits a 1,280-px window: the verdict with commit and machine, the main table
    (the terminal's main columns) and the details below it, the generative table, baseline findings, the plots,
    and, when the run kept a history, each model x format's trend over it (`trends_html`)."""
    rows, single_pass = document.rows(), document.of_kind("single-pass")
    tables = ""
    if single_pass:
        details = ["model", "format", *(title for title, _ in COLUMNS if title not in MAIN_COLUMNS)]
        detail_titles, detail_cells = table_cells(single_pass, details)
        tables = _html_table(*table_cells(single_pass, list(MAIN_COLUMNS)))
        if len(detail_titles) > 2:
            tables += "<h2>Details</h2>" + _html_table(detail_titles, detail_cells)
    if document.of_kind("generative"):
        tables += "<h2>Generative decoders</h2>" + _html_table(*generation_cells(document.of_kind("generative")))
    problems = findings(document)
    found = "<h2>Against the baselines</h2>" + _html_table(FINDING_TITLES, problems) if problems else ""
    latency, tradeoff = svg_latency(rows), svg_tradeoff(rows)
    plots = (f"<h2>Latency distribution</h2>{latency}" if latency else "") + \
        (f"<h2>Accuracy, size and speed</h2>{tradeoff}" if tradeoff else "")
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>deploycheck report</title>
<style>{PAGE_STYLE}</style></head><body>
<h1>deploycheck report</h1>
<p class="verdict {'fail' if document.failed else 'pass'}">{html.escape(run_line(document))}</p>
<p>{len(document.results)} model x format result(s), generated {stamp}.</p>
{tables}{found}{plots}{trends_html}
</body></html>
"""


# the page fits 1,280 px: cells wrap instead of widening the table, SVGs scale down with the window
PAGE_STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; max-width: 1240px; }
table { border-collapse: collapse; margin: 1em 0; font-size: 12px; max-width: 100%; }
th, td { border: 1px solid #ccc; padding: 3px 6px; text-align: right; overflow-wrap: anywhere; }
th { background: #f0f0f0; } td:first-child, td:nth-child(2) { text-align: left; white-space: nowrap; }
td.bad { background: #fdd; font-weight: bold; }
p.verdict { font-size: 15px; font-weight: bold; padding: 6px 10px; border-radius: 4px; }
p.verdict.fail { background: #fdd; } p.verdict.pass { background: #dfd; }
svg { max-width: 100%; height: auto; }
"""


def write_json_report(path: Path, document: RunResult) -> None:
    """The run document (`RunResult.to_dict()`: what `deploycheck report merge` and `compare` read)."""
    write_json(path, document.to_dict())


def write_markdown(path: Path, document: RunResult) -> None:
    write_text(path, markdown_report(document))


def write_html(path: Path, document: RunResult, trends_html: str = "") -> None:
    write_text(path, html_report(document, trends_html))


def benchmark_json(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The latencies in pytest-benchmark's JSON schema (seconds), one benchmark per model x format x batch size,
    so tools that read pytest-benchmark files (its `compare`, CI dashboards) read these."""
    benchmarks = []
    environment: dict[str, Any] = {}
    for row in rows:
        environment = row.get("environment") or environment
        for batch, stats in sorted((row.get("latency") or {}).items(), key=lambda item: int(item[0])):
            q = stats.get("quantiles_ms") or [stats["p50_ms"]]
            q1, q3 = float(q[len(q) // 4]) / 1e3, float(q[(3 * len(q)) // 4]) / 1e3
            name = f"{row['model']}/{row['format']}[batch={batch}]"
            mean = stats["mean_ms"] / 1e3
            benchmarks.append({
                "group": row["model"], "name": name, "fullname": name,
                "params": {"batch_size": int(batch)}, "param": str(batch),
                "extra_info": {"format": row["format"], "throughput_per_s": stats.get("throughput_per_s"),
                               "p99_ms": stats.get("p99_ms"), "stabilised": stats.get("stabilised"),
                               "disturbed_rounds": stats.get("disturbed_rounds")},
                "options": {"timer": "perf_counter", "disable_gc": True, "warmup": True},
                "stats": {"min": stats["min_ms"] / 1e3, "max": stats["max_ms"] / 1e3, "mean": mean,
                          "stddev": stats["stddev_ms"] / 1e3, "rounds": stats["calls"],
                          "median": stats["p50_ms"] / 1e3, "iqr": stats["iqr_ms"] / 1e3, "q1": q1, "q3": q3,
                          "iqr_outliers": 0, "stddev_outliers": 0, "outliers": "0;0",
                          "ld15iqr": stats["min_ms"] / 1e3, "hd15iqr": stats["max_ms"] / 1e3,
                          "ops": 1 / mean if mean else 0.0, "total": mean * stats["calls"], "iterations": 1},
            })
    return {"machine_info": {"node": os.uname().nodename, "processor": environment.get("cpu", ""),
                             "machine": environment.get("machine", ""), "cpu": environment,
                             "python_implementation": "CPython", "python_version": environment.get(
                                 "versions", {}).get("python", "")},
            "commit_info": {}, "benchmarks": benchmarks,
            "datetime": datetime.datetime.now(datetime.timezone.utc).isoformat(),
            "version": f"deploycheck {version('deploycheck')}"}


def write_benchmark_json(path: Path, document: RunResult) -> None:
    write_json(path, benchmark_json(document.rows()))
