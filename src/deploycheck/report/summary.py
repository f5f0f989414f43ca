"""The end-of-run summary of a run document: the single-pass table, the lines under it, and the verdict, which
every other output (the Markdown and HTML reports, the GitHub job summary, `report merge`) repeats.

A single-pass row is the dict of everything measured for one model x format (what the `Gate` recorded). Columns
that no row has a value for are left out, so a run that only checks parity prints a parity table.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

from deploycheck.baseline.compare import smallest_batch
from deploycheck.formats import format_names
from deploycheck.formats.base import int8_in_name_only
from deploycheck.report.checks import check_text
from deploycheck.report.generative import best_decoders, generation_table, skipped_decoders
from deploycheck.rows import ACCEPT_COMMAND, best_throughput, nested
from deploycheck.run_result import Result, RunResult
from deploycheck.table import format_table, human_size


def _pct(value: Any) -> str:
    return "" if value is None else f"{value:.2%}"


def _num(value: Any, spec: str = ".3g") -> str:
    return "" if value is None else format(value, spec)


def _agreement(row: dict[str, Any]) -> float | None:
    """Top-1 agreement with the eager reference on the eval data (what accuracy measured); the parity batch's
    agreement only when no eval data was run."""
    measured = nested(row, "accuracy", "agreement")
    fallback = nested(row, "parity", "top1_agreement")
    return float(measured) if measured is not None else None if fallback is None else float(fallback)


def _baseline_change(row: dict[str, Any]) -> str:
    """The "vs baseline" cell: the first problem whole, with a count of the others (a cell cut at its width must
    not cut the figure that matters), else the first change, else "same"."""
    sections = [c for c in (row.get("baseline") or {}).values() if c.get("change")]
    problems = [c for c in sections if c.get("problems")]
    if problems:
        more = sum(int(c["problems"]) for c in problems) - 1
        return str(problems[0].get("headline") or problems[0]["change"]) + (f" (+{more} more)" if more else "")
    notable = [c["change"] for c in sections if c["change"] != "same"]
    return notable[0] if notable else "same" if sections else ""


def _speedup_interval(original: dict[str, Any] | None) -> str:
    if not original or original.get("speedup") is None:
        return ""
    low, high = original["speedup_interval"]
    return f"{original['speedup']:.2f} [{low:.2f}, {high:.2f}]"


COLUMNS: list[tuple[str, Callable[[dict[str, Any]], str]]] = [
    ("model", lambda r: str(r.get("model", ""))),
    ("format", lambda r: str(r.get("format", ""))),
    ("size", lambda r: human_size(r.get("size_bytes"))),
    ("size/onnx", lambda r: _num(r.get("size_ratio_vs_onnx"), ".2f")),
    ("params", lambda r: _num(r.get("parameters"), "d")),
    ("sparsity", lambda r: _pct(r.get("sparsity")) if r.get("sparsity") else ""),
    ("int8 weights", lambda r: _pct(r.get("int8_weight_fraction"))),
    ("max abs err", lambda r: _num(nested(r, "parity", "max_abs"))),
    ("agree (eval)", lambda r: _pct(_agreement(r))),
    ("accuracy", lambda r: _pct(nested(r, "accuracy", "value"))),
    ("drop", lambda r: _pct(nested(r, "accuracy", "drop"))),
    ("p50 ms", lambda r: _num(smallest_batch(r.get("latency")).get("p50_ms"), ".3f")),
    ("p99 ms", lambda r: _num(smallest_batch(r.get("latency")).get("p99_ms"), ".3f")),
    ("samples/s", lambda r: _num(best_throughput(r), ".0f")),
    ("x eager", lambda r: _num(nested(r, "speedup", "vs_eager", "ratio"), ".2f")),
    ("drop vs orig", lambda r: _pct(nested(r, "original", "drop"))),
    ("agree vs orig", lambda r: _pct(nested(r, "original", "agreement"))),
    ("size/orig", lambda r: _num(nested(r, "original", "size_ratio"), ".2f")),
    ("speedup vs orig", lambda r: _speedup_interval(nested(r, "original"))),
    ("vs baseline", _baseline_change),
]
STATUS = "status"  # the last column: the result's verdict, from its checks


def sort_rows(rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows by model, then by the formats' registry order (eager first): the order of every table."""
    order = {name: position for position, name in enumerate(format_names())}
    return sorted(rows, key=lambda row: (str(row["model"]), order.get(str(row["format"]), len(order)),
                                         str(row["format"])))


def with_size_ratios(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows with `size_ratio_vs_onnx`: each format's size over its model's fp32 ONNX size, when that was run."""
    onnx_sizes = {r["model"]: r["size_bytes"] for r in rows if r.get("format") == "onnx" and r.get("size_bytes")}
    return [{**r, "size_ratio_vs_onnx": r["size_bytes"] / onnx_sizes[r["model"]]}
            if r.get("model") in onnx_sizes and r.get("size_bytes") else dict(r) for r in rows]


# the columns that answer "can this ship": kept in the main table, the others go to a detail table when the
# whole does not fit the width
MAIN_COLUMNS = ("model", "format", "size", "max abs err", "agree (eval)", "accuracy", "drop", "p50 ms", "samples/s",
                "x eager", "vs baseline", "status")
MOVABLE = ("samples/s", "max abs err", "size", "agree (eval)")  # moved to the details, in turn, until the main fits
WIDTH = 120
CELL_WIDTH = 44  # longer cells (a baseline change with its reasons) are cut; the full text is in the report


def table_cells(results: Sequence[Result], titles: Sequence[str] | None = None
                ) -> tuple[list[str], list[list[str]]]:
    """Titles and cells of the single-pass results' table (of `titles` only, if given), keeping the columns some
    result has a value for: each column read from the result's measurements, the status from its checks."""
    columns = [(title, render) for title, render in COLUMNS if titles is None or title in titles]
    rows = with_size_ratios([dict(result.measurements) for result in results])
    cells = [[_cut(render(row)) for _, render in columns] for row in rows]
    keep = [i for i, (title, _) in enumerate(columns) if title in ("model", "format") or any(c[i] for c in cells)]
    if titles is None or STATUS in titles:
        return [*(columns[i][0] for i in keep), STATUS], [[*(c[i] for i in keep), result.status]
                                                          for c, result in zip(cells, results)]
    return [columns[i][0] for i in keep], [[c[i] for i in keep] for c in cells]


def _cut(cell: str) -> str:
    return cell if len(cell) <= CELL_WIDTH else cell[:CELL_WIDTH - 1] + "…"


def summary_table(results: Sequence[Result], width: int = WIDTH) -> str:
    """A row per single-pass model x format, `width` columns wide at most where it can be: when everything does
    not fit, the main columns form one table and the rest (sizes, compression, the original) a second, by the
    same rows."""
    whole = format_table(*table_cells(results))
    note = ("\nx eager: speed over the eager model, timed side by side (interleaved) in this run; it can differ from "
            "\n  the ratio of the p50s, which were timed apart" if "x eager" in whole.splitlines()[0] else "")
    if max(len(line) for line in whole.splitlines()) <= width:
        return whole + note
    main = list(MAIN_COLUMNS)
    table = format_table(*table_cells(results, main))
    for title in MOVABLE:
        if max(len(line) for line in table.splitlines()) <= width:
            break
        main.remove(title)
        table = format_table(*table_cells(results, main))
    details = [title for title, _ in COLUMNS if title not in main]
    detail_titles, detail_cells = table_cells(results, ["model", "format", *details])
    if len(detail_titles) > 2:
        table += "\n\ndetails:\n" + format_table(detail_titles, detail_cells)
    return table + note


def best_formats(results: Sequence[Result]) -> list[str]:
    """Per model, the answer a user came for: the fastest format (batch-1 p50) that passed every gate, with its
    speed over eager and its accuracy drop."""
    lines = []
    for model in dict.fromkeys(result.model for result in results):
        timed = [(float(p50), result.measurements) for result in results
                 if result.model == model and result.status == "ok"
                 and (p50 := smallest_batch(result.measurements.get("latency")).get("p50_ms")) is not None]
        if not timed:
            continue
        p50_ms, best = min(timed, key=lambda pair: pair[0])
        speedup = nested(dict(best), "speedup", "vs_eager", "ratio")
        drop = nested(dict(best), "accuracy", "drop")
        lines.append(f"deploycheck: best format for {model}: {best['format']} (p50 {p50_ms:.3f} ms"
                     + (f", {speedup:.2f}x eager" if speedup is not None else "")
                     + (f", accuracy drop {drop:.2%}" if drop is not None else "") + ", every gate passed)")
    return lines


def fell_behind(result: Result) -> bool:
    """Whether a figure of the result fell behind its baseline or its accepted artifact (what `ACCEPT_COMMAND`
    would accept)."""
    return any(check.failed and check.against in ("baseline", "accepted") for check in result.checks)


def verdict(document: RunResult) -> str:
    """The run in one line, last: how many model x formats (single-pass and generative alike) failed and which,
    what was inconclusive, and what to do."""
    failed, judged = document.failed, document.judged
    inconclusive = sum(1 for result in judged if result.status == "inconclusive")
    if not failed:
        tail = f", {inconclusive} inconclusive (see above)" if inconclusive else ""
        return f"deploycheck: {len(judged) - inconclusive} of {len(judged)} model x format(s) passed{tail}"
    behind = [result for result in failed if fell_behind(result)]
    names = ", ".join(result.name for result in failed[:4]) + (", ..." if len(failed) > 4 else "")
    line = f"deploycheck: {len(failed)} of {len(judged)} model x format(s) FAILED ({names})"
    if behind:
        line += (f"; {len(behind)} fell behind its baseline\n  if that is intended, accept the new figures with: "
                 f"{ACCEPT_COMMAND}")
    return line


def quantization_summary(rows: Sequence[dict[str, Any]]) -> list[str]:
    """A line for every quantized artifact that left most of its weights in floating point (an LSTM that ONNX
    Runtime's quantizer does not handle, a model with few Linear layers): int8 in name only."""
    return [f"deploycheck: {row['model']}/{row['format']} is int8 in name only: {row['int8_weight_fraction']:.0%} of "
            "its weights are in 8 bits or fewer (the rest stays floating point)" for row in rows
            if int8_in_name_only(row.get("int8_weight_fraction"))] + [
        f"deploycheck: {row['model']}/{row['format']} computes {nested(row, 'counters', 'float_compute_nodes')} "
        "matrix product(s) or convolution(s) in float (its quantizer left them, e.g. a Gemm beside the MatMuls of a "
        "weight-only format)" for row in rows
        if row.get("int8_weight_fraction") is not None and nested(row, "counters", "float_compute_nodes")]


def unchecked_budgets(rows: Sequence[dict[str, Any]]) -> list[str]:
    """A line for every model whose spec sets `*_vs_original` budgets that no test enforced (no test called
    `assert_original`): a budget that was set but not checked must not read as passed."""
    unchecked: dict[str, list[str]] = {}
    checked = {row["model"] for row in rows if isinstance(row.get("original"), dict)}
    for row in rows:
        if row.get("budgets_vs_original") and row["model"] not in checked:
            unchecked[row["model"]] = list(row["budgets_vs_original"])
    return [f"deploycheck: {model} sets {', '.join(budgets)} but no test called assert_original: set but not "
            "checked" for model, budgets in unchecked.items()]


def unchecked_sizes(rows: Sequence[dict[str, Any]]) -> list[str]:
    """One line naming the model x formats held to their baselines by other checks but whose size no test held
    (no test called `assert_size`, as a gate written before size had its own check): not gated, not passed."""
    missing = [f"{row['model']}/{row['format']}" for row in rows
               if row.get("baseline") and "size" not in row["baseline"]]
    if not missing:
        return []
    return [f"deploycheck: no test called assert_size for {', '.join(missing)}: their size is held to no baseline "
            "(add `def test_size(artifact, deploycheck): deploycheck.assert_size(artifact)`)"]


def inconclusive_summary(document: RunResult) -> list[str]:
    """Lines naming every verdict that could not be reached, with its reason: they did not fail the run, and the
    reader must know that nothing was concluded."""
    found = [(name, f"{finding.get('label') or finding.get('metric')}: {finding.get('note')}")
             for name, finding in baseline_findings(document.rows(), only_problems=True)
             if finding.get("status") == "inconclusive"]
    found += [(result.name, check_text(check)) for result in document.of_kind("generative")
              for check in result.checks if check.status == "inconclusive"]
    if not found:
        return []
    lines = [f"deploycheck: {len(found)} verdict(s) inconclusive (not failed; --deploycheck-strict-latency fails "
             "those against single-pass baselines):"]
    return lines + [f"  {name} {text}" for name, text in found]


def budget_summary(rows: Sequence[dict[str, Any]], budget_s: float | None) -> list[str]:
    """Time spent timing (benchmarks, speedups, side-by-side comparisons) against the budget when one was set,
    and the measurements that were shortened: batch sizes skipped because one call takes longer than their time,
    measured with fewer than 20 calls, or (under a budget) with less time than the bench time."""
    timings = [row["timing"] for row in rows if isinstance(row.get("timing"), dict)]
    lines = []
    if budget_s is not None and timings:
        spent = sum(float(timing.get("spent_s") or 0) for timing in timings)
        lines.append(f"deploycheck: timing budget {budget_s:.0f} s planned, {spent:.1f} s spent on {len(timings)} "
                     "model x format pair(s)")
    shortened = []
    for row in rows:
        timing = row.get("timing") or {}
        notes = [f"batch {batch} skipped ({why})" for batch, why in (timing.get("skipped_batches") or {}).items()]
        notes += [f"batch {batch}: {figures.get('calls')} calls"
                  for batch, figures in (row.get("latency") or {}).items()
                  if isinstance(figures, dict) and int(figures.get("calls") or 0) < 20]
        if budget_s is not None and timing.get("shortened") and timing.get("allowed_per_batch_s") is not None:
            notes.insert(0, f"{timing['allowed_per_batch_s']:.2f} s per batch size")
        if notes:
            shortened.append(f"  {row['model']}/{row['format']}: {'; '.join(notes)}")
    if shortened:
        lines += ["deploycheck: measurements shortened to fit the time (raise --deploycheck-bench-time or the "
                  "budget to measure them fully):", *shortened]
    return lines


def baseline_findings(rows: Sequence[dict[str, Any]], only_problems: bool) -> list[tuple[str, dict[str, Any]]]:
    """Every finding against the baselines (or those not ok), named by model/format; a latency finding's note ends
    with the cost-counter triage of its comparison (whether the graph or the machine moved)."""
    found = []
    for row in rows:
        for check in (row.get("baseline") or {}).values():
            for finding in check.get("findings", []):
                if only_problems and finding.get("status") in ("ok", "reported"):
                    continue
                if check.get("costs") and finding.get("batch_size") is not None:
                    note = "; ".join(n for n in (finding.get("note"), check["costs"]) if n)
                    finding = {**finding, "note": note}
                found.append((f"{row['model']}/{row['format']}", finding))
    return found


def run_line(document: RunResult) -> str:
    """The verdict first, then where it was measured: commit, branch and machine (a report read on its own, in a
    CI job summary or an attached page, says at once what it is about)."""
    line = verdict(document).removeprefix("deploycheck: ").splitlines()[0] if document.results else \
        "nothing measured"
    run = document.run
    if run is None:
        return line
    environment = run.environment
    machine = f"{environment.get('cpu', '?')}, {environment.get('cores', '?')} cores" if environment else run.machine
    where = [f"commit {run.commit[:10]}" if run.commit else "no commit", f"branch {run.branch}" if run.branch else "",
             f"machine {machine} ({run.machine})", run.time]
    return f"{line} — {', '.join(part for part in where if part)}"


def summary_lines(document: RunResult) -> list[str]:
    """What the terminal prints of a document, the verdict aside: the single-pass table and best formats, the
    generative table and best formats, int8-in-name-only lines, and the inconclusive verdicts. The plugin and
    `report merge` both print it, so a merged matrix reads as one job."""
    rows, single_pass = document.rows(), document.of_kind("single-pass")
    decoders = document.of_kind("generative")
    lines = [summary_table(single_pass), *best_formats(single_pass)] if single_pass else []
    if decoders:
        lines += [generation_table(decoders), *best_decoders(decoders), *skipped_decoders(decoders)]
    return lines + quantization_summary(rows) + inconclusive_summary(document)
