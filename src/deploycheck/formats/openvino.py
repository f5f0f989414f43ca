"""`openvino`: the fp32 ONNX export converted to an OpenVINO IR (`model.xml` + `model.bin`) and run by OpenVINO's
CPU plugin, in fp32 exactly: weights stored uncompressed (`compress_to_fp16=False`) and inference precision
pinned (`INFERENCE_PRECISION_HINT=f32`), since OpenVINO otherwise stores fp16 weights and runs bf16 where the
CPU has it, which no parity tolerance for fp32 would forgive.

An optional extra: `pip install 'deploycheck[openvino]'`; without it the format is skipped with that line.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from deploycheck.artifact import Runner
from deploycheck.costs import CostCounters, op_counts
from deploycheck.errors import FormatUnavailable
from deploycheck.formats.base import Format, Precision, require_packages, thread_count
from deploycheck.formats.onnx import MODEL_FILE as ONNX_FILE

if TYPE_CHECKING:
    from deploycheck.artifact import Artifact
    from deploycheck.spec import ModelSpec

IR_FILE = "model.xml"  # and model.bin beside it
# fp32 inference, recorded in the sidecar and applied from it: the CPU plugin otherwise runs bf16 where it can
PRECISION_HINT = ("INFERENCE_PRECISION_HINT", "f32")
# the operators whose arithmetic dominates an IR: counted as f32 compute when no FakeQuantize feeds them
FLOAT_COMPUTE_OPS = frozenset({"MatMul", "Convolution", "GroupConvolution", "ConvolutionBackpropData"})
# what lies between a quantized source and the compute it feeds: weight decompression and layout
PASS_THROUGH_OPS = frozenset({"Convert", "Subtract", "Multiply", "Reshape", "Transpose", "MaxPool", "Squeeze",
                              "Unsqueeze"})
INTEGER_WEIGHTS = frozenset({"i8", "u8", "i4", "u4"})
# the OpenVINO properties a format's `Precision.runtime` may record, applied by `compile_ir` from the sidecar
RUNTIME_PROPERTIES = ("INFERENCE_PRECISION_HINT", "DYNAMIC_QUANTIZATION_GROUP_SIZE")


def compile_ir(path: Path, metadata: dict[str, Any], intra_op_threads: int | None = None, device: str = "cpu",
               **_: Any) -> Any:
    """The IR compiled for OpenVINO's CPU plugin with the runtime properties its sidecar records (the inference
    precision: f32 for sidecars older than the record), with an explicit thread count when given (else
    `OMP_NUM_THREADS`'s, when set: `deploycheck.formats.base.thread_count`)."""
    import openvino as ov

    if device != "cpu":
        raise FormatUnavailable(f"{path}: deploycheck runs OpenVINO artifacts on the CPU only (device={device!r})")
    recorded = metadata.get("precision", {})
    config: dict[str, Any] = {PRECISION_HINT[0]: PRECISION_HINT[1], "PERFORMANCE_HINT": "LATENCY",
                              **{key: recorded[key] for key in RUNTIME_PROPERTIES if key in recorded}}
    intra_op_threads = thread_count(intra_op_threads)
    if intra_op_threads is not None:
        config["INFERENCE_NUM_THREADS"] = intra_op_threads
    return ov.Core().compile_model(str(path / IR_FILE), "CPU", config)


class OpenVinoRunner:
    """One infer request of a compiled model, called with numpy inputs in order (one caller at a time, as the
    server's per-model executor and the benchmarks call it). Inputs are handed over as tensors sharing the
    arrays' memory and outputs copied out of the request's own tensors: `request.infer(inputs)` builds a result
    dictionary per call and costs three times as much on a small model (82 against 27 µs on the digits CNN)."""

    def __init__(self, compiled: Any) -> None:
        import openvino as ov

        self.tensor = ov.Tensor
        self.compiled = compiled
        self.request = compiled.create_infer_request()
        self.outputs = range(len(compiled.outputs))

    def __call__(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        for index, array in enumerate(inputs):
            self.request.set_input_tensor(index, self.tensor(np.ascontiguousarray(array), shared_memory=True))
        self.request.infer()
        return [self.request.get_output_tensor(index).data.copy() for index in self.outputs]


def openvino_costs(model: Any) -> CostCounters:
    """The counters of an IR: operator types (constants left out, their bytes counted as the weights), and the
    matrix products and convolutions fed neither by a FakeQuantize nor by integer weights (computed in f32)."""
    ops = [op.get_type_name() for op in model.get_ordered_ops()]
    constants = [op for op in model.get_ordered_ops() if op.get_type_name() == "Constant"]
    float_nodes = sum(1 for op in model.get_ordered_ops() if op.get_type_name() in FLOAT_COMPUTE_OPS and not any(
        _quantized_source(op.input_value(i).get_node()) for i in range(op.get_input_size())))
    return {"ops": op_counts(op for op in ops if op != "Constant"),
            "weight_bytes": int(sum(op.get_byte_size() for op in constants)), "float_compute_nodes": float_nodes}


def _quantized_source(node: Any, depth: int = 4) -> bool:
    """Whether a FakeQuantize or an integer constant feeds `node` through its decompression or layout ops (NNCF
    stores int8 weights as Constant(i8) -> Convert -> Subtract -> Multiply, and a FakeQuantize may sit before a
    MaxPool and a Reshape)."""
    kind = node.get_type_name()
    if kind == "FakeQuantize":
        return True
    if kind == "Constant":
        return node.get_output_element_type(0).get_type_name() in INTEGER_WEIGHTS
    if kind not in PASS_THROUGH_OPS or depth == 0:
        return False
    return any(_quantized_source(node.input_value(i).get_node(), depth - 1) for i in range(node.get_input_size()))


def low_bit_weight_fraction(model: Any, kinds: tuple[str, ...] = tuple(INTEGER_WEIGHTS)) -> float:
    """The share of an IR's weight elements (constants of more than one element) stored as integers of `kinds`
    (by default 8 bits or fewer; the gate's "int8 in name only" rule reads it as `int8_weight_fraction`)."""
    quantized = total = 0
    for op in model.get_ops():
        if op.get_type_name() != "Constant":
            continue
        elements = math.prod(op.get_output_shape(0))
        kind = op.get_output_element_type(0).get_type_name()
        if elements <= 1 or kind not in (*INTEGER_WEIGHTS, "f32", "f16", "bf16"):
            continue
        total += elements
        quantized += elements if kind in kinds else 0
    return quantized / total if total else 0.0


class OpenVinoFormat(Format):
    name = "openvino"
    precision = Precision(weights="f32 (compress_to_fp16=False)", compute="f32", runtime=(PRECISION_HINT,))
    base_format = "onnx"
    packages = ("torch", "onnx", "onnxscript", "openvino")
    servable = True
    platform = "openvino"

    def check_supported(self, spec: ModelSpec) -> None:
        require_packages(spec, self.name, ("openvino",), "openvino")

    def export(self, spec: ModelSpec, out_dir: Path, base: Artifact | None) -> dict[str, Any]:
        import openvino as ov

        assert base is not None
        model = ov.convert_model(str(base.path / ONNX_FILE))
        ov.save_model(model, str(out_dir / IR_FILE), compress_to_fp16=False)
        return {"settings": {"source": "onnx"}, "counters": openvino_costs(model)}

    def load(self, path: Path, metadata: dict[str, Any], spec: ModelSpec | None, **runtime: Any) -> Runner:
        return OpenVinoRunner(compile_ir(path, metadata, **runtime))
