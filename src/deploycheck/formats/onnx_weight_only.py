"""Weight-only ONNX formats, `onnx_int8_weight` and `onnx_int4_weight`: ONNX Runtime's `MatMulNBitsQuantizer` stores
each MatMul's constant weight in 8 or 4 bits per element, in blocks along its input axis with one scale (and zero
point) per block, as the `com.microsoft.MatMulNBits` operator; activations and the arithmetic stay fp32 (weights are
dequantized block by block in the kernel). This is how transformer decoders are shipped when activation quantization
hurts: the weights dominate their size and memory traffic.

Only MatMul nodes with a constant 2-D weight are rewritten: a `Gemm` (what `torch.nn.Linear` with a batch of 2-D
inputs, or GPT-2's `Conv1D` `addmm`, may export as) stays fp32, and the sidecar's `int8_weight_fraction` and cost
counters say how much was left.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from deploycheck.artifact import Runner
from deploycheck.errors import ExportError
from deploycheck.formats.base import Format, Precision
from deploycheck.formats.onnx import MODEL_FILE, OnnxRunner, create_session, onnx_costs, opset_of
from deploycheck.tolerance import INT8_TOLERANCE

if TYPE_CHECKING:
    from deploycheck.artifact import Artifact
    from deploycheck.spec import ModelSpec

DEFAULT_BLOCK_SIZE = 32
QUANTIZED_LAYERS = "MatMul weights only (MatMulNBits; a Gemm such as GPT-2's Conv1D stays fp32)"


class OnnxWeightOnlyFormat(Format):
    """The two weight-only formats differ only in `bits`; `format_options[name]`: `block_size` (16, 32, 64,
    128 or 256; default 32), `symmetric` (default True) and `accuracy_level` (the kernel's compute type,
    MatMulNBits' attribute; default: the runtime's)."""

    bits: ClassVar[int]
    base_format = "onnx"
    default = False  # opt-in: on the CNNs and MLPs most gates hold, few weights are MatMuls
    default_tolerance = INT8_TOLERANCE
    packages = ("torch", "onnx", "onnxscript", "onnxruntime")
    servable = True
    platform = "onnxruntime_onnx"
    explanation = "onnx_by_name"

    def settings(self, spec: ModelSpec) -> dict[str, Any]:
        return self.settings_from(spec.options(self.name), f"{spec.name}/{self.name}")

    def settings_from(self, options: Mapping[str, Any], label: str) -> dict[str, Any]:
        """The quantizer's settings from a format's options (a `ModelSpec`'s or a generative spec's)."""
        settings = {"bits": self.bits, "block_size": int(options.get("block_size", DEFAULT_BLOCK_SIZE)),
                    "symmetric": bool(options.get("symmetric", True)), "accuracy_level": options.get("accuracy_level")}
        if settings["block_size"] not in (16, 32, 64, 128, 256):
            raise ExportError(f"{label}: block_size {settings['block_size']} is not one of 16, 32, 64, 128, 256 "
                              "(MatMulNBits' blocks)")
        return settings

    def cache_inputs(self, spec: ModelSpec) -> list[Any]:
        return [self.settings(spec)]

    def export(self, spec: ModelSpec, out_dir: Path, base: Artifact | None) -> dict[str, Any]:
        assert base is not None
        settings = self.settings(spec)
        quantize_matmul_weights(base.path / MODEL_FILE, out_dir / MODEL_FILE, settings)
        return {"opset": opset_of(out_dir / MODEL_FILE), "counters": onnx_costs(out_dir / MODEL_FILE),
                "quantization": {"tool": "onnxruntime.quantization.MatMulNBitsQuantizer", "weights_only": True,
                                 **settings, "int8_weight_fraction": low_bit_weight_fraction(out_dir / MODEL_FILE)}}

    def load(self, path: Path, metadata: dict[str, Any], spec: ModelSpec | None, **runtime: Any) -> Runner:
        return OnnxRunner(create_session(path / MODEL_FILE, **runtime))


def quantize_matmul_weights(source: Path, target: Path, settings: dict[str, Any]) -> None:
    """`source`'s MatMul weights in `settings["bits"]` bits (MatMulNBits, blocks of `block_size`), to `target`:
    the weight-only step shared by these formats and the generative ONNX exports (prefill and decode graphs)."""
    import onnx

    with _root_logger_kept():
        from onnxruntime.quantization.matmul_nbits_quantizer import (
            DefaultWeightOnlyQuantConfig,
            MatMulNBitsQuantizer,
        )
    config = DefaultWeightOnlyQuantConfig(block_size=settings["block_size"], is_symmetric=settings["symmetric"],
                                          accuracy_level=settings["accuracy_level"], bits=settings["bits"])
    quantizer = MatMulNBitsQuantizer(onnx.load(str(source)), algo_config=config)
    quantizer.process()
    quantizer.model.save_model_to_file(str(target), use_external_data_format=False)


@contextlib.contextmanager
def _root_logger_kept() -> Iterator[None]:
    """Importing `matmul_nbits_quantizer` calls `logging.basicConfig(level=INFO)`, which would turn on every
    library's INFO messages in the user's process (thousands of lines from the ONNX exporter's passes); the root
    logger's level and handlers are put back as they were."""
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    try:
        yield
    finally:
        root.setLevel(level)
        for handler in [h for h in root.handlers if h not in handlers]:
            root.removeHandler(handler)


def low_bit_weight_fraction(model_path: Path) -> float:
    """The share of the model's weight elements a MatMulNBits node holds in 8 bits or fewer (each node's K x N,
    from its attributes), against those left in float initializers; the blocks' scales and zero points are not
    weights. Reported as the sidecar's `int8_weight_fraction`, so the gate's "int8 in name only" rule reads it."""
    import onnx

    model = onnx.load(str(model_path), load_external_data=False)
    packed_or_scales: set[str] = set()
    quantized = 0
    for node in model.graph.node:
        if node.op_type == "MatMulNBits":
            attributes = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
            quantized += int(attributes["K"]) * int(attributes["N"])
            packed_or_scales.update(node.input[1:])
    floats = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE, onnx.TensorProto.BFLOAT16}
    left = sum(math.prod(t.dims) for t in model.graph.initializer
               if t.name not in packed_or_scales and t.data_type in floats and math.prod(t.dims) > 1)
    total = quantized + left
    return quantized / total if total else 0.0


def _precision(bits: int) -> Precision:
    return Precision(weights=f"int{bits} MatMul weights in blocks with fp32 scales (MatMulNBits), the rest fp32",
                     compute="fp32 (weights dequantized in the kernel)", activations="fp32 (not quantized)")


class OnnxInt8WeightFormat(OnnxWeightOnlyFormat):
    name = "onnx_int8_weight"
    bits = 8
    precision = _precision(8)


class OnnxInt4WeightFormat(OnnxWeightOnlyFormat):
    name = "onnx_int4_weight"
    bits = 4
    precision = _precision(4)
