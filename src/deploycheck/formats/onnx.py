"""`onnx`: the dynamo exporter (`torch.onnx.export(..., dynamo=True)`) with a dynamic batch axis, validated by
`onnx.checker` (full check), run with ONNX Runtime.

The model may keep its weights in `model.onnx.data` beside `model.onnx`; both files belong to the artifact and
are hashed together. The ONNX int8 formats reuse `OnnxRunner` and `create_session`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from deploycheck.artifact import Runner
from deploycheck.costs import CostCounters, op_counts
from deploycheck.errors import FormatUnavailable
from deploycheck.formats.base import Format, dynamic_shapes, thread_count

if TYPE_CHECKING:
    import onnxruntime

    from deploycheck.artifact import Artifact
    from deploycheck.spec import ModelSpec

MODEL_FILE = "model.onnx"
DEFAULT_OPSET = 18
# the operators whose arithmetic dominates a graph: counted as float compute when no input is dequantized
FLOAT_COMPUTE_OPS = frozenset({"MatMul", "Gemm", "Conv", "ConvTranspose"})


class OnnxFormat(Format):
    name = "onnx"
    packages = ("torch", "onnx", "onnxscript", "onnxruntime")
    servable = True
    platform = "onnxruntime_onnx"

    def export(self, spec: ModelSpec, out_dir: Path, base: Artifact | None) -> dict[str, Any]:
        import onnx
        import torch

        options = spec.options(self.name)
        opset = int(options.get("opset", DEFAULT_OPSET))
        torch.onnx.export(spec.flat_model, spec.example_inputs, str(out_dir / MODEL_FILE), dynamo=True,
                          input_names=list(spec.input_names or []), output_names=list(spec.output_names or []),
                          dynamic_shapes=dynamic_shapes(spec), opset_version=opset)
        onnx.checker.check_model(str(out_dir / MODEL_FILE), full_check=True)
        return {"opset": opset_of(out_dir / MODEL_FILE), "settings": {"exporter": "dynamo", "opset": opset},
                "counters": onnx_costs(out_dir / MODEL_FILE)}

    def load(self, path: Path, metadata: dict[str, Any], spec: ModelSpec | None, **runtime: Any) -> Runner:
        return OnnxRunner(create_session(path / MODEL_FILE, **runtime))


def opset_of(model_path: Path) -> int:
    import onnx

    model = onnx.load(str(model_path), load_external_data=False)
    return int(max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")))


def onnx_costs(model_path: Path) -> CostCounters:
    """The counters of an ONNX graph, read without its external data: operator types (a custom domain's prefixed,
    `com.microsoft.MatMulNBits`), initializer bytes, and the matrix products and convolutions that take no
    dequantized input (computed in float; in an int8 model, the ones its quantizer left alone)."""
    import math

    import onnx

    model = onnx.load(str(model_path), load_external_data=False)
    nodes = model.graph.node
    dequantized = {output for node in nodes if node.op_type == "DequantizeLinear" for output in node.output}
    float_nodes = sum(1 for node in nodes if node.op_type in FLOAT_COMPUTE_OPS and node.domain in ("", "ai.onnx")
                      and not dequantized.intersection(node.input))
    weight_bytes = sum(math.prod(t.dims) * onnx.helper.tensor_dtype_to_np_dtype(t.data_type).itemsize
                       for t in model.graph.initializer)
    ops = [f"{node.domain}.{node.op_type}" if node.domain not in ("", "ai.onnx") else node.op_type for node in nodes]
    return {"ops": op_counts(ops), "weight_bytes": int(weight_bytes), "float_compute_nodes": float_nodes}


def int8_weight_fraction(model_path: Path) -> float:
    """The share of an ONNX model's weight elements stored as 8-bit integers (int32 biases of quantized layers
    count as quantized; scales, zero points and other scalars are not weights). Read from the tensor shapes
    alone, so external data is not loaded. A "quantized" model that quantized little is flagged with this."""
    import math

    import onnx

    model = onnx.load(str(model_path), load_external_data=False)
    quantized_types = {onnx.TensorProto.INT8, onnx.TensorProto.UINT8, onnx.TensorProto.INT32}
    float_types = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE, onnx.TensorProto.BFLOAT16}
    quantized = total = 0
    for tensor in model.graph.initializer:
        elements = math.prod(tensor.dims)
        if elements <= 1 or tensor.data_type not in quantized_types | float_types:
            continue
        total += elements
        quantized += elements if tensor.data_type in quantized_types else 0
    return quantized / total if total else 0.0


def create_session(model_path: Path, intra_op_threads: int | None = None, inter_op_threads: int | None = None,
                   device: str = "cpu", spinning: bool = True) -> onnxruntime.InferenceSession:
    """An ONNX Runtime session with explicit thread counts (`OMP_NUM_THREADS` for the intra-op pool when none is
    given: `deploycheck.formats.base.thread_count`); `device="cuda"` asks for the CUDA provider;
    `spinning=False` keeps idle pool threads from spinning (a server shares its cores with other work)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    intra_op_threads = thread_count(intra_op_threads)
    if intra_op_threads is not None:
        options.intra_op_num_threads = intra_op_threads
    if inter_op_threads is not None:
        options.inter_op_num_threads = inter_op_threads
    options.log_severity_level = 3
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    providers = ["CPUExecutionProvider"]
    if device == "cuda":
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise FormatUnavailable(f"{model_path}: device='cuda' needs ONNX Runtime's CUDA execution provider "
                                    "(the onnxruntime-gpu package); this onnxruntime has "
                                    f"{ort.get_available_providers()}")
        providers.insert(0, "CUDAExecutionProvider")
    return ort.InferenceSession(str(model_path), sess_options=options, providers=providers)


class OnnxRunner:
    """Runs an ONNX Runtime session on numpy inputs given in the model's input order."""

    def __init__(self, session: onnxruntime.InferenceSession) -> None:
        self.session = session
        self.input_names = [i.name for i in session.get_inputs()]

    def __call__(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        outputs = self.session.run(None, dict(zip(self.input_names, inputs)))
        return [np.asarray(o) for o in outputs]
