"""The run document: everything one gate run concluded, built once at the end of the run, from which every output
is made (the terminal table and verdict, the exit status, the JSON, Markdown and HTML reports, the GitHub job
summary and annotations, `report merge`). A single-pass model and a generative decoder are results of the same
document, one per model x format, each with its typed checks, so no output can count one kind and forget the
other (pytest-benchmark's one JSON document per session, asv's result files).

A check is a figure with what it was held to: its value and unit, the limit and which side of it passes, the
interval, the baseline's figure, and a status. Nothing in it is display text: writers render checks, they never
read each other's words. A single-pass result still carries the gate's measurement row (`measurements`) for the
columns of its table; its verdict comes from its checks, as a decoder's does.

`schemas/run_result.schema.json` (shipped in the package) is the JSON schema of `RunResult.to_dict()`;
`SCHEMA_VERSION` changes when a reader of an older document would misread a newer one.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, cast, get_args

from deploycheck.rows import nested

SCHEMA_VERSION = 1
SCHEMA_PATH = Path(__file__).parent / "schemas" / "run_result.schema.json"

Kind = Literal["single-pass", "generative"]
# a check's verdict: FAIL (outside its own budget), REGRESSED (behind the baseline or the accepted artifact),
# missing (the baseline has no figure for it), inconclusive (the interval straddles the limit: said, not failed),
# reported (measured, held to nothing), ok
CheckStatus = Literal["ok", "FAIL", "REGRESSED", "missing", "inconclusive", "reported"]
# what a check's value is held to
Against = Literal["budget", "eager", "baseline", "accepted", "original", "history"]
# a result's verdict: "" when nothing was judged
ResultStatus = Literal["ok", "FAIL", "inconclusive", "skipped", ""]
FAILING: tuple[CheckStatus, ...] = ("FAIL", "REGRESSED", "missing")
KINDS: tuple[Kind, ...] = get_args(Kind)


@dataclass(frozen=True)
class RunInfo:
    """One gate run: its id (unique, so merged stores keep each run once), commit, branch, UTC time (ISO 8601),
    what it did with baselines, and the machine's fingerprint and environment record."""

    run_id: str
    commit: str | None
    branch: str | None
    time: str
    mode: str
    machine: str
    environment: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunInfo:
        return cls(str(data["run_id"]), data.get("commit"), data.get("branch"), str(data["time"]),
                   str(data.get("mode") or ""), str(data.get("machine") or ""), dict(data.get("environment") or {}))


@dataclass(frozen=True)
class Check:
    """One figure of one model x format and what it was held to. `limit` bounds `value` from above when `bound`
    is "max", from below when "min"; `interval` is the value's interval where it was estimated (a speed ratio
    over side-by-side rounds); `baseline` the stored figure it was compared with; `step` the first decode step
    or token position where a generative check went wrong."""

    metric: str
    status: CheckStatus
    value: float | None = None
    unit: str = ""
    against: Against | None = None
    limit: float | None = None
    bound: Literal["max", "min"] | None = None
    interval: tuple[float, float] | None = None
    baseline: float | None = None
    batch_size: int | None = None
    step: int | None = None

    @property
    def failed(self) -> bool:
        return self.status in FAILING

    def to_dict(self) -> dict[str, Any]:
        """The fields that are set; a figure that is not a finite number (an infinite KL) is left out, as JSON
        has no such number, and the status still says what it meant."""
        data = asdict(self)
        if self.interval is not None:
            data["interval"] = list(self.interval) if all(map(math.isfinite, self.interval)) else None
        return {key: value for key, value in data.items() if value is not None and value != "" and
                not (isinstance(value, float) and not math.isfinite(value))}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Check:
        interval = data.get("interval")
        return cls(str(data["metric"]), cast(CheckStatus, data["status"]), _number(data.get("value")),
                   str(data.get("unit") or ""), data.get("against"), _number(data.get("limit")), data.get("bound"),
                   None if interval is None else (float(interval[0]), float(interval[1])),
                   _number(data.get("baseline")), _integer(data.get("batch_size")), _integer(data.get("step")))


def _number(value: Any) -> float | None:
    return None if value is None else float(value)


def _integer(value: Any) -> int | None:
    return None if value is None else int(value)


def checks_status(checks: Iterable[Check]) -> ResultStatus:
    """What a set of checks concludes: FAIL when one failed, inconclusive when one could not be concluded, ok
    when something was judged and held, "" when every one was only reported."""
    judged = [check for check in checks if check.status != "reported"]
    if any(check.failed for check in judged):
        return "FAIL"
    if not judged:
        return ""
    return "inconclusive" if any(check.status == "inconclusive" for check in judged) else "ok"


@dataclass(frozen=True)
class Result:
    """One model x format of the run: its kind, its checks, the tests of it that failed, why it was skipped."""

    model: str
    format: str
    kind: Kind
    checks: tuple[Check, ...] = ()
    failed_tests: tuple[str, ...] = ()
    skipped: str = ""
    measurements: Mapping[str, Any] = field(default_factory=dict)  # a single-pass result's row

    @property
    def name(self) -> str:
        return f"{self.model}/{self.format}"

    @property
    def status(self) -> ResultStatus:
        """FAIL when a test of it failed or a check failed, inconclusive when a check could not be concluded,
        ok when something was judged and held, skipped (with its reason) or "" when nothing was judged."""
        if self.failed_tests:
            return "FAIL"
        return checks_status(self.checks) or ("skipped" if self.skipped else "")

    def failing(self) -> list[Check]:
        return [check for check in self.checks if check.failed]

    def figure(self, metric: str, batch_size: int | None = None) -> float | None:
        """The value of the first check of `metric` (at `batch_size` when given) held to eager, its budget or
        nothing: the figure as measured in this run, not a comparison's ratio."""
        for check in self.checks:
            if check.metric == metric and check.against in (None, "eager", "budget") and \
                    (batch_size is None or check.batch_size == batch_size):
                return check.value
        return None

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "format": self.format, "kind": self.kind, "status": self.status,
                "checks": [check.to_dict() for check in self.checks], "failed_tests": list(self.failed_tests),
                **({"skipped": self.skipped} if self.skipped else {}),
                **({"measurements": dict(self.measurements)} if self.measurements else {})}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Result:
        return cls(str(data["model"]), str(data["format"]), cast(Kind, data["kind"]),
                   tuple(Check.from_dict(check) for check in data.get("checks") or ()),
                   tuple(str(test) for test in data.get("failed_tests") or ()), str(data.get("skipped") or ""),
                   dict(data.get("measurements") or {}))

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Result:
        """A single-pass result: the gate's row, its own gates and its baseline comparisons as checks."""
        return cls(str(row["model"]), str(row["format"]), "single-pass", tuple(row_checks(row)),
                   tuple(row.get("failed_tests") or ()), str(row.get("skipped") or ""), dict(row))


def row_status(row: Mapping[str, Any]) -> ResultStatus:
    """What the summary's status column says of a single-pass row: its result's status."""
    return Result.from_row(row).status


def row_checks(row: Mapping[str, Any]) -> list[Check]:
    """The checks of a single-pass row: parity, accuracy and the budgets against the original (each passed or
    failed as a whole), a new change point in its history, and each section compared with its baseline."""
    checks = []
    sections: tuple[tuple[str, str, Against, str], ...] = (
        ("parity", "max_abs", "eager", ""), ("accuracy", "drop", "budget", "fraction"),
        ("original", "drop", "original", "fraction"))
    for section, metric, against, unit in sections:
        passed = nested(dict(row), section, "passed")
        if passed is not None:
            checks.append(Check(f"{section}.{metric}", "ok" if passed else "FAIL",
                                _finite(nested(dict(row), section, metric)), unit, against))
    if nested(dict(row), "history", "passed") is not None:
        checks.append(Check("change_point", "ok" if row["history"]["passed"] else "REGRESSED", against="history"))
    for section, comparison in sorted((row.get("baseline") or {}).items()):
        if not isinstance(comparison, dict) or comparison.get("passed") is None:
            continue
        findings = [f for f in comparison.get("findings") or () if isinstance(f, dict) and f.get("status") in
                    get_args(CheckStatus)]
        for finding in findings:  # each rule's verdict, its interval a relative change where one was estimated
            interval = finding.get("interval")
            checks.append(Check(str(finding.get("metric")), cast(CheckStatus, finding["status"]),
                                unit="relative change" if interval else "", against="baseline",
                                interval=(float(interval[0]), float(interval[1])) if interval else None,
                                batch_size=_integer(finding.get("batch_size"))))
        if not findings:
            status: CheckStatus = "REGRESSED" if comparison["passed"] is False else \
                "inconclusive" if comparison.get("status") == "inconclusive" else "ok"
            checks.append(Check(section, status, against="baseline"))
    return checks


def _finite(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) and \
        math.isfinite(value) else None


@dataclass(frozen=True)
class RunResult:
    """The whole run: where it ran (`run`: commit, branch, machine; None when that is not known) and every
    model x format result, in the order of every table (by model, single-pass before generative, then the
    formats' registry order, which the caller gives)."""

    run: RunInfo | None
    results: tuple[Result, ...]
    schema: int = SCHEMA_VERSION

    def of_kind(self, kind: Kind) -> list[Result]:
        return [result for result in self.results if result.kind == kind]

    @property
    def failed(self) -> list[Result]:
        return [result for result in self.results if result.status == "FAIL"]

    @property
    def judged(self) -> list[Result]:
        return [result for result in self.results if result.status in ("ok", "FAIL", "inconclusive")]

    @property
    def passed(self) -> bool:
        return not self.failed

    @property
    def outcome(self) -> Literal["FAILED", "inconclusive", "passed"]:
        return "FAILED" if self.failed else "inconclusive" if any(
            result.status == "inconclusive" for result in self.results) else "passed"

    def rows(self) -> list[dict[str, Any]]:
        """The single-pass results' measurement rows, for the columns and plots that read them."""
        return [dict(result.measurements) for result in self.of_kind("single-pass")]

    def to_dict(self) -> dict[str, Any]:
        return {"schema": self.schema, "run": self.run.to_dict() if self.run else None,
                "results": [result.to_dict() for result in self.results]}

    @classmethod
    def from_rows(cls, rows: Iterable[Mapping[str, Any]], run: RunInfo | None = None) -> RunResult:
        """A document of single-pass rows only, in their order (a script's or a test's rows)."""
        return cls(run, tuple(Result.from_row(row) for row in rows))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunResult:
        run = data.get("run")
        return cls(RunInfo.from_dict(run) if isinstance(run, dict) else None,
                   tuple(Result.from_dict(result) for result in data.get("results") or ()),
                   int(data.get("schema") or SCHEMA_VERSION))


def ordered(results: Iterable[Result], format_order: Sequence[str]) -> tuple[Result, ...]:
    """Results by model, single-pass before generative, then by the formats' registry order (eager first)."""
    position = {name: index for index, name in enumerate(format_order)}
    return tuple(sorted(results, key=lambda r: (r.model, KINDS.index(r.kind), position.get(r.format, len(position)),
                                                r.format)))
