"""What a gate run does with the history at its end: hold each model x format's figures to its own history (with
`--deploycheck-fail-on-change-point`), then append the run. Plain functions, used by the pytest plugin and usable
from any script that has rows."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from deploycheck.history.records import records_from_results, records_from_rows
from deploycheck.history.store import HistoryStore
from deploycheck.history.trend import Change, counters_text, describe, new_worse_changes
from deploycheck.run_result import Result, RunInfo

HISTORY_WINDOW = 100  # the runs a new change point is searched in: the recent past, at bounded cost


@dataclass
class HistoryOutcome:
    """Lines for the summary, and the new change points that made a figure worse (each failed its row when the
    run was asked to fail on them)."""

    lines: list[str] = field(default_factory=list)
    changes: list[Change] = field(default_factory=list)


def change_note(change: Change) -> str:
    return (f"{change.model}/{change.format}: new change point in {change.figure}, {describe(change)}, between "
            f"commits {change.commits} (p = {change.point.pvalue:.1e}; cost counters: {counters_text(change)})")


def record_run(location: str, rows: Sequence[dict[str, Any]], run: RunInfo, fail_on_change_point: bool,
               decoders: Sequence[Result] = ()) -> HistoryOutcome:
    """Append this run's rows and decoder results to the history at `location`. With `fail_on_change_point`,
    each row whose figures make a new worse change point in its recent history first gets a failed `history`
    section (so the record, the reports and the verdict say FAIL); a decoder's new worse change points are in
    `changes`, for the caller to add to its result."""
    store = HistoryStore(location)
    outcome = HistoryOutcome()
    decoder_records = records_from_results(decoders, run)
    if fail_on_change_point:
        current = {(r.model, r.format): r for r in [*records_from_rows(rows, run), *decoder_records]}
        pasts = store.recent_series(list(current), last_runs=HISTORY_WINDOW)
        for row in rows:
            key = (row["model"], row["format"])
            if key not in current:
                continue
            changes = new_worse_changes(pasts[key], [current[key]])
            row["history"] = {"passed": not changes, "changes": [change_note(c) for c in changes]}
            outcome.changes += changes
        for record in decoder_records:
            outcome.changes += new_worse_changes(pasts[(record.model, record.format)], [record])
    added = store.append([*records_from_rows(rows, run), *decoder_records])
    outcome.lines.append(f"deploycheck: history: {added} record(s) of run {run.run_id[:8]} "
                         f"({run.commit[:10] if run.commit else 'no commit'}) appended to {store.label}")
    if outcome.changes:
        outcome.lines.append(f"deploycheck: {len(outcome.changes)} new change point(s) that make a figure worse "
                             "(--deploycheck-fail-on-change-point):")
        outcome.lines += [f"  {change_note(c)}" for c in outcome.changes]
    return outcome
