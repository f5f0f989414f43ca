"""`onnx_int8_weight`: the fp32 `onnx` artifact with each MatMul's weight stored in 8 bits per element, in
blocks with fp32 scales (ONNX Runtime's MatMulNBits); activations and arithmetic stay fp32
(`deploycheck.formats.onnx_weight_only`)."""

from __future__ import annotations

from deploycheck.formats.base import Precision
from deploycheck.formats.onnx_weight_only import OnnxWeightOnlyFormat


class OnnxInt8WeightFormat(OnnxWeightOnlyFormat):
    name = "onnx_int8_weight"
    bits = 8
    precision = Precision(weights="int8 MatMul weights in blocks with fp32 scales (MatMulNBits), the rest fp32",
                          compute="fp32 (weights dequantized in the kernel)", activations="fp32 (not quantized)")
