"""A decoder exported to ONNX "with past": `prefill.onnx` and `decode.onnx` (the two graphs of
`deploycheck.generation.cache`, dynamo exporter, batch and lengths dynamic), optionally with their MatMul weights
in 8 or 4 bits (the MatMulNBits step the single-pass weight-only formats use). ONNX graphs run no code of the
artifact's, so they load without a signature once their hashes check.

The graphs are asserted to return every `present.*` tensor: an export that silently lost the cache would
otherwise run, recomputing nothing and answering from a cache that never grows.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import onnx
import torch

from deploycheck.errors import ExportError, one_line
from deploycheck.formats import get_format
from deploycheck.formats.onnx import create_session
from deploycheck.formats.onnx_weight_only import (
    QUANTIZED_LAYERS,
    OnnxWeightOnlyFormat,
    low_bit_weight_fraction,
    quantize_matmul_weights,
)
from deploycheck.generation.artifact import read_sidecar, write_sidecar
from deploycheck.generation.cache import Decode, Prefill, cache_names, dynamic_shapes, examples
from deploycheck.generation.decoders import OnnxDecoder
from deploycheck.generation.spec import GenerativeSpec

GRAPHS = ("prefill.onnx", "decode.onnx")
PACKAGES = ("torch", "transformers", "onnx", "onnxscript", "onnxruntime")
FORMATS = ("onnx", "onnx_int8_weight", "onnx_int4_weight")


def export_onnx_decoder(spec: GenerativeSpec, format_name: str, out_dir: Path, decode: type[Decode],
                        fp32: Path | None = None) -> Path:
    """`spec`'s model as `format_name` (one of `FORMATS`) in `out_dir`; `decode` wraps its decode step. A weight-only
    format quantizes the graphs of `fp32` (this model's verified `onnx` artifact) when given, instead of exporting
    them again."""
    label = f"{spec.name}/{format_name}"
    weight_only = None
    if format_name != "onnx":
        fmt = get_format(format_name)
        assert isinstance(fmt, OnnxWeightOnlyFormat)
        weight_only = fmt.settings_from(spec.options(format_name), label)
    with tempfile.TemporaryDirectory(prefix="deploycheck-decoder-") as scratch:
        if weight_only is not None and fp32 is not None:
            source, layers = Path(fp32), int(read_sidecar(fp32)["layers"])
        else:
            source, layers = Path(scratch), _export_fp32(spec, Path(scratch), decode)
        for graph in GRAPHS:
            if weight_only is None:
                (out_dir / graph).write_bytes((source / graph).read_bytes())
            else:
                quantize_matmul_weights(source / graph, out_dir / graph, weight_only)
    details: dict[str, Any] = {"format": format_name, **spec.described(), "layers": layers}
    if weight_only is not None:
        details["quantization"] = {**weight_only, "weights_only": True,
                                   "modules": QUANTIZED_LAYERS,
                                   "int8_weight_fraction": low_bit_weight_fraction(out_dir / "decode.onnx")}
    write_sidecar(out_dir, GRAPHS, PACKAGES, details)
    return out_dir


def _export_fp32(spec: GenerativeSpec, scratch: Path, decode: type[Decode]) -> int:
    """Both graphs, fp32, into `scratch`; returns the number of layers."""
    example, step, past = examples(spec.model, spec.prompts)
    layers = len(past) // 2
    prefill_shapes, decode_shapes = dynamic_shapes(layers)
    exports = (("prefill.onnx", Prefill(spec.model), (example,), prefill_shapes, ["input_ids"]),
               ("decode.onnx", decode(spec.model), (step, *past), decode_shapes,
                ["input_ids", *cache_names(layers, "past")]))
    present = ["logits", *cache_names(layers, "present")]
    for graph, module, args, shapes, inputs in exports:
        try:
            torch.onnx.export(module, args, str(scratch / graph), dynamo=True, dynamic_shapes=shapes,
                              input_names=inputs, output_names=present, external_data=False, verbose=False)
        except Exception as exc:  # the exporter's own error, named
            raise ExportError(f"{spec.name}/onnx: exporting the {graph.removesuffix('.onnx')} graph failed: "
                              f"{one_line(exc)}") from exc
        outputs = [o.name for o in onnx.load(str(scratch / graph), load_external_data=False).graph.output]
        if outputs != present:
            raise ExportError(f"{spec.name}/onnx: the {graph} graph returns {outputs}, not logits and every "
                              "present.* tensor: the export lost the KV cache")
    return layers


def load_onnx_decoder(path: Path, details: dict[str, Any], bound: bool, threads: int) -> OnnxDecoder:
    sessions = [create_session(Path(path) / graph, intra_op_threads=threads, inter_op_threads=1) for graph in GRAPHS]
    label = f"{details['model']}/{details['format']}" + ("" if bound else " (cache copied)")
    return OnnxDecoder(sessions[0], sessions[1], int(details["layers"]), label, bound)
