"""GitHub Actions output: one `::error` annotation per failing model x format, and the Markdown report in the
job summary (`$GITHUB_STEP_SUMMARY`). The plugin writes both by itself when `GITHUB_ACTIONS=true`."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from deploycheck.history.records import RunInfo
from deploycheck.report import baseline_findings, markdown_report
from deploycheck.rows import ACCEPT_COMMAND, fell_behind_baseline, nested, row_status


def failure_reasons(row: dict[str, Any]) -> list[str]:
    """Why a row failed, one phrase each: its failed tests, the figures that fell behind the baseline (metric,
    change, limit), a gate of its own that failed, a new change point in its history."""
    reasons = [f"{test} failed" for test in row.get("failed_tests") or []]
    for section in ("parity", "accuracy", "original"):
        if nested(row, section, "passed") is False:
            reasons.append(f"{section} outside its budget")
    for _, finding in baseline_findings([row], only_problems=True):
        if finding.get("status") != "inconclusive":
            reasons.append(f"{finding.get('metric')} {finding.get('change')} (limit {finding.get('limit')})")
    reasons += list(nested(row, "history", "changes") or [])
    return reasons


def _annotation_escape(text: str, property_value: bool = False) -> str:
    text = text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")
    return text.replace(":", "%3A").replace(",", "%2C") if property_value else text


def github_annotations(rows: Sequence[dict[str, Any]]) -> list[str]:
    """One GitHub Actions `::error` workflow command per failing model x format: the title names it, the message
    says what fell behind and how to accept an intended change."""
    lines = []
    for row in rows:
        if row_status(row) != "FAIL":
            continue
        name = f"{row['model']}/{row['format']}"
        reasons = "; ".join(failure_reasons(row)) or "failed"
        hint = f" If intended, accept the new figures with: {ACCEPT_COMMAND}" if fell_behind_baseline(row) else ""
        lines.append(f"::error title={_annotation_escape(f'deploycheck: {name} failed', True)}::"
                     f"{_annotation_escape(f'{name}: {reasons}.{hint}')}")
    return lines


def append_step_summary(path: Path, rows: Sequence[dict[str, Any]], run: RunInfo | None = None) -> None:
    """Add the Markdown report to a GitHub Actions job summary (`$GITHUB_STEP_SUMMARY`), which every step of the
    job appends to: the file is GitHub's, so it is appended to, never replaced."""
    with open(path, "a", encoding="utf-8") as summary:
        summary.write(markdown_report(rows, run) + "\n")
