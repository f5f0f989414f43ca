"""`executorch`: the `torch.export` program lowered to ExecuTorch with the XNNPACK delegate and saved as a `.pte`
flatbuffer, run by ExecuTorch's runtime — PyTorch's path to phones and embedded Linux.

ExecuTorch plans every tensor's memory ahead of time, so a dynamic batch needs an upper bound: the program is
exported with the batch axis bounded by `format_options["executorch"]["max_batch"]` (default 32), and the runner
splits larger batches into chunks of the planned capacity. The capacity actually planned is read back from the
program and recorded: torch's exporter can narrow the bound from the example batch it traces with (its choice of
convolution backend adds a guard "batch < 16" when tracing at batch 2, which planned 15 rows), so the example
inputs are tiled to half the bound before tracing. Other dynamic axes (a sequence) are planned at the bound the
exporter finds (BERT's maximum positions), else at the example's size; a longer input is refused by name. A
`.pte` holds operators by name and XNNPACK's serialized graph: loading it reads data and runs no code from the
artifact.

Threads: ExecuTorch's thread pool is its own process-wide setting; a load with `intra_op_threads` resizes it
(through the one call ExecuTorch offers, `_unsafe_reset_threadpool`, hence `threads_fixed_at_load`), and
programs loaded before a resize are loaded again before they next run.

An optional extra: `pip install 'deploycheck[executorch]'`; without it the format is skipped with that line.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from deploycheck.artifact import Runner
from deploycheck.costs import CostCounters
from deploycheck.errors import ExportError, FormatUnavailable, InputError, one_line
from deploycheck.formats.base import (
    Format,
    Precision,
    dynamic_shapes,
    program_costs,
    require_packages,
    thread_count,
)

if TYPE_CHECKING:
    import torch

    from deploycheck.artifact import Artifact
    from deploycheck.spec import ModelSpec

PROGRAM_FILE = "model.pte"
DEFAULT_MAX_BATCH = 32
DELEGATE_CALL = "executorch_call_delegate"  # the node of a lowered program that runs a delegated (XNNPACK) subgraph


def max_batch(spec: ModelSpec, format_name: str) -> int:
    """The batch bound asked for in `format_options[format_name]["max_batch"]` (default 32)."""
    value = spec.options(format_name).get("max_batch", DEFAULT_MAX_BATCH)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ExportError(f"{spec.name}/{format_name}: max_batch must be a positive integer, got {value!r}")
    return value


def tracing_inputs(spec: ModelSpec, bound: int) -> tuple[torch.Tensor, ...]:
    """The example inputs, rows repeated up to half the batch bound (at least 2) when the batch is dynamic."""
    import torch

    if not spec.dynamic_batch:
        return tuple(spec.example_inputs)
    rows = max(2, bound // 2)
    tiled = []
    for tensor in spec.example_inputs:
        repeats = -(-rows // tensor.shape[0])
        tiled.append(torch.cat([tensor] * repeats)[:rows])
    return tuple(tiled)


def lower_through_xnnpack(programs: Any) -> Any:
    """`torch.export` programs (one, or methods by name) in ExecuTorch's edge dialect, XNNPACK taking what it can.
    Without the edge dialect's validity check, as ExecuTorch's own example export utilities lower: it re-checks
    every node of every method (a fifth to a quarter of the lowering time), and the gate runs the program against
    eager anyway."""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import EdgeCompileConfig, to_edge_transform_and_lower

    return to_edge_transform_and_lower(programs, partitioner=[XnnpackPartitioner()],
                                       compile_config=EdgeCompileConfig(_check_ir_validity=False))


def lower_to_pte(module: Any, spec: ModelSpec, out_dir: Path,
                 format_name: str) -> tuple[dict[str, Any], CostCounters]:
    """Export `module` (`spec.flat_model` or a graph captured from it) with the batch bounded, lower it through XNNPACK,
    write the `.pte`, and return the settings with the capacity the program planned, and the lowered program's
    counters (its operators: the XNNPACK delegate calls and what runs outside them, on the portable kernels)."""
    import torch

    bound = max_batch(spec, format_name)
    shapes: Any = dynamic_shapes(spec, max_batch=bound)
    if shapes is not None and isinstance(module, torch.fx.GraphModule):
        shapes = shapes[0]  # a captured (e.g. quantized) graph takes its inputs one by one, not as `*inputs`
    program = torch.export.export(module, tracing_inputs(spec, bound), dynamic_shapes=shapes)
    try:
        edge = lower_through_xnnpack(program)
    except Exception as exc:  # the model exported; ExecuTorch's own passes cannot take its program
        raise FormatUnavailable(
            f"{spec.name}/{format_name}: ExecuTorch cannot lower this model's torch.export program "
            f"({one_line(exc, 300)}); torch_export and onnx are unaffected") from exc
    counters = program_costs(edge.exported_program())
    del counters["weight_bytes"]  # the delegated subgraphs hold their weights inside the delegate's blob
    ops = counters.get("ops", {})
    counters["fallback_nodes"] = sum(n for op, n in ops.items() if op not in (DELEGATE_CALL, "getitem"))
    lowered = edge.to_executorch()
    (out_dir / PROGRAM_FILE).write_bytes(lowered.buffer)
    meta = _method(out_dir / PROGRAM_FILE).metadata
    planned = [list(meta.input_tensor_meta(index).sizes()) for index in range(meta.num_inputs())]
    capacity = min(sizes[0] for sizes in planned) if spec.dynamic_batch and planned else None
    return ({"delegate": "xnnpack", "max_batch": bound, "planned_batch": capacity, "planned_input_shapes": planned},
            counters)


@contextlib.contextmanager
def _quiet_native_stderr() -> Iterator[None]:
    """ExecuTorch's runtime writes progress lines straight to file descriptor 2 (its CPU probe's "[cpuinfo_utils.cpp:71]
    Reading file ..." when it first loads, the thread pool's resets); they are not errors, and would interleave
    with pytest's and the CLI's output."""
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def load_methods(path: Path, names: tuple[str, ...]) -> dict[str, Any]:
    """The methods `names` of the ExecuTorch program in the `.pte` at `path`, by name."""
    with _quiet_native_stderr():
        from executorch.runtime import Runtime

        program = Runtime.get().load_program(path)
        return {name: program.load_method(name) for name in names}


def _method(path: Path) -> Any:
    return load_methods(path, ("forward",))["forward"]


# how many times this process resized ExecuTorch's thread pool: a program loaded before a resize must be loaded
# again before it runs (its XNNPACK runtime keeps the old pool: executing it hung or aborted the process)
_pool_resizes = 0


class ProgramMethods:
    """The methods `names` of the `.pte` at `path`, by name, loaded again on first use after the thread pool was
    resized since they were loaded (a method keeps the pool it was loaded with)."""

    def __init__(self, path: Path, names: tuple[str, ...]) -> None:
        self.path, self.names = path, names
        self._load()

    def _load(self) -> None:
        self.methods, self.pool = load_methods(self.path, self.names), _pool_resizes

    def __getitem__(self, name: str) -> Any:
        if self.pool != _pool_resizes:
            self._load()
        return self.methods[name]


def set_threads(threads: int) -> None:
    """Resize ExecuTorch's process-wide thread pool, only when the count changes (the call is not safe while
    another thread runs an ExecuTorch program; deploycheck loads, and so resizes, before serving or timing)."""
    global _pool_resizes
    from executorch.extension.pybindings import portable_lib

    if portable_lib._threadpool_get_thread_count() != threads:
        with _quiet_native_stderr():  # it announces "Resetting threadpool to N threads." on file descriptor 2
            portable_lib._unsafe_reset_threadpool(threads)
        _pool_resizes += 1


class ExecuTorchRunner:
    """A loaded `forward` method, called with numpy inputs in order. Batches above the planned capacity run in
    chunks; outputs are copied out, since they live in the program's planned memory, which the next call
    overwrites; the program is loaded again when the thread pool was resized after it was loaded."""

    def __init__(self, path: Path, metadata: dict[str, Any]) -> None:
        self.program_path = path / PROGRAM_FILE
        self.methods = ProgramMethods(self.program_path, ("forward",))
        settings = metadata.get("settings", {})
        self.capacity: int | None = settings.get("planned_batch")
        self.planned = [list(shape) for shape in settings.get("planned_input_shapes", [])]
        self.label = f"{metadata['model']}/{metadata['format']}"

    def __call__(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        import torch

        self._check_shapes(inputs)
        rows = inputs[0].shape[0] if inputs and inputs[0].ndim else 0
        step = self.capacity if self.capacity is not None and rows > self.capacity else rows or 1
        chunks = []
        for start in range(0, max(rows, 1), step):
            tensors = [torch.from_numpy(np.ascontiguousarray(a[start:start + step] if rows else a)) for a in inputs]
            chunks.append([output.numpy().copy() for output in self.methods["forward"].execute(tensors)])
        return chunks[0] if len(chunks) == 1 else [np.concatenate(parts) for parts in zip(*chunks)]

    def _check_shapes(self, inputs: list[np.ndarray]) -> None:
        """Refuse, by name, an input larger than the program planned on an axis other than the batch."""
        for index, (array, planned) in enumerate(zip(inputs, self.planned)):
            for axis, (size, limit) in enumerate(zip(array.shape, planned)):
                if axis > 0 and size > limit:  # the batch is chunked; a fixed batch is checked by the artifact
                    raise InputError(f"{self.label}: input {index} has {size} on axis {axis}; this program was "
                                     f"planned for at most {limit} (shape {planned})")


class ExecuTorchFormat(Format):
    name = "executorch"
    precision = Precision(weights="as the model", compute="as the weights (XNNPACK)")
    packages = ("torch", "executorch")
    servable = True
    platform = "executorch"

    def check_supported(self, spec: ModelSpec) -> None:
        require_packages(spec, self.name, ("executorch",), "executorch")

    def cache_inputs(self, spec: ModelSpec) -> list[Any]:
        return [{"max_batch": max_batch(spec, self.name)}]

    def export(self, spec: ModelSpec, out_dir: Path, base: Artifact | None) -> dict[str, Any]:
        settings, counters = lower_to_pte(spec.flat_model, spec, out_dir, self.name)
        return {"settings": settings, "counters": counters}

    def load(self, path: Path, metadata: dict[str, Any], spec: ModelSpec | None, **runtime: Any) -> Runner:
        return load_pte(path, metadata, **runtime)


def load_pte(path: Path, metadata: dict[str, Any], device: str = "cpu", intra_op_threads: int | None = None,
             **_: Any) -> ExecuTorchRunner:
    """A runner over a `.pte` (both ExecuTorch formats load alike), with ExecuTorch's thread pool sized first, so
    that the program is loaded into the pool it will run on: to the count asked for, else to `OMP_NUM_THREADS`
    when it is set (as ONNX Runtime's and OpenVINO's loads are; the pool would otherwise keep every core)."""
    if device != "cpu":
        raise FormatUnavailable(f"{path}: deploycheck runs ExecuTorch programs on the CPU only (device={device!r})")
    threads = thread_count(intra_op_threads)
    if threads is not None:
        set_threads(threads)
    return ExecuTorchRunner(path, metadata)
