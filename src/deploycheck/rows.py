"""The typed data that crosses module and process boundaries: the measurement row of one model x format (built
by the gate, sent from pytest-xdist workers on test reports, read by reports and the baseline store) and the
baseline record stored for it. Their keys are written here once, so a figure cannot be lost between the module
that measures it and the one that judges it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal, TypedDict

from typing_extensions import Required

# the verdict of one rule on one metric
Status = Literal["ok", "REGRESSED", "inconclusive", "missing", "reported"]
# the verdict of a whole comparison
Verdict = Literal["ok", "FAIL", "inconclusive"]
# what the run does with baselines (None: baselines are off)
BaselineMode = Literal["compare", "update", "update-new"]


class ParityFigures(TypedDict):
    max_abs: float
    top1_agreement: float | None
    passed: bool


class Row(TypedDict, total=False):
    """What the gate measured of one model x format in this run (each check adds its section)."""

    model: Required[str]
    format: Required[str]
    size_bytes: int
    artifact_path: str
    parameters: int
    nonzero_parameters: int
    sparsity: float
    budgets_vs_original: list[str]
    int8_weight_fraction: float
    parity: ParityFigures
    accuracy: dict[str, Any]  # AccuracyReport.to_dict()
    latency: dict[str, dict[str, Any]]  # batch size -> LatencyStats.compact()
    environment: dict[str, Any]  # machine.environment()
    speedup: dict[str, dict[str, float]]  # "vs_<format>" -> ratio, low, high
    baseline: dict[str, dict[str, Any]]  # check -> Comparison.to_dict()
    original: dict[str, Any]  # OriginalReport.to_dict()
    history: dict[str, Any]  # passed, changes: new change points that made a figure worse
    counters: dict[str, Any]  # deterministic cost counters of the exported graph (`deploycheck.costs`)
    timing: dict[str, Any]
    skipped: str
    failed_tests: list[str]


class Record(TypedDict, total=False):
    """A stored baseline: the sections of a row whose own gates passed, with where and when it was measured."""

    schema: Required[int]
    model: Required[str]
    format: Required[str]
    size: dict[str, Any]
    parity: dict[str, Any]
    accuracy: dict[str, Any]
    latency: dict[str, dict[str, Any]]
    speedup: dict[str, dict[str, float]]
    environment: dict[str, Any]
    counters: dict[str, Any]  # the cost counters of the artifact measured (`deploycheck.costs`)
    git_commit: str | None
    accepted_artifact: str


def nested(row: dict[str, Any], *keys: str) -> Any:
    """`row[k1][k2]...`, or None where a section is missing: a row holds only the sections its checks ran."""
    value: Any = row
    for key in keys:
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return value


def merge_payload(row: dict[str, Any], payload: Mapping[str, Any]) -> None:
    """Add what one check recorded to its model x format's row: sections are merged key by key, so the figures
    of several checks (and tests) of one artifact end in one row."""
    for key, value in payload.items():
        if isinstance(value, dict) and isinstance(row.get(key), dict):
            row[key].update(value)
        else:
            row[key] = value


def best_throughput(row: dict[str, Any]) -> float | None:
    """The highest samples/s over the batch sizes timed (what a reader of "throughput" means)."""
    figures = [s.get("throughput_per_s") for s in (row.get("latency") or {}).values() if s.get("throughput_per_s")]
    return max(figures) if figures else None


ACCEPT_COMMAND = "pytest --deploycheck-update"  # what accepts figures that fell behind their baselines
