"""What `deploycheck history` does, as plain functions (the CLI parses arguments and calls these): the trend
table of the latest runs, the history page, and the merge of stores."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from deploycheck.history.pictures import history_page
from deploycheck.history.store import POSTGRES_SCHEMES, HistoryError, HistoryStore, merge_stores
from deploycheck.history.trend import trend_table, trends
from deploycheck.jsonio import write_text

TABLE_RUNS = 50  # the runs the table reads by default: the recent past, answered at once however long the history


def open_history(location: str) -> HistoryStore:
    """The store at `location`, refused when it is a file path with nothing there (a gate run writes one)."""
    if not location.startswith(POSTGRES_SCHEMES) and not Path(location).is_file():
        raise HistoryError(f"history: no history at {location} (a gate run writes one; --store names another)")
    return HistoryStore(location)


def show_history(location: str, model: str | None = None, format_name: str | None = None,
                 last: int | None = None) -> str:
    """The trend table (and change points) of the last `last` runs (default `TABLE_RUNS`)."""
    store = open_history(location)
    records = store.records(model, format_name, last_runs=last or TABLE_RUNS)
    if not records:
        return f"no runs in {store.label}" + (f" for {model or ''}/{format_name or ''}" if model or format_name
                                              else "")
    runs = len({record.run.run_id for record in records})
    return (f"{store.label}: the last {runs} run(s), {records[0].run.time} to {records[-1].run.time}\n\n"
            + trend_table(trends(records)))


def write_history_page(location: str, path: Path, model: str | None = None, format_name: str | None = None,
                       last: int | None = None) -> str:
    """The history page of the whole store (or its last `last` runs) written to `path`; returns what it did."""
    store = open_history(location)
    drawn = store.records(model, format_name, last_runs=last)
    write_text(path, history_page(drawn, store.label))
    return f"history page of {len({r.run.run_id for r in drawn})} run(s) written to {path}"


def merge_history(sources: Sequence[str], target: str | None) -> str:
    if not target:
        raise HistoryError("history merge: name the merged store with -o PATH")
    read, added = merge_stores(sources, target)
    return f"{read} record(s) read from {len(sources)} store(s); {added} new in {target}"
