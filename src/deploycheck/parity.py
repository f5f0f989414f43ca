"""Output parity: compare a candidate's outputs with the reference's, output by output, with statistics a person
can act on (where the worst element is, how far off, which tolerance was in force).

fp32 formats are judged elementwise (an element fails only where both its absolute and relative error exceed the
tolerance, as in `numpy.isclose`); int8 formats are judged by top-1 agreement and SQNR, because elementwise
closeness is not what quantization promises.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from deploycheck.formats import get_format
from deploycheck.rows import ParityFigures
from deploycheck.table import format_table
from deploycheck.tolerance import FP32_TOLERANCE, Tolerance

if TYPE_CHECKING:
    from deploycheck.artifact import Artifact
    from deploycheck.spec import ModelSpec


@dataclass
class OutputParity:
    """Error statistics of one output."""

    name: str
    shape: tuple[int, ...]
    max_abs: float
    mean_abs: float
    median_abs: float
    p99_abs: float
    max_rel: float
    cosine: float
    sqnr_db: float
    top1_agreement: float | None
    worst_index: tuple[int, ...] | None
    worst_expected: float | None
    worst_obtained: float | None
    mismatched: int
    tolerance: Tolerance
    passed: bool
    problems: list[str] = field(default_factory=list)


@dataclass
class ParityReport:
    """Per-output parity of a candidate against the reference. `str(report)` is a table."""

    outputs: list[OutputParity]
    problems: list[str] = field(default_factory=list)
    label: str = ""

    @property
    def passed(self) -> bool:
        return not self.problems and all(o.passed for o in self.outputs)

    @property
    def max_abs(self) -> float:
        return max((o.max_abs for o in self.outputs), default=math.nan)

    @property
    def min_top1_agreement(self) -> float | None:
        values = [o.top1_agreement for o in self.outputs if o.top1_agreement is not None]
        return min(values) if values else None

    def to_dict(self) -> dict[str, Any]:
        return {"label": self.label, "passed": self.passed, "problems": self.problems,
                "outputs": [{**asdict(o), "tolerance": asdict(o.tolerance)} for o in self.outputs]}

    def figures(self) -> ParityFigures:
        """What a parity check contributes to the gate's row, the report and the baseline."""
        return {"max_abs": self.max_abs, "top1_agreement": self.min_top1_agreement, "passed": self.passed}

    def __str__(self) -> str:
        header = ["output", "shape", "max abs", "mean abs", "p99 abs", "max rel", "cosine", "SQNR dB", "top-1",
                  "worst (index: expected -> obtained)", "tolerance", "status"]
        rows = []
        for o in self.outputs:
            worst = "-"
            if o.worst_index is not None:
                worst = f"{list(o.worst_index)}: {o.worst_expected:.6g} -> {o.worst_obtained:.6g}"
            top1 = "-" if o.top1_agreement is None else f"{o.top1_agreement:.2%}"
            rows.append([o.name, "x".join(map(str, o.shape)), f"{o.max_abs:.3g}", f"{o.mean_abs:.3g}",
                         f"{o.p99_abs:.3g}", f"{o.max_rel:.3g}", f"{o.cosine:.6f}", f"{o.sqnr_db:.1f}", top1, worst,
                         o.tolerance.describe(), "ok" if o.passed else "FAIL"])
        lines = [format_table(header, rows)]
        if self.label:
            lines.insert(0, self.label)
        for o in self.outputs:
            lines.extend(f"  {o.name}: {p}" for p in o.problems)
        lines.extend(f"  {p}" for p in self.problems)
        return "\n".join(lines)


def compare_outputs(reference: Sequence[Any], candidate: Sequence[Any], tolerance: Any = None,
                    output_names: Sequence[str] | None = None, label: str = "") -> ParityReport:
    """Compare two lists of outputs. `tolerance` is a `Tolerance`, a dict `{output_name or "*": Tolerance}`, or
    None for the fp32 default. Mismatched output counts or shapes are reported as failures, not raised."""
    reference = [_as_array(r) for r in reference]
    candidate = [_as_array(c) for c in candidate]
    names = list(output_names) if output_names is not None else [f"output_{i}" for i in range(len(reference))]
    report = ParityReport(outputs=[], label=label)
    if len(reference) != len(candidate):
        report.problems.append(f"the reference has {len(reference)} outputs, the candidate {len(candidate)}")
    for name, ref, cand in zip(names, reference, candidate):
        tol = _tolerance_for(tolerance, name)
        if ref.shape != cand.shape:
            report.problems.append(f"{name}: expected shape {ref.shape}, obtained {cand.shape}")
            continue
        report.outputs.append(_compare_one(name, ref, cand, tol))
    return report


def _tolerance_for(tolerance: Any, name: str) -> Tolerance:
    if tolerance is None:
        return FP32_TOLERANCE
    if isinstance(tolerance, Tolerance):
        return tolerance
    chosen = tolerance.get(name, tolerance.get("*", FP32_TOLERANCE))
    return chosen if isinstance(chosen, Tolerance) else Tolerance(**chosen)


def _as_array(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    return np.asarray(value)


def _compare_one(name: str, ref: np.ndarray, cand: np.ndarray, tol: Tolerance) -> OutputParity:
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        return _compare_arrays(name, ref, ref.astype(np.float64), cand.astype(np.float64), tol)


def _compare_arrays(name: str, ref: np.ndarray, ref64: np.ndarray, cand64: np.ndarray, tol: Tolerance) -> OutputParity:
    problems: list[str] = []
    ref_finite, cand_finite = np.isfinite(ref64), np.isfinite(cand64)
    nonfinite_mismatch = ~(ref_finite & cand_finite) & ~((ref64 == cand64) | (np.isnan(ref64) & np.isnan(cand64)))
    if nonfinite_mismatch.any():
        where = tuple(int(i) for i in np.argwhere(nonfinite_mismatch)[0])
        problems.append(f"{int(nonfinite_mismatch.sum())} NaN/Inf mismatches, first at {list(where)}: "
                        f"expected {ref64[where]}, obtained {cand64[where]}")
    both = ref_finite & cand_finite
    abs_err = np.where(both, np.abs(ref64 - cand64), 0.0)
    rel_err = abs_err / np.maximum(np.abs(ref64), np.finfo(np.float64).tiny)
    size = ref64.size
    worst_index: tuple[int, ...] | None = None
    if size:
        worst_index = tuple(int(i) for i in np.unravel_index(int(np.argmax(abs_err)), ref64.shape))
    r, c = np.where(both, ref64, 0.0).ravel(), np.where(both, cand64, 0.0).ravel()
    noise = float(np.sum((r - c) ** 2))
    signal = float(np.sum(r**2))
    sqnr = math.inf if noise == 0 else (10 * math.log10(signal / noise) if signal > 0 else -math.inf)
    norms = float(np.linalg.norm(r) * np.linalg.norm(c))
    cosine = float(np.dot(r, c) / norms) if norms > 0 else (1.0 if noise == 0 else 0.0)
    top1 = None
    if ref64.ndim >= 2 and ref64.shape[-1] > 1 and ref64.shape[0] > 0:  # classes on the last axis
        top1 = float(np.mean(np.argmax(ref64, axis=-1) == np.argmax(cand64, axis=-1)))
    mismatched = 0
    if tol.atol is not None and tol.rtol is not None:
        mismatched = int(np.sum((abs_err > tol.atol) & (rel_err > tol.rtol)))
        if mismatched:
            problems.append(f"{mismatched} of {size} elements exceed both atol={tol.atol:g} and rtol={tol.rtol:g}")
    # an output without classes on its last axis has no top-1: SQNR judges it
    if tol.min_top1_agreement is not None and top1 is not None and top1 < tol.min_top1_agreement:
        problems.append(f"top-1 agreement {top1:.2%} is below {tol.min_top1_agreement:.2%}")
    if tol.min_sqnr_db is not None and sqnr < tol.min_sqnr_db:
        problems.append(f"SQNR {sqnr:.1f} dB is below {tol.min_sqnr_db:g} dB")
    if tol.min_cosine is not None and cosine < tol.min_cosine:
        problems.append(f"cosine similarity {cosine:.6f} is below {tol.min_cosine:g}")
    return OutputParity(
        name=name, shape=tuple(int(s) for s in ref.shape),
        max_abs=float(abs_err.max()) if size else 0.0, mean_abs=float(abs_err.mean()) if size else 0.0,
        median_abs=float(np.median(abs_err)) if size else 0.0,
        p99_abs=float(np.percentile(abs_err, 99)) if size else 0.0,
        max_rel=float(rel_err.max()) if size else 0.0, cosine=cosine, sqnr_db=sqnr, top1_agreement=top1,
        worst_index=worst_index, worst_expected=None if worst_index is None else float(ref64[worst_index]),
        worst_obtained=None if worst_index is None else float(cand64[worst_index]),
        mismatched=mismatched, tolerance=tol, passed=not problems, problems=problems)


PARITY_ELEMENTS = 2**22  # input values of the largest parity batch at most (16 MB of fp32)


def parity_batch_sizes(spec: ModelSpec) -> list[int]:
    """1, the example's batch and a larger one for a dynamic batch (64 rows, fewer for large inputs: a batch of
    224x224 images holds 27, so a ResNet's parity check costs seconds, not a minute, and its runtimes' memory
    arenas stay small); the example's batch alone otherwise."""
    if not spec.dynamic_batch:
        return [spec.batch_size]
    per_row = sum(int(t[:1].numel()) for t in spec.example_inputs)
    large = min(max(64, 2 * spec.batch_size), max(2 * spec.batch_size, PARITY_ELEMENTS // max(per_row, 1)))
    return sorted({1, spec.batch_size, large})


def check_parity(artifact: Artifact, spec: ModelSpec | None = None,
                 batch_sizes: Sequence[int] | None = None, tolerance: Any = None) -> ParityReport:
    """Run an artifact and the spec's eager model on the same real inputs at several batch sizes and compare.

    Top-1 agreement, SQNR and cosine similarity are statistics, noisy on a batch of one, so they are judged once
    over the rows of every batch together (a row "@ all N rows"); elementwise criteria are judged per batch.
    The tolerance in force is, per output: `tolerance` when given, else the spec's `tolerances` entry, else the
    format's default (tight for fp32 formats, agreement and SQNR for int8 ones).
    """

    spec = spec or artifact.spec
    if spec is None:
        raise ValueError(f"{artifact!r} has no spec; pass spec= to compare it with its eager reference")
    default = get_format(artifact.format).default_tolerance
    names = list(spec.output_names or [])
    tolerances = {name: tolerance if tolerance is not None else spec.tolerance_for(artifact.format, name, default)
                  for name in names}
    per_batch = {name: replace(tol, min_top1_agreement=None, min_sqnr_db=None, min_cosine=None)
                 for name, tol in tolerances.items()}
    report = ParityReport(outputs=[], label=f"parity of {spec.name}/{artifact.format} against eager")
    pooled: list[tuple[list[np.ndarray], list[np.ndarray]]] = []
    # (label, inputs, pooled for the statistics): the shorter length's rows do not concatenate with the others
    cases = [(f"batch {size}", spec.sample_inputs(size), True) for size in batch_sizes or parity_batch_sizes(spec)]
    if spec.dynamic_axes:
        shorter = spec.shortened(spec.sample_inputs(spec.batch_size))
        lengths = ", ".join(f"{name} {list(t.shape)}" for name, t in zip(spec.input_names or [], shorter))
        cases.append((f"batch {spec.batch_size}, shorter ({lengths})", shorter, False))
    for case, inputs, pool in cases:
        reference = spec.reference_outputs(inputs)
        try:
            obtained = artifact.run(inputs)
        except Exception as exc:
            report.problems.append(f"{case}: running the artifact failed: {type(exc).__name__}: {exc}")
            continue
        one = compare_outputs(reference, obtained, per_batch, names)
        for output in one.outputs:
            output.name = f"{output.name} @ {case}"
        report.outputs.extend(one.outputs)
        report.problems.extend(f"{case}: {p}" for p in one.problems)
        if pool:
            pooled.append((reference, obtained))
    statistical = any(t != per_batch[name] for name, t in tolerances.items())
    if statistical and pooled and not report.problems:
        rows = sum(len(reference[0]) for reference, _ in pooled)
        reference_rows = [np.concatenate([reference[i] for reference, _ in pooled]) for i in range(len(names))]
        obtained_rows = [np.concatenate([obtained[i] for _, obtained in pooled]) for i in range(len(names))]
        overall = compare_outputs(reference_rows, obtained_rows, tolerances, names)
        for output in overall.outputs:
            output.name = f"{output.name} @ all {rows} rows"
        report.outputs.extend(overall.outputs)
    return report
