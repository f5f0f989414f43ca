"""The one small interface every format implements, and the pieces the torch-based formats share."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import logging
import os
import warnings
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from deploycheck.artifact import Runner, TensorSpec
from deploycheck.costs import CostCounters, op_counts
from deploycheck.errors import FormatUnavailable
from deploycheck.input_bounds import InputBounds, embedding_lookups, found_bounds, merged_bounds
from deploycheck.tensors import flatten_outputs
from deploycheck.tolerance import FP32_TOLERANCE, Tolerance

if TYPE_CHECKING:
    import torch

    from deploycheck.artifact import Artifact
    from deploycheck.spec import ModelSpec


@dataclass(frozen=True)
class Precision:
    """What an artifact stores its weights in and its runtime computes in, in words for the sidecar, and the
    precision settings its loader hands the runtime (`runtime`, e.g. OpenVINO's INFERENCE_PRECISION_HINT)."""

    weights: str
    compute: str
    activations: str | None = None  # for quantized formats: how activation ranges are set
    runtime: tuple[tuple[str, str], ...] = ()

    def to_dict(self) -> dict[str, str]:
        described = {"weights": self.weights, "compute": self.compute}
        if self.activations is not None:
            described["activations"] = self.activations
        return {**described, **dict(self.runtime)}


class Format(ABC):
    """One deployment format: how to export a spec's model into a directory, and how to run it from there.

    `base_format` names a format whose artifact this one is derived from (the ONNX int8 formats quantize the fp32
    ONNX export); the exporter passes that artifact in as `base`. `export` writes files only into `out_dir` and
    returns metadata details (settings, opset, quantization); the caller hashes the files and writes the sidecar.
    """

    name: ClassVar[str]
    base_format: ClassVar[str | None] = None
    default_tolerance: ClassVar[Tolerance] = FP32_TOLERANCE
    # whether thread counts are fixed when the runtime is loaded (an ONNX Runtime session), so timing with other
    # thread counts needs a fresh load; torch's are a process setting, and its loaded module can be timed as is
    threads_fixed_at_load: ClassVar[bool] = True
    # the packages whose versions decide what an export holds: recorded in the sidecar and part of the cache key,
    # so upgrading one re-exports (python, numpy and deploycheck are always included)
    packages: ClassVar[tuple[str, ...]] = ("torch",)
    # False for a format that keeps the model in memory (eager): nothing on disk to size, keep, accept or serve
    writes_files: ClassVar[bool] = True
    # whether `deploycheck serve` may load it from its directory alone (no model code, no spec)
    servable: ClassVar[bool] = False
    # the Open Inference Protocol `platform` a served artifact reports (KServe's names)
    platform: ClassVar[str] = "unknown"
    # why loading it can run code from the artifact (a program, an unpickled object, an imported factory); None
    # when loading only reads data. Such a format loads only when signed by a trusted key, or with trust_code
    executes_code: ClassVar[str | None] = None
    # the engine in `deploycheck.explain.ENGINES` that explains its per-layer quantization error, if any
    explanation: ClassVar[str | None] = None
    # the numeric precision the artifact stores and its runtime is told to compute in: recorded in the sidecar
    # (`precision`) and part of the cache key, so a change re-exports; a loader that sets a precision reads it
    # from the sidecar, so what is recorded is what runs
    precision: ClassVar[Precision] = Precision(weights="as the model", compute="as the weights")
    # False for a format too costly to export on every run (a C++ compilation): gated only where named, in
    # ModelSpec(formats=...) and --deploycheck-formats
    default: ClassVar[bool] = True
    # the settings `deploycheck quantize` tries for this format, each a `format_options` entry (empty: the format
    # is not searched); the search exports each, keeps those within the accuracy budget, and picks one
    int8_search_space: ClassVar[tuple[dict[str, Any], ...]] = ()

    def check_supported(self, spec: ModelSpec) -> None:  # noqa: B027  (optional hook; most formats take any model)
        """Raise `FormatUnavailable` with a reason when this format cannot handle the spec."""

    def cache_inputs(self, spec: ModelSpec) -> list[Any]:
        """What, beyond the model and the settings, an export depends on (e.g. calibration data)."""
        return []

    def runs_artifact_code(self, metadata: dict[str, Any], spec: ModelSpec | None) -> bool:
        """Whether loading this artifact (with this spec, if any) would run code that came with the artifact."""
        return self.executes_code is not None

    @abstractmethod
    def export(self, spec: ModelSpec, out_dir: Path, base: Artifact | None) -> dict[str, Any]:
        """Write the artifact's files into `out_dir`; return the metadata details."""

    @abstractmethod
    def load(self, path: Path, metadata: dict[str, Any], spec: ModelSpec | None, **runtime: Any) -> Runner:
        """A runner over the files in `path` (already verified against `metadata`)."""


# below this fraction of its weights in 8 bits or fewer, a quantized artifact is int8 in name only: the gate's
# summary says so, and the accuracy-aware search does not offer it as an int8 configuration
MIN_INT8_WEIGHT_FRACTION = 0.5


def int8_in_name_only(fraction: float | None, floor: float = MIN_INT8_WEIGHT_FRACTION) -> bool:
    """Whether a quantized artifact with `fraction` of its weights in int8 (None: not recorded) is below `floor`."""
    return fraction is not None and fraction < floor


def thread_count(asked: int | None) -> int | None:
    """The intra-op thread count a load runs on: the one `asked` for, else the one `OMP_NUM_THREADS` asks for (a
    positive integer), else None (the runtime chooses). torch follows the variable, and ONNX Runtime, OpenVINO and
    ExecuTorch, which ignore it, are given it by their loaders through this: the one variable by which a CI job
    shares its cores between processes (pytest-xdist workers) then holds for every runtime, where otherwise each
    session takes every core and its idle threads spin beside the other workers."""
    if asked is not None:
        return asked
    value = os.environ.get("OMP_NUM_THREADS", "").strip()
    return int(value) if value.isdigit() and int(value) > 0 else None


def installed(package: str) -> bool:
    """Whether a package (its import name) can be imported, without importing it."""
    try:
        return importlib.util.find_spec(package) is not None
    except (ImportError, ValueError):  # a broken or blocked installation counts as none
        return False


def require_packages(spec: ModelSpec, format_name: str, packages: tuple[str, ...], extra: str) -> None:
    """Raise `FormatUnavailable` with the install line of deploycheck's `extra` when one of `packages` (import
    names) is missing: a format of an optional runtime is skipped, never an error, for users without it."""
    missing = [package for package in packages if not installed(package)]
    if missing:
        raise FormatUnavailable(f"{spec.name}/{format_name}: {', '.join(missing)} is not installed "
                                f"(pip install 'deploycheck[{extra}]')")


def io_specs(spec: ModelSpec) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """Input and output specifications from the spec's names and the eager model's outputs on the examples, the
    inputs with their bounds (found from the embeddings this forward pass calls, or given in the spec)."""
    import torch

    axes = spec.dynamic_axes or {}

    def describe(name: str, tensor: torch.Tensor, bounds: InputBounds | None = None) -> TensorSpec:
        shape: list[int | None] = [int(s) for s in tensor.shape]
        names: list[str | None] = [None] * len(shape)
        if spec.dynamic_batch and shape:
            shape[0], names[0] = None, "batch"
        for axis, axis_name in axes.get(name, {}).items():
            shape[axis], names[axis] = None, axis_name
        if bounds is None:
            return TensorSpec(name, tuple(shape), str(tensor.detach().numpy().dtype))
        limits = tuple(bounds.max_sizes.get(axis) for axis in range(len(shape)))
        return TensorSpec(name, tuple(shape), str(tensor.detach().numpy().dtype), tuple(names), limits,
                          bounds.value_range)

    assert spec.input_names is not None and spec.output_names is not None
    with torch.no_grad(), embedding_lookups(spec.model) as lookups:
        outputs = spec.flat_model(*spec.example_inputs)
    bounds = merged_bounds(found_bounds(spec.input_names, spec.example_inputs, axes, lookups),
                           spec.input_value_ranges, spec.input_max_sizes)
    return ([describe(n, t, bounds.get(n, InputBounds())) for n, t in zip(spec.input_names, spec.example_inputs)],
            [describe(n, t) for n, t in zip(spec.output_names, outputs)])


def dynamic_shapes(spec: ModelSpec, max_batch: int = 65536) -> tuple[tuple[dict[int, Any], ...]] | None:
    """`torch.export` dynamic shapes of `spec.flat_model` (whose inputs arrive as one `*inputs` tuple): axis 0
    of every input one shared batch dimension up to `max_batch`, and the spec's `dynamic_axes` left for the
    exporter to infer (`Dim.DYNAMIC`: a model's own limits, such as a maximum sequence length, then need no
    declaring)."""
    axes = spec.dynamic_axes or {}
    if not spec.dynamic_batch and not axes:
        return None
    from torch.export import Dim

    batch = Dim("batch", min=1, max=max_batch)
    shapes = []
    for name in spec.input_names or []:
        shape: dict[int, Any] = {0: batch} if spec.dynamic_batch else {}
        shape.update({axis: Dim.DYNAMIC for axis in axes.get(name, {})})
        shapes.append(shape)
    return (tuple(shapes),)


class TorchRunner:
    """Runs a torch module (eager, scripted or exported) on numpy inputs, without autograd."""

    def __init__(self, module: Any, model_name: str, device: str = "cpu") -> None:
        self.module = module
        self.model_name = model_name
        self.device = device

    def __call__(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        import torch

        with torch.inference_mode():
            tensors = [torch.from_numpy(array).to(self.device) for array in inputs]
            outputs = flatten_outputs(self.module(*tensors), self.model_name)
            return [o.detach().cpu().numpy() for o in outputs]


def parameter_bytes(module: torch.nn.Module) -> int:
    """Bytes held by a module's parameters and buffers (sizes a format that writes no files)."""
    return sum(tensor_bytes(t) for t in [*module.parameters(), *module.buffers()])


def flops_per_sample(spec: ModelSpec) -> int | None:
    """The eager model's forward FLOPs on the example inputs per sample of the example batch, counted by torch's
    `FlopCounterMode` (matrix products and convolutions); None where the model cannot be counted."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    batch = int(spec.example_inputs[0].shape[0]) if spec.dynamic_batch and spec.example_inputs[0].dim() else 1
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            spec.flat_model(*spec.example_inputs)
    except Exception:
        return None
    return int(counter.get_total_flops()) // max(batch, 1)


def program_costs(program: torch.export.ExportedProgram) -> CostCounters:
    """The counters of a `torch.export` program: its operators (`aten.linear`, overload left out) and the bytes of
    its parameters, buffers and constants."""
    ops = [_operator_name(node.target) for node in program.graph.nodes if node.op == "call_function"]
    tensors = [t for t in [*program.state_dict.values(), *program.constants.values()] if hasattr(t, "element_size")]
    return {"ops": op_counts(ops), "weight_bytes": sum(tensor_bytes(t) for t in tensors)}


def tensor_bytes(tensor: torch.Tensor) -> int:
    """The bytes a tensor stores; for a tensor subclass (torchao's quantized weights), those of the plain tensors
    it is made of (its int8 data and scales), not the float size it presents."""
    if hasattr(tensor, "__tensor_flatten__"):
        names, _ = tensor.__tensor_flatten__()
        return sum(tensor_bytes(getattr(tensor, name)) for name in names)
    return int(tensor.numel() * tensor.element_size())


def _operator_name(target: Any) -> str:
    """`aten.linear` for an aten overload (its `.default` left out), the function's name otherwise."""
    if hasattr(target, "name") and callable(target.name) and "::" in target.name():
        return str(target.name()).replace("::", ".")
    return str(getattr(target, "__name__", target))


@contextlib.contextmanager
def quiet_exporters() -> Iterator[None]:
    """Silence the progress prints, warnings and log lines exporters and quantizers emit while they work; their
    errors still propagate as exceptions, which deploycheck reports with the format named."""
    names = ("", "torch", "torch.__trace", "torchao", "onnxscript", "onnxruntime")  # torch.__trace: DEBUG of its own
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)
