"""`onnx_int4_weight`: the fp32 `onnx` artifact with each MatMul's weight stored in 4 bits per element, in
blocks with fp32 scales (ONNX Runtime's MatMulNBits); activations and arithmetic stay fp32
(`deploycheck.formats.onnx_weight_only`)."""

from __future__ import annotations

from deploycheck.formats.base import Precision
from deploycheck.formats.onnx_weight_only import OnnxWeightOnlyFormat


class OnnxInt4WeightFormat(OnnxWeightOnlyFormat):
    name = "onnx_int4_weight"
    bits = 4
    precision = Precision(weights="int4 MatMul weights in blocks with fp32 scales (MatMulNBits), the rest fp32",
                          compute="fp32 (weights dequantized in the kernel)", activations="fp32 (not quantized)")
