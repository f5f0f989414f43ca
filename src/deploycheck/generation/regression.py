"""A generative model's stored figures (`baselines/<model>/generative.json`, one file per model: its formats are
judged side by side in one report) and the rules a new run's report is held to.

- **Quality** of a quantized format is deterministic for given weights and runtimes, so any real growth is a
  change: mean KL may grow to `MAX_KL_GROWTH` times the stored value (plus `KL_FLOOR`, for fp32 formats whose KL
  is rounding), top-1 agreement may fall `MAX_TOP1_DROP` below it.
- **Speed** is judged side by side with the accepted artifact: when the baseline was written, each format's
  artifact went into the accepted store (`deploycheck.accepted`), and a later run generates with it in the same
  timing rounds as the new one, so both meet the same machine. A format regressed when every round's median
  inter-token latency (the median decode step of that round's generation) is more than `MAX_SLOWDOWN` above the
  accepted artifact's of that round; when only some rounds are, the verdict is inconclusive (said, not failed):
  the rounds' range is the interval of `deploycheck.stats.interval_verdict`, the rule of every speed verdict.
  TPOT, the mean step, is compared the same way and only reported: a small decoder's generation lasts about a
  millisecond, and one step the scheduler preempts (milliseconds on a busy runner) moves the mean several times
  over. An unchanged ONNX decoder, timed beside its own accepted copy during the suite on two busy cores,
  measured 5.6x, 5.8x and 3.7x its TPOT in the three rounds, with the same TTFT. A real regression slows every
  step, so it moves the median. TTFT is one prefill call per round (about a millisecond on small models, where a
  fresh process's first calls of a new shape cost several times more): it is also only said, never failed.
  Without the accepted artifact (a fresh runner whose store was not kept), the ratio to eager's median ITL is
  compared with the baseline's and only said: such ratios move with the machine's load (an ONNX decoder's TPOT
  measured 0.14x eager's when the baseline was recorded and 0.22-0.25x an hour later on the same busy runner,
  same artifact), because eager and a runtime do not slow alike.
- A format or batch size missing from the baseline is a regression to record, never silently accepted.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from deploycheck.accepted import AcceptedStore
from deploycheck.baseline.store import GENERATIVE_FILE
from deploycheck.errors import BaselineError
from deploycheck.generation.artifact import SIDECAR
from deploycheck.jsonio import write_json
from deploycheck.run_result import Check, CheckStatus
from deploycheck.stats import interval_verdict

MAX_KL_GROWTH = 1.5
KL_FLOOR = 1e-9  # nats: fp32 formats' KL is rounding (1e-15); int8 weight-only is 1e-7 and up
MAX_TOP1_DROP = 0.02
MAX_SLOWDOWN = 0.25
SPEED_FIGURES = {"itl_p50_ms": "median ITL", "tpot_ms": "TPOT", "ttft_ms": "TTFT"}  # the judged one first
JUDGED_SPEED = "itl_p50_ms"  # the figure a speed regression fails on; the others are only said


def baseline_path(directory: Path, model: str) -> Path:
    return Path(directory) / model / GENERATIVE_FILE


def read_generation_baseline(directory: Path, model: str) -> dict[str, Any] | None:
    path = baseline_path(directory, model)
    if not path.is_file():
        return None
    try:
        stored = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise BaselineError(f"{path}: unreadable generation baseline ({exc}); rewrite it with "
                            "`pytest --deploycheck-update`") from exc
    if not isinstance(stored, dict) or not isinstance(stored.get("rows"), list):
        raise BaselineError(f"{path}: not a generation baseline (expected the report's rows); rewrite it with "
                            "`pytest --deploycheck-update`")
    return stored


def write_generation_baseline(directory: Path, report: dict[str, Any], accepted: AcceptedStore | None = None) -> Path:
    """The figures of a passing report, written atomically; the text and the comparison are not kept. Each
    format's artifact goes into the `accepted` store, and the baseline names its digest."""
    path = baseline_path(directory, report["model"])
    kept = ("format", "batch_size", "size_bytes", "mean_kl", "top1_agreement", "rounds", *SPEED_FIGURES)
    stored: dict[str, Any] = {"model": report["model"],
                              "rows": [{key: row.get(key) for key in kept} for row in report["rows"]]}
    if accepted is not None:
        store = accepted.of_sidecar(SIDECAR)
        stored["accepted_artifacts"] = {name: store.put(Path(where))
                                        for name, where in sorted((report.get("artifacts") or {}).items())
                                        if (Path(where) / SIDECAR).is_file()}
    write_json(path, stored)
    return path


def accepted_artifacts(stored: dict[str, Any], accepted: AcceptedStore) -> dict[str, Path]:
    """The accepted store's copies of the artifacts a baseline names, by format (those the store still has)."""
    store = accepted.of_sidecar(SIDECAR)
    found = {name: store.get(digest) for name, digest in (stored.get("accepted_artifacts") or {}).items()
             if isinstance(digest, str)}
    return {name: path for name, path in found.items() if path is not None}


@dataclass
class GenerationComparison:
    """A report against its baseline (`source`): per format, the checks the comparison made."""

    model: str
    source: str
    checks: dict[str, list[Check]] = field(default_factory=dict)

    def add(self, format_name: str, check: Check) -> None:
        self.checks.setdefault(format_name, []).append(check)

    def _said(self, statuses: tuple[str, ...]) -> list[str]:
        return [describe(self.model, name, check, self.source) for name, checks in self.checks.items()
                for check in checks if check.status in statuses]

    @property
    def regressions(self) -> list[str]:
        return self._said(("REGRESSED", "missing"))

    @property
    def inconclusive(self) -> list[str]:
        return self._said(("inconclusive",))

    @property
    def passed(self) -> bool:
        return not self.regressions


def describe(model: str, format_name: str, check: Check, source: str) -> str:
    """A comparison's check as the failing test and the summary say it."""
    label = f"{model}/{format_name} at batch {check.batch_size}"
    if check.status == "missing":
        return f"{label}: not in the baseline {source}; record it with `pytest --deploycheck-update`"
    if check.metric == "mean_kl":
        return (f"{label}: mean KL divergence from eager {check.value:.3g} nats, baseline {check.baseline:.3g} (at "
                f"most {check.limit:.3g})")
    if check.metric == "top1_agreement":
        return (f"{label}: top-1 agreement {check.value:.1%}, baseline {check.baseline:.1%} (at most "
                f"{MAX_TOP1_DROP:.0%} lower)")
    name = SPEED_FIGURES.get(check.metric, check.metric)
    low, high = check.interval or (check.value, check.value)
    if check.against == "accepted":
        why = "" if check.status != "inconclusive" else ": not every round is slower"  # the interval straddles
        return (f"{label}: {name} {check.value:.2f}x the accepted artifact's, side by side in this run's rounds "
                f"(rounds from {low:.2f} to {high:.2f}; allowed {check.limit:.2f}x){why}")
    return (f"{label}: {name} {check.value:.2f}x eager's in this run's rounds (rounds from {low:.2f} to {high:.2f}), "
            f"baseline at most {check.baseline:.2f}x: said, not failed, as the accepted artifact was not at hand to "
            "time beside it (the ratio to eager moves with the machine's load)")


def compare_generation(report: dict[str, Any], stored: dict[str, Any], where: str) -> GenerationComparison:
    """`report` (`GenerationReport.to_dict()`) against the `stored` baseline (from `where`)."""
    comparison = GenerationComparison(report["model"], where)
    old = {(row["format"], row["batch_size"]): row for row in stored["rows"]}
    new = {(row["format"], row["batch_size"]): row for row in report["rows"]}
    for (format_name, batch), row in new.items():
        before = old.get((format_name, batch))
        if before is None:
            comparison.add(format_name, Check("in_baseline", "missing", against="baseline", batch_size=batch))
            continue
        limit = MAX_KL_GROWTH * float(before["mean_kl"]) + KL_FLOOR
        comparison.add(format_name, Check("mean_kl", "REGRESSED" if row["mean_kl"] > limit else "ok",
                                          row["mean_kl"], "nats", "baseline", limit, "max",
                                          baseline=before["mean_kl"], batch_size=batch))
        lowest = before["top1_agreement"] - MAX_TOP1_DROP
        comparison.add(format_name, Check("top1_agreement", "REGRESSED" if row["top1_agreement"] < lowest else "ok",
                                          row["top1_agreement"], "fraction", "baseline", lowest, "min",
                                          baseline=before["top1_agreement"], batch_size=batch))
        if row.get("accepted_rounds"):
            _judge_side_by_side(comparison, format_name, row)
        elif format_name != "eager" and ("eager", batch) in new and ("eager", batch) in old:
            _say_against_eager(comparison, format_name, row, before, new[("eager", batch)], old[("eager", batch)])
    return comparison


def _judge_side_by_side(comparison: GenerationComparison, format_name: str, row: dict[str, Any]) -> None:
    """The new artifact's figures over the accepted artifact's, round by round, in this run: the judged figure
    regressed when every round is over the limit, inconclusive when only the median is; the others reported."""
    allowed = 1 + MAX_SLOWDOWN
    for figure in SPEED_FIGURES:
        ratios = _ratios(row["rounds"], row["accepted_rounds"], figure)
        if not ratios:
            continue
        median = float(np.median(ratios))
        status: CheckStatus = "reported"
        if figure == JUDGED_SPEED:  # the rounds' range is the interval
            status = interval_verdict(min(ratios), max(ratios), allowed)
        comparison.add(format_name, Check(figure, status, median, "x", "accepted", allowed, "max",
                                          (min(ratios), max(ratios)), batch_size=row["batch_size"]))


def _say_against_eager(comparison: GenerationComparison, format_name: str, row: dict[str, Any],
                       before: dict[str, Any], eager_now: dict[str, Any], eager_then: dict[str, Any]) -> None:
    """Without the accepted artifact: the ratio to eager's median ITL against the baseline's, said only (see
    above): inconclusive when it grew past the limit, else reported."""
    ratios = _ratios(row.get("rounds") or {}, eager_now.get("rounds") or {}, JUDGED_SPEED)
    accepted = _ratios(before.get("rounds") or {}, eager_then.get("rounds") or {}, JUDGED_SPEED)
    if not ratios or not accepted:
        return
    median, limit = float(np.median(ratios)), max(accepted) * (1 + MAX_SLOWDOWN)
    comparison.add(format_name, Check(JUDGED_SPEED, "inconclusive" if median > limit else "reported", median,
                                      "x eager", "baseline", limit, "max", (min(ratios), max(ratios)),
                                      max(accepted), row["batch_size"]))


def _ratios(mine: dict[str, list[float]], theirs: dict[str, list[float]], figure: str) -> list[float]:
    """One set of rounds' figure over another's, round by round (the rounds ran side by side in one run)."""
    return [a / b for a, b in zip(mine.get(figure, []), theirs.get(figure, [])) if b > 0]
