"""GitHub Actions output: one `::error` annotation per failing model x format (single-pass or generative), and the
Markdown report in the job summary (`$GITHUB_STEP_SUMMARY`). The plugin writes both by itself when
`GITHUB_ACTIONS=true`; both are functions of the run document."""

from __future__ import annotations

from pathlib import Path

from deploycheck.report.checks import check_text
from deploycheck.report.files import markdown_report
from deploycheck.report.summary import baseline_findings, fell_behind
from deploycheck.rows import ACCEPT_COMMAND, nested
from deploycheck.run_result import Result, RunResult


def failure_reasons(result: Result) -> list[str]:
    """Why a result failed, one phrase each: its failed tests, then for a single-pass model the gates of its own
    that failed, the figures that fell behind the baseline (metric, change, limit) and a new change point in its
    history; for a decoder, each failing check."""
    reasons = [f"{test} failed" for test in result.failed_tests]
    if result.kind == "generative":
        return reasons + [check_text(check) for check in result.failing()]
    row = dict(result.measurements)
    for section in ("parity", "accuracy", "original"):
        if nested(row, section, "passed") is False:
            reasons.append(f"{section} outside its budget")
    for _, finding in baseline_findings([row], only_problems=True):
        if finding.get("status") != "inconclusive":
            reasons.append(f"{finding.get('label') or finding.get('metric')} {finding.get('change')} (limit "
                           f"{finding.get('limit')})")
    reasons += list(nested(row, "history", "changes") or [])
    return reasons


def _annotation_escape(text: str, property_value: bool = False) -> str:
    text = text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")
    return text.replace(":", "%3A").replace(",", "%2C") if property_value else text


def github_annotations(document: RunResult) -> list[str]:
    """One GitHub Actions `::error` workflow command per failing model x format: the title names it, the message
    says what failed and how to accept an intended change."""
    lines = []
    for result in document.failed:
        reasons = "; ".join(failure_reasons(result)) or "failed"
        hint = f" If intended, accept the new figures with: {ACCEPT_COMMAND}" if fell_behind(result) else ""
        lines.append(f"::error title={_annotation_escape(f'deploycheck: {result.name} failed', True)}::"
                     f"{_annotation_escape(f'{result.name}: {reasons}.{hint}')}")
    return lines


def append_step_summary(path: Path, document: RunResult) -> None:
    """Add the Markdown report to a GitHub Actions job summary (`$GITHUB_STEP_SUMMARY`), which every step of the
    job appends to: the file is GitHub's, so it is appended to, never replaced."""
    with open(path, "a", encoding="utf-8") as summary:
        summary.write(markdown_report(document) + "\n")
