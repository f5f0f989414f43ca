"""The generative formats: which exporter and loader each uses, by name, the export cache, and the trust check
before loading."""

from __future__ import annotations

import hashlib
import inspect
import json
import os
from pathlib import Path

from deploycheck.artifact import package_versions, staged_directory
from deploycheck.errors import ExportError
from deploycheck.exporting import model_fingerprint
from deploycheck.formats.base import quiet_exporters
from deploycheck.generation.aot_inductor_decoder import EXECUTES_CODE as COMPILED_CODE
from deploycheck.generation.aot_inductor_decoder import FORMATS as AOT_INDUCTOR_FORMATS
from deploycheck.generation.aot_inductor_decoder import AotInductorDecoder, export_aot_inductor_decoder
from deploycheck.generation.artifact import check_replaceable, check_trusted, read_sidecar, reusable, stamp_cache_key
from deploycheck.generation.cache import Decode
from deploycheck.generation.decoders import Decoder
from deploycheck.generation.executorch_decoder import FORMATS as EXECUTORCH_FORMATS
from deploycheck.generation.executorch_decoder import ExecuTorchDecoder, export_executorch_decoder
from deploycheck.generation.onnx_decoder import FORMATS as ONNX_FORMATS
from deploycheck.generation.onnx_decoder import export_onnx_decoder, load_onnx_decoder
from deploycheck.generation.openvino_decoder import FORMATS as OPENVINO_FORMATS
from deploycheck.generation.openvino_decoder import OpenVinoStatefulDecoder, export_openvino_decoder
from deploycheck.generation.spec import GENERATIVE_FORMATS, GenerativeSpec
from deploycheck.generation.torch_export_decoder import EXECUTES_CODE, TorchExportDecoder, export_torch_decoder
from deploycheck.generation.torch_export_decoder import FORMATS as TORCH_FORMATS
from deploycheck.signing import sign_artifact

EXPORT_VERSION = 1  # raised when what deploycheck writes for a generative format changes: older exports are redone


def export_decoder(spec: GenerativeSpec, format_name: str, out_dir: Path, decode: type[Decode] = Decode,
                   fp32_onnx: Path | None = None, sign_key: str | os.PathLike[str] | None = None) -> Path:
    """Export `spec`'s model as `format_name` into `out_dir` (new, or a generative artifact); returns the
    directory. An intact export there made from the same weights, code, options and library versions is reused
    (`cache_key`). `decode` wraps the model's decode step (a model whose step needs more than the cache and one
    token per row subclasses `Decode`); `fp32_onnx`, this model's `onnx` artifact, spares the ONNX weight-only
    formats a second export. The export is written beside `out_dir` and moved over it once whole and stamped
    (and signed with `sign_key`, an elliptic-curve private key, PEM), as a single-pass export is: one that fails or
    is killed leaves the previous artifact as it was."""
    out_dir = Path(out_dir)
    if format_name not in (*TORCH_FORMATS, *OPENVINO_FORMATS, *ONNX_FORMATS, *EXECUTORCH_FORMATS,
                           *AOT_INDUCTOR_FORMATS):
        raise ExportError(f"{spec.name}: no generative exporter for {format_name!r} (eager needs none); known: "
                          f"{', '.join(GENERATIVE_FORMATS)}")
    key = cache_key(spec, format_name, decode)
    if reusable(out_dir, key):
        if sign_key is not None:
            sign_artifact(out_dir, sign_key)
        return out_dir
    check_replaceable(out_dir, f"{spec.name}/{format_name}")
    with staged_directory(out_dir) as staging, quiet_exporters():  # their progress lines; errors still raise
        if format_name in TORCH_FORMATS:
            export_torch_decoder(spec, format_name, staging, decode)
        elif format_name in OPENVINO_FORMATS:
            export_openvino_decoder(spec, format_name, staging, decode)
        elif format_name in EXECUTORCH_FORMATS:
            export_executorch_decoder(spec, format_name, staging, decode)
        elif format_name in AOT_INDUCTOR_FORMATS:
            export_aot_inductor_decoder(spec, format_name, staging, decode)
        else:
            export_onnx_decoder(spec, format_name, staging, decode, fp32_onnx)
        stamp_cache_key(staging, key)
        if sign_key is not None:
            sign_artifact(staging, sign_key)
    return out_dir


def cache_key(spec: GenerativeSpec, format_name: str, decode: type[Decode]) -> str:
    """A digest of everything a generative export depends on: the spec's name (its sidecar records it), the weights
    and module code, the decode step's code, the format and its options, the versions of the libraries that write
    it, and `EXPORT_VERSION`."""
    try:
        step = inspect.getsource(decode)
    except (OSError, TypeError):
        step = f"{decode.__module__}.{decode.__qualname__}"
    description = {"name": spec.name, "model": model_fingerprint(spec.model), "decode": step, "format": format_name,
                   "options": dict(spec.options(format_name)), "export_version": EXPORT_VERSION,
                   "versions": package_versions(("torch", "transformers", "onnx", "onnxscript", "onnxruntime",
                                                 "openvino", "nncf", "torchao", "executorch"))}
    return hashlib.sha256(json.dumps(description, sort_keys=True, default=str).encode()).hexdigest()


def load_decoder(path: Path, bound: bool = True, threads: int = 1, trust_code: bool = False,
                 verify_key: Path | None = None) -> Decoder:
    """The verified artifact at `path` as a decoder (`bound`: ONNX Runtime passes the cache between steps with
    IOBinding). A `.pt2` artifact (an archive or a compiled package) loads only when trusted (see
    `deploycheck.generation.artifact`)."""
    details = read_sidecar(path)
    label = f"{details['model']}/{details['format']}"
    if details["format"] in TORCH_FORMATS:
        check_trusted(Path(path), label, EXECUTES_CODE, trust_code, verify_key)
        return TorchExportDecoder(Path(path), label, (details.get("quantization") or {}).get("backend"))
    if details["format"] in AOT_INDUCTOR_FORMATS:
        check_trusted(Path(path), label, COMPILED_CODE, trust_code, verify_key)
        return AotInductorDecoder(Path(path), label)
    if details["format"] in OPENVINO_FORMATS:
        return OpenVinoStatefulDecoder(Path(path), details, threads)
    if details["format"] in EXECUTORCH_FORMATS:
        return ExecuTorchDecoder(Path(path), details, threads)
    return load_onnx_decoder(Path(path), details, bound, threads)
