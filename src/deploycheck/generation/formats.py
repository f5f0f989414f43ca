"""The generative formats: which exporter and loader each uses, by name, and the trust check before loading."""

from __future__ import annotations

from pathlib import Path

from deploycheck.errors import ExportError
from deploycheck.generation.artifact import check_trusted, read_sidecar
from deploycheck.generation.cache import Decode
from deploycheck.generation.decoders import Decoder
from deploycheck.generation.onnx_decoder import FORMATS as ONNX_FORMATS
from deploycheck.generation.onnx_decoder import export_onnx_decoder, load_onnx_decoder
from deploycheck.generation.openvino_decoder import FORMATS as OPENVINO_FORMATS
from deploycheck.generation.openvino_decoder import OpenVinoStatefulDecoder, export_openvino_decoder
from deploycheck.generation.spec import GENERATIVE_FORMATS, GenerativeSpec
from deploycheck.generation.torch_export_decoder import EXECUTES_CODE, TorchExportDecoder, export_torch_decoder


def export_decoder(spec: GenerativeSpec, format_name: str, out_dir: Path, decode: type[Decode] = Decode,
                   fp32_onnx: Path | None = None) -> Path:
    """Export `spec`'s model as `format_name` into `out_dir` (new, or a generative artifact); returns the
    directory. `decode` wraps the model's decode step (a model whose step needs more than the cache and one token
    per row subclasses `Decode`); `fp32_onnx`, this model's `onnx` artifact, spares the ONNX weight-only formats
    a second export."""
    if format_name == "torch_export":
        return export_torch_decoder(spec, Path(out_dir), decode)
    if format_name in OPENVINO_FORMATS:
        return export_openvino_decoder(spec, format_name, Path(out_dir), decode)
    if format_name in ONNX_FORMATS:
        return export_onnx_decoder(spec, format_name, Path(out_dir), decode, fp32_onnx)
    raise ExportError(f"{spec.name}: no generative exporter for {format_name!r} (eager needs none); known: "
                      f"{', '.join(GENERATIVE_FORMATS)}")


def load_decoder(path: Path, bound: bool = True, threads: int = 1, trust_code: bool = False,
                 verify_key: Path | None = None) -> Decoder:
    """The verified artifact at `path` as a decoder (`bound`: ONNX Runtime passes the cache between steps with
    IOBinding). A `.pt2` artifact loads only when trusted (see `deploycheck.generation.artifact`)."""
    details = read_sidecar(path)
    label = f"{details['model']}/{details['format']}"
    if details["format"] == "torch_export":
        check_trusted(Path(path), label, EXECUTES_CODE, trust_code, verify_key)
        return TorchExportDecoder(Path(path), label)
    if details["format"] in OPENVINO_FORMATS:
        return OpenVinoStatefulDecoder(Path(path), details, threads)
    return load_onnx_decoder(Path(path), details, bound, threads)
