"""A generative model's stored figures (`baselines/<model>/generative.json`, one file per model: its formats are
judged side by side in one report) and the rules a new run's report is held to.

- **Quality** of a quantized format is deterministic for given weights and runtimes, so any real growth is a
  change: mean KL may grow to `MAX_KL_GROWTH` times the stored value (plus `KL_FLOOR`, for fp32 formats whose KL
  is rounding), top-1 agreement may fall `MAX_TOP1_DROP` below it.
- **Speed** is judged side by side with the accepted artifact: when the baseline was written, each format's
  artifact went into the accepted store (`deploycheck.accepted`), and a later run generates with it in the same
  timing rounds as the new one, so both meet the same machine. A format regressed when every round's median
  inter-token latency (the median decode step of that round's generation) is more than `MAX_SLOWDOWN` above the
  accepted artifact's of that round; when only the median over rounds is, the verdict is inconclusive (said, not
  failed). TPOT, the mean step, is compared the same way and only said: a small decoder's generation lasts about
  a millisecond, and one step the scheduler preempts (milliseconds on a busy runner) moves the mean several
  times over. An unchanged ONNX decoder, timed beside its own accepted copy during the suite on two busy cores,
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
        if row.get("accepted_rounds"):
            _judge_side_by_side(comparison, label, row)
        elif format_name != "eager" and ("eager", batch) in new and ("eager", batch) in old:
            _say_against_eager(comparison, label, row, before, new[("eager", batch)], old[("eager", batch)])
    return comparison


def _judge_side_by_side(comparison: GenerationComparison, label: str, row: dict[str, Any]) -> None:
    """The new artifact's figures over the accepted artifact's, round by round, in this run."""
    for figure, name in SPEED_FIGURES.items():
        ratios = _ratios(row["rounds"], row["accepted_rounds"], figure)
        if not ratios:
            continue
        allowed = 1 + MAX_SLOWDOWN
        said = (f"{label}: {name} {float(np.median(ratios)):.2f}x the accepted artifact's, side by side in this "
                f"run's rounds (each round: {_listed(ratios)}; allowed {allowed:.2f}x)")
        if min(ratios) > allowed and figure == JUDGED_SPEED:
            comparison.regressions.append(said)
        elif float(np.median(ratios)) > allowed:
            why = "not every round is slower" if figure == JUDGED_SPEED else f"{name} is said, never failed"
            comparison.inconclusive.append(f"{said}: {why}")


def _say_against_eager(comparison: GenerationComparison, label: str, row: dict[str, Any], before: dict[str, Any],
                       eager_now: dict[str, Any], eager_then: dict[str, Any]) -> None:
    """Without the accepted artifact: the ratio to eager's TPOT against the baseline's, said only (see above)."""
    ratios = _ratios(row.get("rounds") or {}, eager_now.get("rounds") or {}, JUDGED_SPEED)
    accepted = _ratios(before.get("rounds") or {}, eager_then.get("rounds") or {}, JUDGED_SPEED)
    if ratios and accepted and float(np.median(ratios)) > max(accepted) * (1 + MAX_SLOWDOWN):
        comparison.inconclusive.append(
            f"{label}: median ITL {float(np.median(ratios)):.2f}x eager's in this run's rounds (each round: "
            f"{_listed(ratios)}), baseline at most {max(accepted):.2f}x: said, not failed, as the accepted artifact "
            "was not at hand to time beside it (the ratio to eager moves with the machine's load)")


def _listed(ratios: list[float]) -> str:
    return ", ".join(f"{r:.2f}" for r in ratios)


def _ratios(mine: dict[str, list[float]], theirs: dict[str, list[float]], figure: str) -> list[float]:
    """One set of rounds' figure over another's, round by round (the rounds ran side by side in one run)."""
    return [a / b for a, b in zip(mine.get(figure, []), theirs.get(figure, [])) if b > 0]
