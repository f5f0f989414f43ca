"""`onnx_int8_dynamic`: ONNX Runtime's `quantize_dynamic` (int8 weights, activations quantized at run time) applied
to the fp32 `onnx` artifact."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from deploycheck.artifact import Runner
from deploycheck.formats.base import Format, Precision
from deploycheck.formats.onnx import (
    MODEL_FILE,
    OnnxRunner,
    create_session,
    int8_weight_fraction,
    onnx_costs,
    opset_of,
)
from deploycheck.tolerance import INT8_TOLERANCE

if TYPE_CHECKING:
    from deploycheck.artifact import Artifact
    from deploycheck.spec import ModelSpec


class OnnxInt8DynamicFormat(Format):
    name = "onnx_int8_dynamic"
    precision = Precision(weights="int8", compute="int8", activations="int8, ranges per call (dynamic)")
    base_format = "onnx"
    default_tolerance = INT8_TOLERANCE
    packages = ("torch", "onnx", "onnxscript", "onnxruntime")
    servable = True
    platform = "onnxruntime_onnx"
    explanation = "onnx_by_name"

    def export(self, spec: ModelSpec, out_dir: Path, base: Artifact | None) -> dict[str, Any]:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        assert base is not None
        options = spec.options(self.name)
        per_channel = bool(options.get("per_channel", False))
        weight_type = str(options.get("weight_type", "QInt8"))
        quantize_dynamic(str(base.path / MODEL_FILE), str(out_dir / MODEL_FILE), per_channel=per_channel,
                         weight_type=QuantType[weight_type], op_types_to_quantize=options.get("op_types"))
        return {"opset": opset_of(out_dir / MODEL_FILE), "counters": onnx_costs(out_dir / MODEL_FILE),
                "quantization": {"tool": "onnxruntime.quantization.quantize_dynamic", "weight_type": weight_type,
                                 "per_channel": per_channel, "activations": "dynamic",
                                 "int8_weight_fraction": int8_weight_fraction(out_dir / MODEL_FILE)}}

    def load(self, path: Path, metadata: dict[str, Any], spec: ModelSpec | None, **runtime: Any) -> Runner:
        return OnnxRunner(create_session(path / MODEL_FILE, **runtime))
