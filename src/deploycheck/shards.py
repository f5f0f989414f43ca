"""`deploycheck report merge`: the JSON reports of a CI matrix (one job per model, or per group of formats) made
into the one report a single job would have written. Shards must come from one commit and must not measure the
same model x format twice; either is refused by name, since a merged verdict over them would mean nothing."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from deploycheck import report
from deploycheck.errors import DeployCheckError
from deploycheck.history.records import RunInfo
from deploycheck.report import sort_rows
from deploycheck.rows import row_status


def read_shard(path: Path) -> tuple[RunInfo | None, list[dict[str, Any]]]:
    """The run and rows of one JSON report (`--deploycheck-report`)."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DeployCheckError(f"report merge: {path} is not a readable JSON report ({exc})") from exc
    if not isinstance(data, dict) or not isinstance(data.get("results"), list):
        raise DeployCheckError(f"report merge: {path} has no 'results' list; is it a --deploycheck-report file?")
    rows = data["results"]
    for position, row in enumerate(rows):
        if not isinstance(row, dict) or not isinstance(row.get("model"), str) or \
                not isinstance(row.get("format"), str):
            raise DeployCheckError(f"report merge: {path} results[{position}] has no 'model' and 'format'")
    return (RunInfo.from_dict(data["run"]) if isinstance(data.get("run"), dict) else None), rows


def merge_shards(paths: Sequence[Path]) -> tuple[RunInfo | None, list[dict[str, Any]]]:
    """One run and the rows of every shard, in the order of a single job's tables."""
    seen: dict[tuple[str, str], Path] = {}
    commits: dict[str, Path] = {}
    runs: list[RunInfo] = []
    rows: list[dict[str, Any]] = []
    for path in paths:
        run, shard_rows = read_shard(path)
        if run is not None:
            runs.append(run)
            commit = (run.commit or "").removesuffix("+dirty")
            if commits and commit not in commits:
                other, first = next(iter(commits.items()))
                raise DeployCheckError(f"report merge: {path} was run on commit {commit[:10] or '(none)'} and "
                                       f"{first} on {other[:10] or '(none)'}: shards of one report come from one "
                                       "commit")
            commits.setdefault(commit, path)
        for row in shard_rows:
            pair = (row["model"], row["format"])
            if pair in seen:
                raise DeployCheckError(f"report merge: {pair[0]}/{pair[1]} is in both {seen[pair]} and {path}: "
                                       "each model x format must be measured by one shard")
            seen[pair] = path
            rows.append(row)
    merged = replace(min(runs, key=lambda run: run.time), run_id="+".join(run.run_id for run in runs)) \
        if runs else None
    return merged, sort_rows(rows)


def write_merged(paths: Sequence[Path], out: Path, markdown: Path | None = None,
                 html: Path | None = None) -> tuple[str, bool]:
    """Merge the shards, write the JSON report (and the Markdown and HTML ones when asked), and return what the
    terminal summary would print and whether the merged verdict fails."""
    run, rows = merge_shards(paths)
    report.write_json_report(out, rows, run)
    for path, write in ((markdown, report.write_markdown), (html, report.write_html)):
        if path:
            write(path, rows, run)
    lines = [report.summary_table(rows), *report.best_formats(rows), *report.quantization_summary(rows),
             *report.inconclusive_summary(rows), report.verdict(rows)] if rows else ["no results in the shards"]
    return "\n".join(lines), any(row_status(row) == "FAIL" for row in rows)
