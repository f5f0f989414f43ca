"""The history store: every gate run's records, in one SQLite file by default or in a PostgreSQL database shared
by many runners (`postgresql://...`, with the `deploycheck[postgres]` extra).

Both hold the same two tables (`runs`, `results`; figures as JSON text) under a schema version in `meta`. A run
is appended in one transaction, so a reader (or a process killed mid-write) sees all of a run or none of it; rows
are keyed by (run id, model, format) and inserted with ON CONFLICT DO NOTHING, so two runs writing at once, or a
merge of stores that share runs, keep every record exactly once. SQLite runs in WAL mode with a busy timeout:
readers never block the writer, and two writers wait their turn.
"""

from __future__ import annotations

import json
import math
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from deploycheck.errors import DeployCheckError
from deploycheck.history.records import HistoryRecord
from deploycheck.run_result import RunInfo

SCHEMA = 1
BUSY_TIMEOUT_S = 60.0
POSTGRES_SCHEMES = ("postgresql://", "postgres://")
_LOCK_ID = 7_265_031  # the advisory lock that serialises creating the tables in PostgreSQL

_TABLES = (
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS runs (run_id TEXT PRIMARY KEY, commit_sha TEXT, branch TEXT, time TEXT NOT NULL, "
    "mode TEXT NOT NULL, machine TEXT NOT NULL, environment TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS results (run_id TEXT NOT NULL REFERENCES runs (run_id), model TEXT NOT NULL, "
    "format TEXT NOT NULL, verdict TEXT NOT NULL, figures TEXT NOT NULL, counters TEXT NOT NULL, "
    "PRIMARY KEY (run_id, model, format))",
    "CREATE INDEX IF NOT EXISTS results_series ON results (model, format)",
    "CREATE INDEX IF NOT EXISTS runs_order ON runs (time, run_id)",
)


class HistoryError(DeployCheckError):
    """A history store that cannot be opened, read or written (named, with what to do)."""


class HistoryStore:
    """The records of every gate run at `location` (a path, or a PostgreSQL URL)."""

    def __init__(self, location: str | Path) -> None:
        self.location = str(location)
        self.postgres = self.location.startswith(POSTGRES_SCHEMES)
        if not self.postgres:
            try:
                Path(self.location).parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise HistoryError(f"history {self.location}: its directory cannot be made ({exc})") from exc
        with self._transaction() as cursor:
            self._create(cursor)

    def __repr__(self) -> str:
        return f"HistoryStore({self.label!r})"

    @property
    def label(self) -> str:
        """The location without a password, for messages."""
        if not self.postgres:
            return self.location
        scheme, _, rest = self.location.partition("://")
        credentials, at, host = rest.rpartition("@")
        return f"{scheme}://{credentials.split(':')[0]}@{host}" if at else self.location

    @contextmanager
    def _transaction(self) -> Iterator[Any]:
        """A cursor in one transaction (committed on success, rolled back on error), with `?` placeholders."""
        try:
            connection = self._connect()
        except HistoryError:
            raise
        except Exception as exc:  # sqlite3 and psycopg errors alike: the store cannot be reached
            raise HistoryError(f"history {self.label}: cannot be opened ({exc})") from exc
        try:
            cursor = _Cursor(connection.cursor(), self.postgres)
            if not self.postgres:
                cursor.execute("BEGIN IMMEDIATE")
            yield cursor
            connection.commit()
        except Exception as exc:
            connection.rollback()
            if isinstance(exc, HistoryError):
                raise
            raise HistoryError(f"history {self.label}: {exc}") from exc
        finally:
            connection.close()

    def _connect(self) -> Any:
        if self.postgres:
            try:  # optional backend: only a PostgreSQL history needs it
                import psycopg
            except ImportError as exc:
                raise HistoryError(f"history {self.label}: a PostgreSQL history needs psycopg: pip install "
                                   "'deploycheck[postgres]'") from exc
            return psycopg.connect(self.location, connect_timeout=10)
        connection = sqlite3.connect(self.location, timeout=BUSY_TIMEOUT_S, isolation_level=None)
        tables = [str(row[0]) for row in connection.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
        if tables and "results" not in tables:  # another tool's database (or a mistyped path): never written into
            connection.close()
            raise HistoryError(f"history {self.label}: a SQLite database but not a deploycheck history (its tables: "
                               f"{', '.join(tables)}); nothing was written to it: give the path of a history or a "
                               "new file")
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("PRAGMA synchronous=NORMAL")
        return connection

    def _create(self, cursor: _Cursor) -> None:
        if self.postgres:  # creators wait their turn; DDL on existing tables would lock them against writers
            cursor.execute(f"SELECT pg_advisory_xact_lock({_LOCK_ID})")
            cursor.execute("SELECT to_regclass('results') IS NOT NULL")
        else:
            cursor.execute("SELECT COUNT(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = 'results'")
        if not cursor.fetchone()[0]:
            for statement in _TABLES:
                cursor.execute(statement)
        cursor.execute("INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO NOTHING",
                       ("schema", str(SCHEMA)))
        cursor.execute("SELECT value FROM meta WHERE key = ?", ("schema",))
        stored = int(cursor.fetchone()[0])
        if stored > SCHEMA:
            raise HistoryError(f"history {self.label}: schema {stored} is newer than this deploycheck understands "
                               f"({SCHEMA}); upgrade deploycheck")

    def append(self, records: Sequence[HistoryRecord]) -> int:
        """Add records (each run once, each model x format of a run once) in one transaction; returns how many
        were new. A figure that is not a finite number is refused before anything is written, and so is a store
        whose file is damaged (a run appended to it could never be read back)."""
        for record in records:
            for name, value in record.figures.items():
                if not _finite_number(value):
                    raise HistoryError(f"history {self.label}: {record.model}/{record.format} of run "
                                       f"{record.run.run_id[:8]}: figure {name!r} is {value!r}, not a finite number; "
                                       "nothing was appended")
        runs = {record.run.run_id: record.run for record in records}
        with self._transaction() as cursor:
            self._check_sound(cursor)
            cursor.executemany(
                "INSERT INTO runs (run_id, commit_sha, branch, time, mode, machine, environment) VALUES "
                "(?, ?, ?, ?, ?, ?, ?) ON CONFLICT (run_id) DO NOTHING",
                [(run.run_id, run.commit, run.branch, run.time, run.mode, run.machine,
                  json.dumps(run.environment, sort_keys=True, default=str)) for run in runs.values()])
            before = self._count(cursor)
            cursor.executemany(
                "INSERT INTO results (run_id, model, format, verdict, figures, counters) VALUES (?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (run_id, model, format) DO NOTHING",
                [(r.run.run_id, r.model, r.format, r.verdict, json.dumps(r.figures, sort_keys=True),
                  json.dumps(r.counters, sort_keys=True, default=str)) for r in records])
            return self._count(cursor) - before

    def _check_sound(self, cursor: _Cursor) -> None:
        """SQLite's quick check of the whole file, before it is written to (PostgreSQL guards its own)."""
        if self.postgres:
            return
        cursor.execute("PRAGMA quick_check")
        found = [str(row[0]) for row in cursor.fetchall()]
        if found == ["ok"]:  # the pages are sound; a byte flipped inside a record's text is not seen by that
            cursor.execute("SELECT results.run_id, model, format FROM results JOIN runs USING (run_id) WHERE NOT "
                           "(json_valid(figures) AND json_valid(counters) AND json_valid(environment)) LIMIT 3")
            found = [f"{model}/{fmt} of run {run_id[:8]} is not valid JSON" for run_id, model, fmt in cursor.fetchall()]
            found = found or ["ok"]
        if found != ["ok"]:
            raise HistoryError(f"history {self.label}: the file is damaged (SQLite's quick_check: "
                               f"{'; '.join(found[:3])}); nothing was appended: restore it from a copy, or move it "
                               "aside to start a new history")

    @staticmethod
    def _count(cursor: _Cursor) -> int:
        cursor.execute("SELECT COUNT(*) FROM results")
        return int(cursor.fetchone()[0])

    def count(self) -> int:
        with self._transaction() as cursor:
            return self._count(cursor)

    def records(self, model: str | None = None, format_name: str | None = None,
                last_runs: int | None = None) -> list[HistoryRecord]:
        """Records in run order (time, then run id), of one model and/or format if given, from the last
        `last_runs` runs that have any (all of them by default)."""
        where: list[str] = ["1 = 1"]
        params: list[Any] = []
        for column, value in (("results.model", model), ("results.format", format_name)):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        series = " AND ".join(where)
        condition = f"WHERE {series}"
        if last_runs is not None:
            condition += (" AND results.run_id IN (SELECT run_id FROM (SELECT runs.run_id AS run_id FROM runs WHERE "
                          f"EXISTS (SELECT 1 FROM results WHERE results.run_id = runs.run_id AND {series}) "
                          "ORDER BY runs.time DESC, runs.run_id DESC LIMIT ?) AS recent)")
            params = [*params, *params, last_runs]
        with self._transaction() as cursor:
            cursor.execute(f"SELECT {_RECORD_COLUMNS} FROM results JOIN runs ON runs.run_id = results.run_id "
                           f"{condition} ORDER BY runs.time, runs.run_id, model, format", params)
            return _decoded(cursor.fetchall())

    def recent_series(self, series: Sequence[tuple[str, str]],
                      last_runs: int) -> dict[tuple[str, str], list[HistoryRecord]]:
        """Each (model, format)'s records of its own last `last_runs` runs, in run order, in one query (the
        end of a run holds every row to its recent past at once)."""
        found: dict[tuple[str, str], list[HistoryRecord]] = {key: [] for key in series}
        if not found:
            return found
        wanted = " OR ".join(["(results.model = ? AND results.format = ?)"] * len(found))
        with self._transaction() as cursor:
            cursor.execute(
                f"SELECT {_RECORD_NAMES} FROM (SELECT {_RECORD_COLUMNS}, ROW_NUMBER() OVER (PARTITION BY "
                "results.model, results.format ORDER BY runs.time DESC, runs.run_id DESC) AS recency FROM results "
                f"JOIN runs ON runs.run_id = results.run_id WHERE {wanted}) AS ranked WHERE recency <= ? "
                "ORDER BY time, run_id, model, format", [*(v for key in found for v in key), last_runs])
            for record in _decoded(cursor.fetchall()):
                found[(record.model, record.format)].append(record)
        return found

    def check(self) -> str:
        """SQLite's integrity check ("ok" when the file is sound); PostgreSQL guards its own."""
        if self.postgres:
            return "ok"
        with self._transaction() as cursor:
            cursor.execute("PRAGMA integrity_check")
            return str(cursor.fetchone()[0])


_RECORD_COLUMNS = ("runs.run_id, commit_sha, branch, time, mode, machine, environment, results.model, "
                   "results.format, verdict, figures, counters")
_RECORD_NAMES = ("run_id, commit_sha, branch, time, mode, machine, environment, model, format, verdict, figures, "
                 "counters")


def _decoded(fetched: Sequence[Sequence[Any]]) -> list[HistoryRecord]:
    """Records from rows of `_RECORD_COLUMNS`, sharing one `RunInfo` per run."""
    runs: dict[str, RunInfo] = {}
    records = []
    for run_id, commit, branch, time, mode, machine, environment, model, fmt, verdict, figures, counters in fetched:
        run = runs.get(run_id)
        if run is None:
            run = runs[run_id] = RunInfo(run_id, commit, branch, time, mode, machine, json.loads(environment))
        decoded = json.loads(figures)
        wrong = {name: value for name, value in decoded.items() if not _finite_number(value)}
        if wrong:
            name, value = next(iter(wrong.items()))
            raise ValueError(f"{model}/{fmt} of run {run_id[:8]} ({commit or 'no commit'}): figure {name!r} is "
                               f"{value!r}, not a finite number (the store was edited by hand or written by another "
                               "tool); delete or correct that record")
        records.append(HistoryRecord(run, model, fmt, verdict, decoded, json.loads(counters)))
    return records


def _finite_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


class _Cursor:
    """A DB-API cursor that takes SQLite's `?` placeholders for either database."""

    def __init__(self, cursor: Any, postgres: bool) -> None:
        self._cursor = cursor
        self._postgres = postgres

    def _sql(self, statement: str) -> str:
        return statement.replace("?", "%s") if self._postgres else statement

    def execute(self, statement: str, params: Sequence[Any] = ()) -> None:
        self._cursor.execute(self._sql(statement), params)

    def executemany(self, statement: str, rows: Iterable[Sequence[Any]]) -> None:
        rows = list(rows)
        if rows:
            self._cursor.executemany(self._sql(statement), rows)

    def fetchone(self) -> Any:
        return self._cursor.fetchone()

    def fetchall(self) -> list[Any]:
        return list(self._cursor.fetchall())


def merge_stores(sources: Sequence[str | Path], target: str | Path) -> tuple[int, int]:
    """Copy every record of `sources` into `target` (created if missing), each run and record once; returns
    (records read, records new in the target)."""
    for source in sources:  # before the target is made: a mistyped source leaves nothing behind
        if not str(source).startswith(POSTGRES_SCHEMES) and not Path(source).is_file():
            raise HistoryError(f"history merge: {source} does not exist")
    destination = HistoryStore(target)
    read = added = 0
    for source in sources:
        records = HistoryStore(source).records()
        read += len(records)
        added += destination.append(records)
    return read, added
