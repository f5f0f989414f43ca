"""What the history keeps of a run: one `HistoryRecord` per model x format per gate run, with the run's commit,
branch, time and machine. Figures are flattened to `name -> number` (`p50_ms@1`: the batch-1 median), so every
store holds them the same way and a trend is one key read across records.

`p50_norm@B` is the median divided by the reference workload's median timed in the same windows
(`deploycheck.machine.ReferenceWorkload`): the latency figure that is comparable across a busy and a quiet
machine, which change points are searched on.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import math
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deploycheck.gitrepo import current_branch, current_commit
from deploycheck.rows import nested
from deploycheck.run_result import Result, RunInfo, row_status

# the machine facts that make two timings comparable; versions are not among them: a runtime upgrade is a change
# the history should show, not hide
FINGERPRINT_KEYS = ("cpu", "cores", "machine", "cpu_flags", "device", "threads")


@dataclass(frozen=True)
class HistoryRecord:
    """One model x format of one run: the verdict, every figure gated, and the deterministic cost counters."""

    run: RunInfo
    model: str
    format: str
    verdict: str
    figures: dict[str, float]
    counters: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> tuple[str, str, str]:
        return self.run.run_id, self.model, self.format


def fingerprint(environment: Mapping[str, Any]) -> str:
    """A short hash of the machine facts timings depend on (CPU, cores, instruction sets, device, threads)."""
    facts = {key: environment.get(key) for key in FINGERPRINT_KEYS}
    return hashlib.sha256(json.dumps(facts, sort_keys=True, default=str).encode()).hexdigest()[:12]


def new_run(root: Path, mode: str, environment: Mapping[str, Any]) -> RunInfo:
    """The run starting now in the repository holding `root`."""
    now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    return RunInfo(uuid.uuid4().hex, current_commit(root), current_branch(root), now, mode, fingerprint(environment),
                   dict(environment))


def figures(row: dict[str, Any]) -> dict[str, float]:
    """Every figure of a row that the gate judges, flattened (`p50_ms@1`, `size_bytes`, `accuracy`, ...)."""
    found: dict[str, Any] = {
        "size_bytes": row.get("size_bytes"), "max_abs": nested(row, "parity", "max_abs"),
        "top1_agreement": nested(row, "parity", "top1_agreement"), "accuracy": nested(row, "accuracy", "value"),
        "drop": nested(row, "accuracy", "drop"), "speedup_vs_eager": nested(row, "speedup", "vs_eager", "ratio")}
    for batch, stats in (row.get("latency") or {}).items():
        if not isinstance(stats, dict):
            continue
        for name in ("p50_ms", "p90_ms", "p99_ms", "mean_ms", "throughput_per_s"):
            found[f"{name}@{batch}"] = stats.get(name)
        spread = float(stats.get("window_spread") or 0.0)
        if stats.get("p50_ms") is not None:  # the interval: the spread between the timing windows
            found[f"p50_low_ms@{batch}"] = stats["p50_ms"] * (1 - spread)
            found[f"p50_high_ms@{batch}"] = stats["p50_ms"] * (1 + spread)
        if stats.get("p50_ms") is not None and stats.get("reference_p50_ms"):
            found[f"p50_norm@{batch}"] = stats["p50_ms"] / stats["reference_p50_ms"]
    return {name: float(value) for name, value in found.items()
            if isinstance(value, (int, float)) and not isinstance(value, bool)}


def records_from_rows(rows: Sequence[dict[str, Any]], run: RunInfo) -> list[HistoryRecord]:
    """The history records of a run's rows; rows that measured nothing (skipped formats) are left out."""
    records = []
    for row in rows:
        measured = figures(row)
        if not measured and not row.get("failed_tests"):
            continue
        records.append(HistoryRecord(run, str(row["model"]), str(row["format"]), row_status(row) or "ok",
                                     measured, dict(row.get("counters") or {})))
    return records


def records_from_results(results: Sequence[Result], run: RunInfo) -> list[HistoryRecord]:
    """The history records of a run's decoder results: each figure this run measured (not a comparison's ratio),
    keyed `metric@batch` (`itl_p50_ms@1`: the batch-1 median inter-token latency); results that measured
    nothing (skipped formats) are left out."""
    records = []
    for result in results:
        measured = {(check.metric if check.batch_size is None else f"{check.metric}@{check.batch_size}"): check.value
                    for check in result.checks if check.against in (None, "eager", "budget")
                    and check.value is not None and math.isfinite(check.value)}
        if measured or result.failed_tests:
            records.append(HistoryRecord(run, result.model, result.format, result.status or "ok", measured))
    return records
