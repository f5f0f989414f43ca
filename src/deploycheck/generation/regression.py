"""A generative model's stored figures (`baselines/<model>/generative.json`, one file per model: its formats are
judged side by side in one report) and the rules a new run's report is held to.

- **Quality** of a quantized format is deterministic for given weights and runtimes, so any real growth is a
  change: mean KL may grow to `MAX_KL_GROWTH` times the stored value (plus `KL_FLOOR`, for fp32 formats whose KL
  is rounding), top-1 agreement may fall `MAX_TOP1_DROP` below it.
- **Speed** is judged as each format's TPOT over eager's *in the same round* (the report's side-by-side rounds),
  never as an absolute time: a busy runner slows eager alike. A format regressed when every round's ratio is more
  than `MAX_SLOWDOWN` worse than the baseline's least favourable round (a baseline recorded during a burst must not
  make every later run a regression); when only the median is, the verdict is inconclusive (said, not failed).
  TTFT is one prefill call per round (about a millisecond on small models, where a fresh process's first calls of
  a new shape cost several times more): it is compared the same way but only ever said, never failed.
- A format or batch size missing from the baseline is a regression to record, never silently accepted.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from deploycheck.baseline.store import GENERATIVE_FILE
from deploycheck.errors import BaselineError
from deploycheck.jsonio import write_json

MAX_KL_GROWTH = 1.5
KL_FLOOR = 1e-9  # nats: fp32 formats' KL is rounding (1e-15); int8 weight-only is 1e-7 and up
MAX_TOP1_DROP = 0.02
MAX_SLOWDOWN = 0.25
SPEED_FIGURES = ("ttft_ms", "tpot_ms")
JUDGED_SPEED = "tpot_ms"  # the figure a speed regression fails on; TTFT's are only said


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


def write_generation_baseline(directory: Path, report: dict[str, Any]) -> Path:
    """The figures of a passing report, written atomically; the text and the comparison are not kept."""
    path = baseline_path(directory, report["model"])
    kept = ("format", "batch_size", "size_bytes", "mean_kl", "top1_agreement", "rounds", *SPEED_FIGURES)
    write_json(path, {"model": report["model"],
                      "rows": [{key: row.get(key) for key in kept} for row in report["rows"]]})
    return path


@dataclass
class GenerationComparison:
    regressions: list[str] = field(default_factory=list)
    inconclusive: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.regressions

    def to_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "regressions": self.regressions, "inconclusive": self.inconclusive}


def compare_generation(report: dict[str, Any], stored: dict[str, Any], where: str) -> GenerationComparison:
    """`report` (`GenerationReport.to_dict()`) against the `stored` baseline (from `where`)."""
    comparison = GenerationComparison()
    old = {(row["format"], row["batch_size"]): row for row in stored["rows"]}
    new = {(row["format"], row["batch_size"]): row for row in report["rows"]}
    for (format_name, batch), row in new.items():
        label = f"{report['model']}/{format_name} at batch {batch}"
        before = old.get((format_name, batch))
        if before is None:
            comparison.regressions.append(f"{label}: not in the baseline {where}; record it with "
                                          "`pytest --deploycheck-update`")
            continue
        limit = MAX_KL_GROWTH * float(before["mean_kl"]) + KL_FLOOR
        if row["mean_kl"] > limit:
            comparison.regressions.append(f"{label}: mean KL divergence from eager {row['mean_kl']:.3g} nats, "
                                          f"baseline {before['mean_kl']:.3g} (at most {limit:.3g})")
        if row["top1_agreement"] < before["top1_agreement"] - MAX_TOP1_DROP:
            comparison.regressions.append(f"{label}: top-1 agreement {row['top1_agreement']:.1%}, baseline "
                                          f"{before['top1_agreement']:.1%} (at most {MAX_TOP1_DROP:.0%} lower)")
        eager_now, eager_then = new.get(("eager", batch)), old.get(("eager", batch))
        if format_name == "eager" or eager_now is None or eager_then is None:
            continue
        for figure in SPEED_FIGURES:
            ratios, accepted = _ratios(row, eager_now, figure), _ratios(before, eager_then, figure)
            if not ratios or not accepted:
                continue
            allowed = max(accepted) * (1 + MAX_SLOWDOWN)
            said = (f"{label}: {figure.removesuffix('_ms').upper()} {float(np.median(ratios)):.2f}x eager's in "
                    f"this run's side-by-side rounds (each round: {', '.join(f'{r:.2f}' for r in ratios)}), "
                    f"baseline at most {max(accepted):.2f}x (allowed {allowed:.2f}x)")
            if min(ratios) > allowed and figure == JUDGED_SPEED:
                comparison.regressions.append(said)
            elif float(np.median(ratios)) > allowed:
                why = "not every round is slower" if figure == JUDGED_SPEED else "TTFT is said, never failed"
                comparison.inconclusive.append(f"{said}: {why}")
    return comparison


def _ratios(row: dict[str, Any], eager: dict[str, Any], figure: str) -> list[float]:
    """A format's figure over eager's, round by round (the rounds are side by side, so their ratio is what a busy
    machine leaves alone)."""
    mine, theirs = (row.get("rounds") or {}).get(figure, []), (eager.get("rounds") or {}).get(figure, [])
    return [a / b for a, b in zip(mine, theirs) if b > 0]
