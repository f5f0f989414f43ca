"""`deploycheck report merge`: the JSON reports of a CI matrix (one job per model, or per group of formats, or the
single-pass models in one job and the decoders in another) made into the one run document a single job would
have written, single-pass and generative results alike. Shards must come from one commit and must not hold the
same model x format twice; either is refused by name, since a merged verdict over them would mean nothing."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from deploycheck.errors import DeployCheckError
from deploycheck.formats import format_names
from deploycheck.report.files import write_html, write_json_report, write_markdown
from deploycheck.report.summary import summary_lines, verdict
from deploycheck.run_result import KINDS, Result, RunInfo, RunResult, ordered


def read_shard(path: Path) -> RunResult:
    """The run document of one JSON report (`--deploycheck-report`); a report written before results had a kind
    (rows of single-pass models) is read as single-pass results."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DeployCheckError(f"report merge: {path} is not a readable JSON report ({exc})") from exc
    if not isinstance(data, dict) or not isinstance(data.get("results"), list):
        raise DeployCheckError(f"report merge: {path} has no 'results' list; is it a --deploycheck-report file?")
    results = []
    for position, result in enumerate(data["results"]):
        if not isinstance(result, dict) or not isinstance(result.get("model"), str) or \
                not isinstance(result.get("format"), str):
            raise DeployCheckError(f"report merge: {path} results[{position}] has no 'model' and 'format'")
        if "kind" not in result:
            results.append(Result.from_row(result))
            continue
        if result["kind"] not in KINDS:
            raise DeployCheckError(f"report merge: {path} results[{position}] has kind {result['kind']!r}; "
                                   f"expected one of {', '.join(KINDS)}")
        try:
            results.append(Result.from_dict(result))
        except (KeyError, TypeError, ValueError) as exc:
            raise DeployCheckError(f"report merge: {path} results[{position}] is not a result of the run "
                                   f"document ({exc!r})") from exc
    run = data.get("run")
    return RunResult(RunInfo.from_dict(run) if isinstance(run, dict) else None, tuple(results))


def merge_shards(paths: Sequence[Path]) -> RunResult:
    """One run document of every shard's results, in the order of a single job's tables."""
    seen: dict[tuple[str, str], Path] = {}
    commits: dict[str, Path] = {}
    runs: list[RunInfo] = []
    results: list[Result] = []
    for path in paths:
        shard = read_shard(path)
        if shard.run is not None:
            runs.append(shard.run)
            commit = (shard.run.commit or "").removesuffix("+dirty")
            if commits and commit not in commits:
                other, first = next(iter(commits.items()))
                raise DeployCheckError(f"report merge: {path} was run on commit {commit[:10] or '(none)'} and "
                                       f"{first} on {other[:10] or '(none)'}: shards of one report come from one "
                                       "commit")
            commits.setdefault(commit, path)
        for result in shard.results:
            pair = (result.model, result.format)
            if pair in seen:
                raise DeployCheckError(f"report merge: {result.name} is in both {seen[pair]} and {path}: each "
                                       "model x format must be measured by one shard")
            seen[pair] = path
            results.append(result)
    merged = replace(min(runs, key=lambda run: run.time), run_id="+".join(run.run_id for run in runs)) \
        if runs else None
    return RunResult(merged, ordered(results, format_names()))


def write_merged(paths: Sequence[Path], out: Path, markdown: Path | None = None,
                 html: Path | None = None) -> tuple[str, bool]:
    """Merge the shards, write the JSON report (and the Markdown and HTML ones when asked), and return what the
    terminal summary would print and whether the merged verdict fails."""
    document = merge_shards(paths)
    write_json_report(out, document)
    if markdown:
        write_markdown(markdown, document)
    if html:
        write_html(html, document)
    lines = [*summary_lines(document), verdict(document)] if document.results else ["no results in the shards"]
    return "\n".join(lines), not document.passed
