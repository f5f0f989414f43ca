"""`ModelSpec`: everything deploycheck needs to know about one model under test.

The spec is validated when it is built, so that a mistake (a numpy array where a tensor belongs, a batch of one
that would make exporters freeze the batch axis, a misspelt format) is reported once, naming the model, instead
of surfacing later as an obscure exporter error.
"""

from __future__ import annotations

import hashlib
import itertools
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from deploycheck.baseline.rules import resolve_rules
from deploycheck.errors import BaselineError, SpecError
from deploycheck.formats import default_formats, format_names
from deploycheck.input_bounds import validated_bounds
from deploycheck.tensors import FlatModule, flatten_outputs, structure_names
from deploycheck.tolerance import Tolerance

if TYPE_CHECKING:
    import numpy as np
    import torch

Batch = tuple[Any, Any]
_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]+$")


@dataclass
class ModelSpec:
    """The model under test, its inputs, its data and its tolerances.

    `eval_data` is an iterable of `(inputs, labels)` pairs; it is read once and kept, because every format is
    evaluated on the same batches. `calibration_data` (inputs only, or pairs) defaults to the first
    `calibration_batches` batches of `eval_data`. `tolerances` maps a format name (or "default") to a `Tolerance`
    or to a per-output mapping `{output_name or "*": Tolerance}`; plain dicts are accepted for both.
    `format_options` holds per-format export settings, e.g. `{"onnx": {"opset": 18}, "torchscript":
    {"method": "script"}, "onnx_int8_static": {"calibrate_method": "Entropy"}}`. `baseline_rules` overrides the
    regression rules against `baselines/` (`deploycheck.baseline.Rules`), e.g. `{"latency": "p50:15%",
    "onnx_int8_static": {"accuracy_drop": 0.01}}`; they win over `[tool.deploycheck.rules]` in pyproject.toml.
    `original` is the uncompressed model this one was derived from (a module, a `ModelSpec`, or the name of another
    registered model): each format is then also gated against it with the `*_vs_original` budgets, each a number
    or a `{format: number}` mapping (`deploycheck.compression`).

    `example_inputs` may be a dict of named tensors: the model is then called with keywords (as Hugging Face
    models are) and the names become the input names; eval data inputs may be dicts too. Outputs may be a dict,
    a `ModelOutput` or a NamedTuple: their keys or fields become the output names. `dynamic_axes` marks axes
    beyond the batch as dynamic, e.g. `{"input_ids": {1: "seq"}, "attention_mask": {1: "seq"}}`: they are
    exported as dynamic, and parity runs at a second, shorter length too. Labels with one axis fewer than the
    first output (token-level: logits `[batch, seq, vocab]`, labels `[batch, seq]`) are scored position by
    position, skipping `ignore_index` (-100, as in transformers). What an input accepts beyond its shape is found
    from the model's embeddings (token ids within the vocabulary, a sequence within the positions) and recorded
    with each artifact, which refuses the rest by name; `input_value_ranges` (`{"input_ids": (0, 999)}`,
    inclusive) and `input_max_sizes` (`{"input_ids": {1: 512}}`) give or override them.
    """

    name: str
    example_inputs: Any
    model: Any = None
    factory: Callable[[], Any] | None = None
    dynamic_batch: bool = True
    eval_data: Iterable[Batch] | None = None
    calibration_data: Iterable[Any] | None = None
    calibration_batches: int = 8
    tolerances: Mapping[str, Any] | None = None
    formats: Sequence[str] | None = None
    format_options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    input_names: Sequence[str] | None = None
    output_names: Sequence[str] | None = None
    max_accuracy_drop: float | None = None
    max_relative_drop: float | None = None
    min_agreement: float | None = None
    accuracy_overrides: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    min_speedup: Mapping[str, float] = field(default_factory=dict)
    baseline_rules: Mapping[str, Any] = field(default_factory=dict)
    metric: Callable[[list[Any], Any], float] | None = None
    higher_is_better: bool = True
    original: Any = None
    max_accuracy_drop_vs_original: float | Mapping[str, float] | None = None
    min_agreement_vs_original: float | Mapping[str, float] | None = None
    min_speedup_vs_original: float | Mapping[str, float] | None = None
    max_size_ratio_vs_original: float | Mapping[str, float] | None = None
    dynamic_axes: Mapping[str, Mapping[int, str]] | None = None
    input_value_ranges: Mapping[str, tuple[int, int]] = field(default_factory=dict)
    input_max_sizes: Mapping[str, Mapping[int, int]] = field(default_factory=dict)
    ignore_index: int | None = -100
    keyword_inputs: bool = False
    flat_model: Any = field(init=False, default=None, repr=False, compare=False)
    memo: dict[Any, Any] = field(init=False, default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        import torch

        if not isinstance(self.name, str) or not _NAME_RE.match(self.name):
            raise SpecError(f"ModelSpec name {self.name!r} must be non-empty and use only letters, digits, "
                            "'_', '.', '-'")
        if self.model is None and self.factory is None:
            raise SpecError(f"ModelSpec {self.name!r}: give `model` or `factory` (a callable returning the model)")
        if self.model is None:
            assert self.factory is not None
            self.model = self.factory()
        if not isinstance(self.model, torch.nn.Module):
            raise SpecError(f"ModelSpec {self.name!r}: model is a {type(self.model).__name__}, "
                            "expected a torch.nn.Module")
        self.model.eval()
        if isinstance(self.example_inputs, Mapping):
            self.keyword_inputs = True
            names = [str(key) for key in self.example_inputs]
            if self.input_names is not None and list(self.input_names) != names:
                raise SpecError(f"ModelSpec {self.name!r}: input_names {list(self.input_names)} differ from the "
                                f"keys of example_inputs {names}; leave input_names out")
            self.input_names = names
        self.example_inputs = self._validated_inputs(self.example_inputs)
        self._check_batch_axis()
        self.input_names = self._validated_names(self.input_names, len(self.example_inputs), "input")
        self.dynamic_axes = self._validated_dynamic_axes(self.dynamic_axes)
        self.input_value_ranges, self.input_max_sizes = validated_bounds(
            self.name, dict(zip(self.input_names, (t.dim() for t in self.example_inputs))), self.input_value_ranges,
            self.input_max_sizes)
        self.formats = self._validated_formats(self.formats)
        self.tolerances = self._validated_tolerances(self.tolerances)
        unknown_options = set(self.format_options) - set(_known_formats())
        if unknown_options:
            raise SpecError(f"ModelSpec {self.name!r}: format_options for unknown format(s) {sorted(unknown_options)}; "
                            f"valid formats: {', '.join(_known_formats())}")
        self._check_baseline_rules()
        self._check_original_budgets()
        self.eval_data = self._validated_eval_data(self.eval_data)
        self.calibration_data = self._validated_calibration_data(self.calibration_data)
        self.flat_model = FlatModule(self.model, self.input_names, self.keyword_inputs, self.name)
        with torch.no_grad():
            raw = self.model(**dict(zip(self.input_names, self.example_inputs))) if self.keyword_inputs else \
                self.model(*self.example_inputs)
        outputs = flatten_outputs(raw, self.name)
        self.output_names = self._validated_names(self.output_names or structure_names(raw), len(outputs), "output")
        if self.original is not None and not isinstance(self.original, str):
            original_spec(self)

    def _check_original_budgets(self) -> None:
        for key in ("max_accuracy_drop_vs_original", "min_agreement_vs_original", "min_speedup_vs_original",
                    "max_size_ratio_vs_original"):
            value = getattr(self, key)
            values = value if isinstance(value, Mapping) else {"": value}
            unknown = sorted(set(values) - set(_known_formats()) - {""})
            if unknown:
                raise SpecError(f"ModelSpec {self.name!r}: {key} names unknown format(s) {unknown}")
            for budget in values.values():
                if budget is not None and (isinstance(budget, bool) or not isinstance(budget, (int, float))
                                           or budget < 0):
                    raise SpecError(f"ModelSpec {self.name!r}: {key}={value!r}; expected a non-negative number or "
                                    "{format: number}")
            if value is not None and self.original is None:
                raise SpecError(f"ModelSpec {self.name!r}: {key} is set but there is no original; set "
                                "ModelSpec(original=...)")

    def _check_baseline_rules(self) -> None:
        for format_name in self.formats or []:
            try:
                resolve_rules(format_name, (f"ModelSpec {self.name!r} baseline_rules", self.baseline_rules))
            except BaselineError as exc:
                raise SpecError(str(exc)) from exc

    @property
    def batch_size(self) -> int:
        """The batch size of the example inputs."""
        return int(self.example_inputs[0].shape[0])

    def options(self, format_name: str) -> dict[str, Any]:
        """Export settings for one format (empty when none were given)."""
        return dict(self.format_options.get(format_name, {}))

    def tolerance_for(self, format_name: str, output_name: str, default: Tolerance) -> Tolerance:
        """The tolerance in force for one output of one format: the most specific entry wins."""
        assert self.tolerances is not None
        for key in (format_name, "default"):
            entry = self.tolerances.get(key)
            if entry is None:
                continue
            if isinstance(entry, Tolerance):
                return entry
            for out_key in (output_name, "*"):
                if out_key in entry:
                    return entry[out_key]  # type: ignore[no-any-return]
        return default

    def sample_inputs(self, batch_size: int) -> tuple[torch.Tensor, ...]:
        """Inputs of a given batch size drawn from real data when the spec has some, else from the examples.

        Rows are taken in order and repeated when there are fewer than asked, so the result is deterministic.
        """
        import torch

        pools: list[list[torch.Tensor]] = [[] for _ in self.example_inputs]
        if self.eval_data:
            for inputs, _labels in self.eval_data:
                for pool, tensor in zip(pools, inputs):
                    pool.append(tensor)
        else:
            for pool, tensor in zip(pools, self.example_inputs):
                pool.append(tensor)
        result = []
        for pool in pools:
            rows = torch.cat(pool)
            repeats = -(-batch_size // rows.shape[0])
            result.append(rows.repeat(repeats, *([1] * (rows.dim() - 1)))[:batch_size].contiguous())
        return tuple(result)

    def reference_outputs(self, inputs: tuple[torch.Tensor, ...]) -> list[np.ndarray]:
        """The eager model's outputs on `inputs` as numpy arrays, computed once per process for the same inputs:
        every format of a run is compared with the same reference, and a large model's forward pass is the
        slowest part of a parity check."""
        import torch

        key = ("reference", _digest(inputs))
        if key not in self.memo:
            with torch.no_grad():
                self.memo[key] = [t.numpy() for t in self.flat_model(*inputs)]
        return self.memo[key]  # type: ignore[no-any-return]

    def shortened(self, inputs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        """The inputs cut to half their length (at least 1) along every dynamic axis of `dynamic_axes`, so that
        an artifact exported with those axes dynamic is exercised at a second length."""
        axes = self.dynamic_axes or {}
        result = []
        for name, tensor in zip(self.input_names or [], inputs):
            for axis in axes.get(name, {}):
                tensor = tensor.narrow(axis, 0, max(1, int(tensor.shape[axis]) // 2))
            result.append(tensor.contiguous())
        return tuple(result)

    def _validated_dynamic_axes(self, axes: Mapping[str, Mapping[int, str]] | None) -> dict[str, dict[int, str]]:
        result: dict[str, dict[int, str]] = {}
        ranks = dict(zip(self.input_names or [], (t.dim() for t in self.example_inputs)))
        for name, entry in (axes or {}).items():
            if name not in ranks:
                raise SpecError(f"ModelSpec {self.name!r}: dynamic_axes names input {name!r}; inputs are "
                                f"{list(ranks)}")
            if not isinstance(entry, Mapping) or not all(isinstance(a, int) and 0 < a < ranks[name] for a in entry):
                raise SpecError(f"ModelSpec {self.name!r}: dynamic_axes[{name!r}] must map axes 1..{ranks[name] - 1} "
                                f"of that input to names, e.g. {{1: 'seq'}} (axis 0 is the batch); got {entry!r}")
            result[name] = {int(axis): str(label) for axis, label in entry.items()}
        return result

    def _validated_inputs(self, inputs: Any) -> tuple[torch.Tensor, ...]:
        import torch

        if isinstance(inputs, Mapping):
            names = list(self.input_names or inputs)
            if set(inputs) != set(names):
                raise SpecError(f"ModelSpec {self.name!r}: inputs with keys {sorted(inputs)}; expected "
                                f"{sorted(names)}")
            inputs = tuple(inputs[name] for name in names)
        items = inputs if isinstance(inputs, (tuple, list)) else (inputs,)
        if not items:
            raise SpecError(f"ModelSpec {self.name!r}: example_inputs is empty")
        for position, item in enumerate(items):
            if not isinstance(item, torch.Tensor):
                raise SpecError(f"ModelSpec {self.name!r}: example_inputs[{position}] is a {type(item).__module__}."
                                f"{type(item).__name__}, expected a torch.Tensor (convert with torch.as_tensor)")
            if item.dim() == 0:
                raise SpecError(f"ModelSpec {self.name!r}: example_inputs[{position}] is a scalar; "
                                "inputs need a leading batch axis")
        return tuple(items)

    def _check_batch_axis(self) -> None:
        sizes = {int(t.shape[0]) for t in self.example_inputs}
        if self.dynamic_batch and len(sizes) > 1:
            raise SpecError(f"ModelSpec {self.name!r}: example inputs have different batch sizes {sorted(sizes)}; "
                            "with dynamic_batch=True axis 0 of every input is the batch")
        if self.dynamic_batch and sizes == {1}:
            raise SpecError(f"ModelSpec {self.name!r}: dynamic_batch=True needs example inputs with a batch of at "
                            "least 2 (a batch of 1 makes exporters specialise the batch axis to a constant); "
                            "use e.g. torch.randn(8, ...) or set dynamic_batch=False")

    def _validated_names(self, names: Sequence[str] | None, count: int, kind: str) -> list[str]:
        if names is None:
            return [kind] if count == 1 else [f"{kind}_{i}" for i in range(count)]
        names = list(names)
        if len(names) != count or len(set(names)) != count:
            raise SpecError(f"ModelSpec {self.name!r}: {kind}_names {names} must be {count} distinct names "
                            f"(the model has {count} {kind}s)")
        return names

    def _validated_formats(self, formats: Sequence[str] | None) -> list[str]:
        known = _known_formats()
        if formats is None:
            return default_formats()
        if isinstance(formats, str):
            formats = [formats]
        unknown = [f for f in formats if f not in known]
        if unknown:
            raise SpecError(f"ModelSpec {self.name!r}: unknown format(s) {unknown}; valid formats: {', '.join(known)}")
        return list(formats)

    def _validated_tolerances(self, tolerances: Mapping[str, Any] | None) -> dict[str, Any]:
        known = _known_formats()
        result: dict[str, Any] = {}
        for key, entry in (tolerances or {}).items():
            if key != "default" and key not in known:
                raise SpecError(f"ModelSpec {self.name!r}: tolerances for unknown format {key!r}; "
                                f"use 'default' or one of: {', '.join(known)}")
            if isinstance(entry, Tolerance):
                result[key] = entry
            elif isinstance(entry, Mapping) and set(entry) <= set(Tolerance.field_names()):
                result[key] = Tolerance(**entry)
            elif isinstance(entry, Mapping):
                result[key] = {out: t if isinstance(t, Tolerance) else Tolerance(**t) for out, t in entry.items()}
            else:
                raise SpecError(f"ModelSpec {self.name!r}: tolerances[{key!r}] is a {type(entry).__name__}; expected "
                                "a Tolerance, a dict of Tolerance fields, or {output_name: Tolerance}")
        return result

    def _validated_eval_data(self, data: Iterable[Batch] | None) -> list[Batch] | None:
        if data is None:
            return None
        batches: list[Batch] = []
        for position, item in enumerate(data):
            if not isinstance(item, (tuple, list)) or len(item) != 2:
                raise SpecError(f"ModelSpec {self.name!r}: eval_data item {position} is not an (inputs, labels) pair")
            inputs, labels = item
            batches.append((self._validated_inputs(inputs), labels))
        if not batches:
            raise SpecError(f"ModelSpec {self.name!r}: eval_data is empty; give at least one (inputs, labels) batch "
                            "or leave it as None")
        return batches

    def _validated_calibration_data(self, data: Iterable[Any] | None) -> list[tuple[torch.Tensor, ...]]:
        if data is None:
            if self.eval_data:
                return [inputs for inputs, _ in itertools.islice(self.eval_data, self.calibration_batches)]
            return [self.example_inputs]
        batches = []
        for item in data:
            batches.append(self._validated_inputs(item[0] if self._is_labelled_pair(item) else item))
        if not batches:
            raise SpecError(f"ModelSpec {self.name!r}: calibration_data is empty")
        return batches


    def _is_labelled_pair(self, item: Any) -> bool:
        """Whether a calibration item is `(inputs, labels)` rather than the inputs themselves: a model of two
        integer inputs (token ids and a mask) has calibration items that are pairs of integer tensors too, so
        what is shaped like the example inputs is taken as inputs."""
        if not (isinstance(item, (tuple, list)) and len(item) == 2) or _is_tensor(item[1], floating=True):
            return False
        def like(given: Any, example: torch.Tensor) -> bool:
            return (_is_tensor(given, floating=False) and given.dim() == example.dim() and given.dtype == example.dtype
                    and (given.shape[1:] == example.shape[1:] or bool(self.dynamic_axes)))

        return not (len(self.example_inputs) == 2 and all(map(like, item, self.example_inputs)))


def _digest(tensors: Sequence[torch.Tensor]) -> str:
    """A content digest of tensors (shape, dtype and bytes)."""
    digest = hashlib.sha1(usedforsecurity=False)
    for tensor in tensors:
        digest.update(f"{list(tensor.shape)}{tensor.dtype}".encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _is_tensor(value: Any, floating: bool) -> bool:
    import torch

    return isinstance(value, torch.Tensor) and (value.is_floating_point() or not floating)


def _known_formats() -> list[str]:
    return format_names()


def original_spec(spec: ModelSpec, resolve: Callable[[str], ModelSpec] | None = None) -> ModelSpec:
    """The original as a spec that shares the compressed spec's data and settings, checked for compatibility:
    it must accept the same inputs and produce outputs of the same shapes."""
    import torch

    original = spec.original
    if original is None:
        raise SpecError(f"ModelSpec {spec.name!r} has no original (set ModelSpec(original=...))")
    if isinstance(original, str):
        if resolve is None:
            raise SpecError(f"ModelSpec {spec.name!r}: original {original!r} is a registered model's name; "
                            "outside pytest pass the original module or its ModelSpec")
        original = resolve(original)
    if isinstance(original, torch.nn.Module):
        _check_compatible(spec, original.eval(), f"{spec.name}.original")
        original = ModelSpec(
            name=f"{spec.name}.original", model=original, example_inputs=spec.example_inputs,
            dynamic_batch=spec.dynamic_batch, eval_data=spec.eval_data, calibration_data=spec.calibration_data,
            formats=spec.formats, format_options=spec.format_options, input_names=spec.input_names,
            output_names=spec.output_names, metric=spec.metric, higher_is_better=spec.higher_is_better)
    if not isinstance(original, ModelSpec):
        raise SpecError(f"ModelSpec {spec.name!r}: original is a {type(original).__name__}; expected a "
                        "torch.nn.Module, a ModelSpec or a registered model's name")
    _check_compatible(spec, original.model, original.name)
    return original


def _check_compatible(spec: ModelSpec, original: torch.nn.Module, name: str) -> None:
    import torch

    with torch.no_grad():
        try:
            theirs = FlatModule(original, spec.input_names or [], spec.keyword_inputs, name)(*spec.example_inputs)
        except Exception as exc:
            raise SpecError(f"original {name!r} cannot run the inputs of {spec.name!r} "
                            f"({[list(t.shape) for t in spec.example_inputs]}): {type(exc).__name__}: {exc}") from exc
        ours = spec.flat_model(*spec.example_inputs)
    if [list(t.shape) for t in ours] != [list(t.shape) for t in theirs]:
        raise SpecError(f"original {name!r} produces outputs of shapes {[list(t.shape) for t in theirs]} "
                        f"where {spec.name!r} produces {[list(t.shape) for t in ours]}; they must match")
