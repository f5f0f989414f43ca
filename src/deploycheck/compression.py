"""A compressed model against its original: agreement, accuracy drop, size ratio and speedup, per format.

`ModelSpec(original=...)` names the uncompressed model (a module, a `ModelSpec`, or another registered model's
name). Every format of the compressed model is compared with the original's eager outputs on the same inputs,
and with the original exported to the same format for size and speed (timed side by side), so the question
"what did compression cost and buy, in this deployment format" has one answer per format.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from deploycheck.accuracy import evaluate, reference_artifact
from deploycheck.errors import SpecError
from deploycheck.latency import speed_claim
from deploycheck.table import format_table

if TYPE_CHECKING:
    import torch

    from deploycheck.artifact import Artifact
    from deploycheck.latency import SpeedRatio
    from deploycheck.spec import ModelSpec

SPARSE_ENOUGH_TO_MENTION = 0.2


def compression_facts(model: torch.nn.Module) -> dict[str, Any]:
    """Parameter count, non-zero parameters and sparsity (the fraction of parameters that are exactly zero)."""
    total = sum(p.numel() for p in model.parameters())
    nonzero = sum(int(p.count_nonzero()) for p in model.parameters())
    return {"parameters": total, "nonzero_parameters": nonzero, "sparsity": 1 - nonzero / total if total else 0.0}


@dataclass
class OriginalReport:
    """One format of a compressed model against the original."""

    model: str
    format: str
    original: str
    original_accuracy: float | None
    accuracy: float | None
    agreement: float | None
    max_abs_diff: float
    size_bytes: int
    original_size_bytes: int
    sparsity: float
    speed: SpeedRatio | None = None
    budget: dict[str, float | None] = field(default_factory=dict)
    higher_is_better: bool = True

    @property
    def drop(self) -> float | None:
        if self.accuracy is None or self.original_accuracy is None:
            return None
        change = self.original_accuracy - self.accuracy
        return change if self.higher_is_better else -change

    @property
    def size_ratio(self) -> float:
        return self.size_bytes / self.original_size_bytes if self.original_size_bytes else math.nan

    @property
    def speedup(self) -> float | None:
        return self.speed.ratio if self.speed is not None else None

    @property
    def problems(self) -> list[str]:
        found = []
        limit = self.budget.get("max_accuracy_drop_vs_original")
        if limit is not None and self.drop is not None and self.drop > limit + 1e-12:
            found.append(f"accuracy drop against the original {self.drop:.2%} exceeds {limit:.2%}")
        limit = self.budget.get("min_agreement_vs_original")
        if limit is not None and self.agreement is not None and self.agreement < limit:
            found.append(f"agreement with the original {self.agreement:.2%} is below {limit:.2%}")
        limit = self.budget.get("max_size_ratio_vs_original")
        if limit is not None and self.size_ratio > limit:
            found.append(f"size {self.size_ratio:.2f}x the original's is above {limit:.2f}x")
        limit = self.budget.get("min_speedup_vs_original")
        if limit is not None and self.speed is not None and self.speed.low < limit:
            found.append(f"speedup {self.speed.ratio:.2f}x [{self.speed.low:.2f}, {self.speed.high:.2f}] over the "
                         f"original is not at least {limit:.2f}x")
        return found

    @property
    def passed(self) -> bool:
        return not self.problems

    def speed_statement(self) -> str:
        """Whether the compressed model is faster, as measured (`deploycheck.latency.speed_claim`: beyond 5% over
        the whole interval); said plainly for a sparse model that is not faster, whose zeros are usually stored
        and multiplied like any other weight."""
        if self.speed is None:
            return "speed not measured"
        interval = f"{self.speed.ratio:.2f}x [{self.speed.low:.2f}, {self.speed.high:.2f}]"
        claim = speed_claim(self.speed.low, self.speed.high)
        verdict = f"{claim or 'not measurably faster'} than the original in {self.format}: {interval}"
        if self.sparsity >= SPARSE_ENOUGH_TO_MENTION and claim != "faster":
            verdict += (f"; its {self.sparsity:.0%} sparsity does not speed it up here (the zeros are stored and "
                        "computed densely)")
        return verdict

    def to_dict(self) -> dict[str, Any]:
        return {"original": self.original, "accuracy": self.accuracy, "original_accuracy": self.original_accuracy,
                "drop": self.drop, "agreement": self.agreement, "max_abs_diff": self.max_abs_diff,
                "size_ratio": self.size_ratio, "speedup": self.speedup,
                "speedup_interval": [self.speed.low, self.speed.high] if self.speed else None,
                "sparsity": self.sparsity, "statement": self.speed_statement(), "passed": self.passed}

    def __str__(self) -> str:
        def pct(value: float | None) -> str:
            return "" if value is None else f"{value:.2%}"

        budget = ", ".join(f"{k.replace('_vs_original', '')} {v:g}" for k, v in self.budget.items() if v is not None)
        speedup = "" if self.speed is None else f"{self.speed.ratio:.2f}x [{self.speed.low:.2f}, {self.speed.high:.2f}]"
        lines = [f"{self.model}/{self.format} against its original {self.original}",
                 format_table(["original accuracy", "accuracy", "drop", "agreement", "max abs diff", "sparsity",
                               "size ratio", "speedup", "budget", "status"],
                              [[pct(self.original_accuracy), pct(self.accuracy), pct(self.drop), pct(self.agreement),
                                f"{self.max_abs_diff:.3g}", f"{self.sparsity:.1%}", f"{self.size_ratio:.2f}", speedup,
                                budget or "none", "ok" if self.passed else "FAIL"]])]
        lines.extend(f"  {problem}" for problem in self.problems)
        lines.append(f"  {self.speed_statement()}")
        return "\n".join(lines)


def check_against_original(artifact: Artifact, original: ModelSpec, original_artifact: Artifact,
                           speed: Callable[[Artifact, Artifact], SpeedRatio] | None = None) -> OriginalReport:
    """Compare an artifact of the compressed model with the original: outputs on the spec's evaluation inputs
    (the original run eagerly), accuracy on its labels, size against the original in the same format, and,
    when `speed` is given, `speed(original_artifact, artifact)` (time ratio, above 1 when compressed is faster)."""
    spec = artifact.spec
    if spec is None or spec.eval_data is None:
        raise SpecError(f"{artifact!r}: comparing with the original needs the spec's eval_data")
    reference = reference_artifact(original)
    agree, rows, max_diff = 0, 0, 0.0
    for inputs, _ in spec.eval_data:
        ours, theirs = artifact.run(inputs)[0], original.reference_outputs(tuple(inputs))[0]
        max_diff = max(max_diff, float(np.max(np.abs(ours.astype(np.float64) - theirs))))
        if ours.ndim == 2:
            agree += int(np.sum(ours.argmax(1) == theirs.argmax(1)))
            rows += len(ours)
    labelled = all(labels is not None for _, labels in spec.eval_data)
    accuracy = original_accuracy = None
    if labelled:
        accuracy = evaluate(artifact, spec.eval_data, spec.metric).value
        if "original-accuracy" not in spec.memo:  # the same for every format of the compressed model
            spec.memo["original-accuracy"] = evaluate(reference, spec.eval_data, spec.metric,
                                                      f"{original.name}/eager").value
        original_accuracy = spec.memo["original-accuracy"]
    budget = {key: _for_format(getattr(spec, key), artifact.format)
              for key in ("max_accuracy_drop_vs_original", "min_agreement_vs_original", "min_speedup_vs_original",
                          "max_size_ratio_vs_original")}
    return OriginalReport(spec.name, artifact.format, original.name, original_accuracy, accuracy,
                          agree / rows if rows else None, max_diff, artifact.size_bytes, original_artifact.size_bytes,
                          compression_facts(spec.model)["sparsity"], speed(original_artifact, artifact) if speed
                          else None, budget, spec.higher_is_better)


def _for_format(budget: float | Mapping[str, float] | None, format_name: str) -> float | None:
    """A budget given as one number, or per format (formats not named are not gated on it)."""
    if isinstance(budget, Mapping):
        return budget.get(format_name)
    return budget
