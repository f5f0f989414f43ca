"""Accuracy of an artifact on labelled data, its drop against the eager fp32 reference, the gate on that drop, and
where a quantized model's error comes from.

Accuracies and drops are fractions (0.01 is one point) everywhere in the API; they are printed as percentages.
The default metric is top-1 accuracy on the first output; any `metric(outputs, labels) -> float` can replace it.
"""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from deploycheck.artifact import Artifact
from deploycheck.drift import input_profile
from deploycheck.errors import SpecError, one_line
from deploycheck.explain import explain_quantization, explained_formats
from deploycheck.formats.base import TorchRunner, io_specs
from deploycheck.table import format_table

if TYPE_CHECKING:
    from deploycheck.spec import ModelSpec

Metric = Callable[[list[np.ndarray], np.ndarray], float]


@dataclass
class Evaluation:
    """What one artifact scored on a dataset: the metric, and for top-1 the predictions and per-class accuracy."""

    value: float
    samples: int
    predictions: np.ndarray | None = None
    labels: np.ndarray | None = None

    def per_class(self) -> dict[int, float]:
        if self.predictions is None or self.labels is None:
            return {}
        return {int(c): float(np.mean(self.predictions[self.labels == c] == c)) for c in np.unique(self.labels)}


@dataclass
class AccuracyReport:
    """Accuracy of one artifact against the eager reference, with the budget in force and the verdict. It also
    describes the data, for the production monitor held to the baseline it is stored in: the distribution of
    predicted classes on the eval data and the `input_profile` of the calibration data."""

    model: str
    format: str
    reference: float
    obtained: float
    samples: int
    agreement: float | None
    max_drop: float | None
    max_relative_drop: float | None
    min_agreement: float | None
    higher_is_better: bool = True
    class_drops: list[tuple[int, float, float]] = field(default_factory=list)
    explanation: str = ""
    class_distribution: dict[int, float] = field(default_factory=dict)
    input_profile: dict[str, Any] = field(default_factory=dict)

    @property
    def labelled(self) -> bool:
        """False when the eval data had no labels: only agreement with the reference is measured and gated."""
        return not math.isnan(self.obtained)

    @property
    def drop(self) -> float:
        """Absolute drop: positive when the artifact is worse than the reference."""
        return self.reference - self.obtained if self.higher_is_better else self.obtained - self.reference

    @property
    def relative_drop(self) -> float:
        return self.drop / abs(self.reference) if self.reference else (0.0 if self.drop == 0 else math.inf)

    @property
    def problems(self) -> list[str]:
        found = []
        if not self.labelled and self.min_agreement is None:
            found.append("the eval data has no labels, so only agreement with the reference can be gated: set "
                         "ModelSpec(min_agreement=...)")
        if self.max_drop is not None and self.drop > self.max_drop + 1e-12:
            found.append(f"accuracy drop {self.drop:.2%} exceeds the budget of {self.max_drop:.2%}")
        if self.max_relative_drop is not None and self.relative_drop > self.max_relative_drop + 1e-12:
            found.append(f"relative drop {self.relative_drop:.2%} exceeds the budget of {self.max_relative_drop:.2%}")
        if self.min_agreement is not None and self.agreement is not None and self.agreement < self.min_agreement:
            found.append(f"agreement with the reference's predictions {self.agreement:.2%} is below "
                         f"{self.min_agreement:.2%}")
        return found

    @property
    def passed(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        labelled = self.labelled
        return {"value": self.obtained if labelled else None, "reference": self.reference if labelled else None,
                "drop": self.drop if labelled else None, "relative_drop": self.relative_drop if labelled else None,
                "agreement": self.agreement, "samples": self.samples, "max_drop": self.max_drop,
                "min_agreement": self.min_agreement, "passed": self.passed, "higher_is_better": self.higher_is_better,
                "class_distribution": {str(k): v for k, v in self.class_distribution.items()},
                "input_profile": self.input_profile}

    def __str__(self) -> str:
        budget = " / ".join(part for part in (
            f"drop <= {self.max_drop:.2%}" if self.max_drop is not None else "",
            f"relative <= {self.max_relative_drop:.2%}" if self.max_relative_drop is not None else "",
            f"agreement >= {self.min_agreement:.2%}" if self.min_agreement is not None else "") if part) or "none"
        agreement = "" if self.agreement is None else f"{self.agreement:.2%}"
        if not self.labelled:
            lines = [f"agreement of {self.model}/{self.format} with the eager reference's predictions on "
                     f"{self.samples} unlabelled samples",
                     format_table(["agreement", "budget", "status"], [[agreement, budget, "ok" if self.passed
                                                                        else "FAIL"]])]
            lines.extend(f"  {p}" for p in self.problems)
            return "\n".join(lines)
        lines = [f"accuracy of {self.model}/{self.format} on {self.samples} samples",
                 format_table(["reference (eager)", "obtained", "drop", "relative drop", "agreement", "budget",
                               "status"],
                              [[f"{self.reference:.2%}", f"{self.obtained:.2%}", f"{self.drop:.2%}",
                                f"{self.relative_drop:.2%}", agreement, budget, "ok" if self.passed else "FAIL"]])]
        lines.extend(f"  {p}" for p in self.problems)
        if self.class_drops:
            lines.append("worst classes (accuracy per class, reference -> obtained):")
            lines.append(format_table(["class", "reference", "obtained", "drop"],
                                      [[str(c), f"{r:.2%}", f"{o:.2%}", f"{r - o:.2%}"]
                                       for c, r, o in self.class_drops]))
        if self.explanation:
            lines.append(self.explanation)
        return "\n".join(lines)


def evaluate(artifact: Artifact, eval_data: Iterable[tuple[Any, Any]] | None = None, metric: Metric | None = None,
             model_name: str | None = None, ignore_index: int | None = -100) -> Evaluation:
    """Run an artifact over a whole labelled dataset, batch by batch, and score it.

    With no metric, top-1 accuracy of the first output (per position for token-level outputs, skipping labels
    equal to `ignore_index`); with one, `metric(all_outputs, all_labels)` over the
    concatenated outputs. Raises `SpecError` naming the model for an empty dataset, labels that do not match the
    outputs, or a metric that does not return a number.
    """
    name = model_name or f"{artifact.model_name}/{artifact.format}"
    data = eval_data if eval_data is not None else (artifact.spec.eval_data if artifact.spec else None)
    if data is None:
        raise SpecError(f"{name}: no eval_data to measure accuracy on (set ModelSpec(eval_data=...))")
    outputs: list[list[np.ndarray]] = []
    labels: list[np.ndarray] = []
    unlabelled = 0
    for inputs, batch_labels in data:
        batch_outputs = artifact.run(inputs)
        outputs.append(batch_outputs)
        if batch_labels is None:
            unlabelled += 1
            continue
        label_array = _as_numpy(batch_labels)
        if label_array.shape[:1] != batch_outputs[0].shape[:1]:
            raise SpecError(f"{name}: a batch has {batch_outputs[0].shape[0]} output rows but labels of shape "
                            f"{list(label_array.shape)}; labels need one entry per input row")
        labels.append(label_array)
    if not outputs:
        raise SpecError(f"{name}: eval_data is empty; accuracy needs at least one (inputs, labels) batch")
    joined = [np.concatenate([batch[i] for batch in outputs]) for i in range(len(outputs[0]))]
    if unlabelled:
        if labels:
            raise SpecError(f"{name}: {unlabelled} eval_data batch(es) have no labels and {len(labels)} have some; "
                            "label all of them, or none (then the gate is agreement with the reference)")
        if metric is not None:
            raise SpecError(f"{name}: a metric needs labels, and eval_data has none")
        return Evaluation(math.nan, len(joined[0]), joined[0].argmax(axis=-1), None)
    all_labels = np.concatenate(labels)
    if metric is not None:
        value = metric(joined, all_labels)
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(float(value)):
            raise SpecError(f"{name}: the metric returned {value!r}; it must return a finite number")
        return Evaluation(float(value), len(all_labels))
    logits = joined[0]
    if logits.ndim == all_labels.ndim + 1 and logits.ndim >= 3:
        return _token_top1(name, logits, all_labels, ignore_index)
    if logits.ndim != 2 or all_labels.ndim != 1:
        raise SpecError(f"{name}: top-1 accuracy needs outputs (batch, classes) with labels (batch,), or "
                        "token-level outputs (batch, ..., classes) with labels (batch, ...); got outputs "
                        f"{list(logits.shape)} and labels {list(all_labels.shape)} (pass metric= otherwise)")
    _check_class_labels(name, all_labels, logits.shape[1])
    predictions = logits.argmax(axis=1)
    return Evaluation(float(np.mean(predictions == all_labels)), len(all_labels), predictions, all_labels)


def _token_top1(name: str, logits: np.ndarray, labels: np.ndarray, ignore_index: int | None) -> Evaluation:
    """Top-1 per position (the last axis holds the classes), leaving out positions labelled `ignore_index`
    (padding, as transformers marks it); the predictions and labels of the scored positions are kept."""
    if logits.shape[:-1] != labels.shape:
        raise SpecError(f"{name}: token-level labels of shape {list(labels.shape)} do not match the outputs "
                        f"{list(logits.shape)} (expected labels {list(logits.shape[:-1])})")
    scored = labels != ignore_index if ignore_index is not None else np.ones(labels.shape, bool)
    if not scored.any():
        raise SpecError(f"{name}: every label is the ignore index {ignore_index}; there is nothing to score")
    _check_class_labels(name, labels[scored], logits.shape[-1])
    predictions = logits.argmax(axis=-1)[scored]
    return Evaluation(float(np.mean(predictions == labels[scored])), int(scored.sum()), predictions, labels[scored])


def _check_class_labels(name: str, labels: np.ndarray, classes: int) -> None:
    if not np.issubdtype(labels.dtype, np.integer) or labels.min() < 0 or labels.max() >= classes:
        raise SpecError(f"{name}: labels must be class indices in [0, {classes - 1}] for an output with "
                        f"{classes} classes; got {labels.dtype} labels in [{labels.min()}, {labels.max()}]")


def measure_accuracy(artifact: Artifact, eval_data: Iterable[tuple[Any, Any]] | None = None,
                     metric: Metric | None = None) -> float:
    """The artifact's accuracy (a fraction) on `eval_data` (default: its spec's), top-1 unless `metric` is given."""
    result = evaluate(artifact, eval_data, metric)
    if math.isnan(result.value):
        raise SpecError(f"{artifact.model_name}/{artifact.format}: the eval data has no labels, so there is no "
                        "accuracy to measure (check_accuracy gates agreement with the reference instead)")
    return result.value


def reference_artifact(spec: ModelSpec) -> Artifact:
    """The eager model as an in-memory artifact (the fp32 reference every format is measured against)."""
    inputs, outputs = io_specs(spec)
    metadata = {"format": "eager", "model": spec.name, "size_bytes": 0, "inputs": [t.to_dict() for t in inputs],
                "outputs": [t.to_dict() for t in outputs]}
    return Artifact("eager", Path(f"<in-memory {spec.name}>"), metadata, TorchRunner(spec.flat_model, spec.name),
                    spec=spec)


def reference_evaluation(spec: ModelSpec) -> Evaluation:
    """The eager reference's evaluation on the spec's eval data, computed once per process (every format of the
    model is measured against it)."""
    if "evaluation" not in spec.memo:
        evaluation = evaluate(reference_artifact(spec), spec.eval_data, spec.metric, f"{spec.name}/eager",
                              spec.ignore_index)
        predictions = evaluation.predictions
        if predictions is not None and predictions.size > 1 and np.all(predictions == predictions.flat[0]):
            warnings.warn(f"deploycheck: {spec.name}: the eager model predicts class {predictions.flat[0]} for every "
                          f"one of the {predictions.size} evaluated samples, so its outputs barely depend on its "
                          "input (untrained weights? BatchNorm statistics never estimated?); every format then "
                          "agrees with it trivially, and the gate proves little", stacklevel=2)
        spec.memo["evaluation"] = evaluation
    return spec.memo["evaluation"]  # type: ignore[no-any-return]


def check_accuracy(artifact: Artifact, spec: ModelSpec | None = None, explain: bool = True,
                   worst_classes: int = 3) -> AccuracyReport:
    """Accuracy of an artifact and of the eager reference on the spec's eval data, gated by the spec's budget
    (`max_accuracy_drop`, `max_relative_drop`, `min_agreement`, overridable per format through
    `accuracy_overrides`). On failure of a quantized format, the report carries `explain_quantization`."""
    spec = spec or artifact.spec
    if spec is None:
        raise SpecError(f"{artifact!r} has no spec; pass spec= to compare it with its eager reference")
    budget = {"max_accuracy_drop": spec.max_accuracy_drop, "max_relative_drop": spec.max_relative_drop,
              "min_agreement": spec.min_agreement, **spec.accuracy_overrides.get(artifact.format, {})}
    reference = reference_evaluation(spec)
    obtained = evaluate(artifact, spec.eval_data, spec.metric, ignore_index=spec.ignore_index)
    agreement = None
    if reference.predictions is not None and obtained.predictions is not None:
        agreement = float(np.mean(reference.predictions == obtained.predictions))
    report = AccuracyReport(spec.name, artifact.format, reference.value, obtained.value, obtained.samples, agreement,
                            budget["max_accuracy_drop"], budget["max_relative_drop"], budget["min_agreement"],
                            spec.higher_is_better)
    ref_classes, got_classes = reference.per_class(), obtained.per_class()
    drops = sorted(((c, ref_classes[c], got_classes[c]) for c in ref_classes), key=lambda t: t[2] - t[1])
    report.class_drops = [d for d in drops[:worst_classes] if d[1] > d[2]]
    if obtained.predictions is not None:
        classes, counts = np.unique(obtained.predictions, return_counts=True)
        report.class_distribution = {int(c): float(n / counts.sum()) for c, n in zip(classes, counts)}
    report.input_profile = input_profile(spec.calibration_data or [], artifact.inputs)
    if explain and not report.passed and artifact.format in explained_formats():
        try:
            report.explanation = str(explain_quantization(artifact, spec))
        except Exception as exc:  # the accuracy table and verdict are shown whatever the explanation does
            report.explanation = f"no per-layer explanation of {artifact.model_name}/{artifact.format}: {one_line(exc)}"
    return report


def _as_numpy(labels: Any) -> np.ndarray:
    if hasattr(labels, "detach"):
        labels = labels.detach().cpu().numpy()
    return np.asarray(labels)

