"""A decoder exported to ONNX "with past": `prefill.onnx` and `decode.onnx` (the two graphs of
`deploycheck.generation.cache`, dynamo exporter, batch and lengths dynamic), optionally with their MatMul weights
in 8 or 4 bits (the MatMulNBits step the single-pass weight-only formats use), and a sidecar that records each
file's hash, checked before anything is loaded.

The decode graph is asserted to return every `present.*` tensor: an export that silently lost the cache would
otherwise run, recomputing nothing and answering from a cache that never grows.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import onnx
import torch

from deploycheck.artifact import file_digest, package_versions
from deploycheck.errors import ArtifactError, ExportError
from deploycheck.formats import get_format
from deploycheck.formats.onnx import create_session
from deploycheck.formats.onnx_weight_only import OnnxWeightOnlyFormat, low_bit_weight_fraction, quantize_matmul_weights
from deploycheck.generation.cache import Decode, Prefill, cache_names, flat_cache
from deploycheck.generation.decoders import OnnxDecoder
from deploycheck.generation.spec import GenerativeSpec
from deploycheck.jsonio import write_json

SIDECAR = "deploycheck-generative.json"
GRAPHS = ("prefill.onnx", "decode.onnx")
PACKAGES = ("torch", "transformers", "onnx", "onnxscript", "onnxruntime")


def export_decoder(spec: GenerativeSpec, format_name: str, out_dir: Path, decode: type[Decode] = Decode) -> Path:
    """Export `spec`'s model as `format_name` ("onnx" or a weight-only ONNX format) into `out_dir` (new, or one of
    ours); returns the directory. `decode` wraps the model's decode step (a model whose step needs more than the
    cache and one token per row subclasses `Decode`)."""
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()) and not (out_dir / SIDECAR).is_file():
        raise ExportError(f"{spec.name}/{format_name}: {out_dir} is not empty and not a generative artifact; "
                          "refusing to write into it")
    out_dir.mkdir(parents=True, exist_ok=True)
    weight_only = None
    if format_name != "onnx":
        fmt = get_format(format_name)
        assert isinstance(fmt, OnnxWeightOnlyFormat)
        weight_only = fmt.settings_from(spec.options(format_name), f"{spec.name}/{format_name}")
    with tempfile.TemporaryDirectory(prefix="deploycheck-decoder-") as scratch:
        layers = _export_fp32(spec, Path(scratch), decode)
        for graph in GRAPHS:
            if weight_only is None:
                (out_dir / graph).write_bytes((Path(scratch) / graph).read_bytes())
            else:
                quantize_matmul_weights(Path(scratch) / graph, out_dir / graph, weight_only)
    files = {graph: {"sha256": file_digest(out_dir / graph), "size": (out_dir / graph).stat().st_size}
             for graph in GRAPHS}
    details: dict[str, Any] = {"format": format_name, "model": spec.name, "layers": layers, "files": files,
                               "size_bytes": sum(f["size"] for f in files.values()),
                               "versions": package_versions(PACKAGES)}
    if weight_only is not None:
        details["quantization"] = {**weight_only, "weights_only": True,
                                   "int8_weight_fraction": low_bit_weight_fraction(out_dir / "decode.onnx")}
    write_json(out_dir / SIDECAR, details)
    return out_dir


def _export_fp32(spec: GenerativeSpec, scratch: Path, decode: type[Decode]) -> int:
    """Both graphs, fp32, into `scratch`; returns the number of layers."""
    example = spec.prompts[:2].to(torch.int64)
    if len(example) < 2:
        example = example.repeat(2, 1)  # torch.export specialises a batch of 1
    with torch.inference_mode():
        out = spec.model(input_ids=example, use_cache=True)
    past = tuple(t.clone() for t in flat_cache(out.cache))
    layers = len(past) // 2
    step = out.logits[:, -1:].argmax(-1)
    dynamic = torch.export.Dim.DYNAMIC
    exports = (("prefill.onnx", Prefill(spec.model), (example,), ({0: dynamic, 1: dynamic},), ["input_ids"],
                cache_names(layers, "present")),
               ("decode.onnx", decode(spec.model), (step, *past), ({0: dynamic}, tuple([{0: dynamic, 2: dynamic}] *
                len(past))), ["input_ids", *cache_names(layers, "past")], cache_names(layers, "present")))
    for graph, module, args, shapes, inputs, present in exports:
        try:
            torch.onnx.export(module, args, str(scratch / graph), dynamo=True, dynamic_shapes=shapes,
                              input_names=inputs, output_names=["logits", *present], external_data=False,
                              verbose=False)
        except Exception as exc:  # the exporter's own error, named
            raise ExportError(f"{spec.name}/onnx: exporting the {graph.removesuffix('.onnx')} graph failed: "
                              f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from exc
        outputs = [o.name for o in onnx.load(str(scratch / graph), load_external_data=False).graph.output]
        if outputs != ["logits", *present]:
            raise ExportError(f"{spec.name}/onnx: the {graph} graph returns {outputs}, not logits and every "
                              "present.* tensor: the export lost the KV cache")
    return layers


def read_sidecar(path: Path) -> dict[str, Any]:
    """A generative artifact's sidecar, with each graph verified against its recorded hash."""
    sidecar = Path(path) / SIDECAR
    try:
        details: dict[str, Any] = json.loads(sidecar.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"{path}: not a generative artifact ({SIDECAR}: {exc})") from exc
    for graph, recorded in details["files"].items():
        if not (Path(path) / graph).is_file() or file_digest(Path(path) / graph) != recorded["sha256"]:
            raise ArtifactError(f"{path}/{graph}: missing or altered since export (sha256 differs); not loaded")
    return details


def load_decoder(path: Path, bound: bool = True, threads: int = 1) -> OnnxDecoder:
    """The verified artifact at `path` as a decoder (`bound`: the cache passed between steps with IOBinding)."""
    details = read_sidecar(path)
    sessions = [create_session(Path(path) / graph, intra_op_threads=threads, inter_op_threads=1) for graph in GRAPHS]
    label = f"{details['model']}/{details['format']}" + ("" if bound else " (cache copied)")
    return OnnxDecoder(sessions[0], sessions[1], int(details["layers"]), label, bound)
