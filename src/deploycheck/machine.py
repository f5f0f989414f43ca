"""The machine a measurement ran on: its environment record (CPU, flags, versions, threads), stored with every
result, and a fixed reference workload whose speed, timed in the same windows, tells a slower machine from a
slower model."""

from __future__ import annotations

import contextlib
import functools
import gc
import os
import platform
import time
from collections.abc import Iterator
from typing import Any

import numpy as np

from deploycheck.artifact import package_versions
from deploycheck.formats import format_names, get_format

CPU_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "fma", "f16c", "sse4_2", "asimd")


def environment(threads: int, device: str = "cpu") -> dict[str, Any]:
    """CPU model, core count, instruction-set flags, versions and thread settings, stored with every result."""
    model = platform.processor() or ""
    flags: set[str] = set()
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and not model:
                    model = value.strip()
                elif key.strip() in ("flags", "Features") and not flags:
                    flags = set(value.split())
    except OSError:
        pass
    packages = {package for name in format_names() for package in get_format(name).packages}
    return {"cpu": model or platform.machine(), "cores": os.cpu_count(), "machine": platform.machine(),
            "cpu_flags": [f for f in CPU_FLAGS if f in flags], "versions": package_versions(packages),
            "threads": {"intra_op": threads, "inter_op": 1}, "device": device, "platform": platform.platform()}


class ReferenceWorkload:
    """A fixed ONNX Runtime workload (a chain of 256-wide MatMul + Relu, seeded weights, one thread) timed in
    blocks between the model's. Its speed tracks the machine's speed at that moment, so a latency divided by it
    can be compared with one recorded on another machine or on a busier day. `fastest_median_s` is the fastest
    median of a window `bench` has seen in this process: the machine undisturbed."""

    WIDTH = 256
    LAYERS = 4

    def __init__(self) -> None:
        import onnx
        import onnxruntime as ort
        from onnx import TensorProto, helper, numpy_helper

        rng = np.random.default_rng(0)
        nodes, weights, previous = [], [], "x"
        for layer in range(self.LAYERS):
            weight = (rng.standard_normal((self.WIDTH, self.WIDTH)) / np.sqrt(self.WIDTH)).astype(np.float32)
            weights.append(numpy_helper.from_array(weight, f"w{layer}"))
            nodes.append(helper.make_node("MatMul", [previous, f"w{layer}"], [f"m{layer}"]))
            nodes.append(helper.make_node("Relu", [f"m{layer}"], [f"r{layer}"]))
            previous = f"r{layer}"
        graph = helper.make_graph(
            nodes, "deploycheck_reference", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [8, self.WIDTH])],
            [helper.make_tensor_value_info(previous, TensorProto.FLOAT, [8, self.WIDTH])], weights)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        model.ir_version = 8
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        onnx.checker.check_model(model)
        self._session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        self._feed = {"x": rng.standard_normal((8, self.WIDTH)).astype(np.float32)}
        self.fastest_median_s = float("inf")
        for _ in range(10):
            self()

    def __call__(self) -> float:
        start = time.perf_counter()
        self._session.run(None, self._feed)
        return time.perf_counter() - start

    def run_for(self, seconds: float) -> list[float]:
        """Time the workload for `seconds` (at least one timed call), after one untimed call that brings its
        weights back into the cache the model's calls used."""
        self()
        end = time.perf_counter() + seconds
        samples = [self()]
        while time.perf_counter() < end:
            samples.append(self())
        return samples


@functools.cache
def reference_workload() -> ReferenceWorkload:
    """One reference workload per process, so the fastest speed it has shown is remembered across benchmarks."""
    return ReferenceWorkload()


def share_cores(workers: int) -> int | None:
    """Give this process, one of `workers` side by side (pytest-xdist workers), its share of the cores for
    untimed work: `OMP_NUM_THREADS`, which every runtime's load without a thread count follows (see
    `deploycheck.formats.base.thread_count`), and torch's pool set to the usable cores // `workers`, at
    least 1. Otherwise each worker's ONNX Runtime session takes every core, and its spinning threads slow the
    other workers' parity runs and disturb their timing windows. A value the caller set is kept. Returns the
    count set, or None when nothing was set."""
    if workers < 2 or "OMP_NUM_THREADS" in os.environ:
        return None
    import torch

    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1  # not macOS
    threads = max(1, usable // workers)
    os.environ["OMP_NUM_THREADS"] = str(threads)
    torch.set_num_threads(threads)
    return threads


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Python's garbage collector off while timing (a collection inside a timed call is a stall of the process,
    not of the model), and back as it was after."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


@contextlib.contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """torch's intra-op thread count set for a measurement and restored after it, so a benchmark does not leave
    the rest of the process (parity, accuracy, the user's own code) on one thread."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)
