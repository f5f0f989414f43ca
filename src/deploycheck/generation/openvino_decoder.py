"""A decoder as one stateful OpenVINO model (`model.xml` + `model.bin`), as optimum-intel ships decoders: a single
step graph (any number of new tokens per row, on top of a cache of any length, zero included) exported through
ONNX, converted, and made stateful (`apply_make_stateful_transformation`: each `past.*` input and its `present.*`
output become one internal state that the infer request keeps between calls). Weights stay f32
(`compress_to_fp16=False`) and inference runs at f32 (`INFERENCE_PRECISION_HINT`), like the single-pass format;
`openvino_int8_weight` / `openvino_int4_weight` compress the stateful model's weights with NNCF exactly as the
single-pass formats of those names do (activations f32, on-the-fly activation quantization off).

The state belongs to the infer request, so a new sequence must start from an empty cache: `start_sequence` resets
the request's state and sets each one to an empty cache of the batch's size. A runner that skipped the reset would
answer a new prompt from the previous sequence's cache; the cache-consistency check catches that.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from deploycheck.errors import ExportError, FormatUnavailable, one_line
from deploycheck.formats import get_format
from deploycheck.formats.base import installed
from deploycheck.formats.openvino import PRECISION_HINT
from deploycheck.formats.openvino_weight_only import (
    NO_DYNAMIC_QUANTIZATION,
    OpenVinoWeightOnlyFormat,
    compress_ir_weights,
    compression_record,
)
from deploycheck.generation.artifact import write_sidecar
from deploycheck.generation.cache import Decode, cache_names, examples
from deploycheck.generation.spec import GenerativeSpec

FILES = ("model.xml", "model.bin")
FORMATS = ("openvino", "openvino_int8_weight", "openvino_int4_weight")
PACKAGES = ("torch", "transformers", "onnx", "onnxscript", "openvino")


def export_openvino_decoder(spec: GenerativeSpec, format_name: str, out_dir: Path, decode: type[Decode]) -> Path:
    """`spec`'s model as `format_name` (one of `FORMATS`: the weight-only ones compress the stateful model's
    weights with NNCF, as the single-pass formats of the same names do)."""
    label = f"{spec.name}/{format_name}"
    packages = ("openvino",) if format_name == "openvino" else ("openvino", "nncf")
    if not all(installed(package) for package in packages):
        raise FormatUnavailable(f"{label}: needs {' and '.join(packages)}: pip install 'deploycheck[openvino]'")
    import openvino as ov
    from openvino._offline_transformations import apply_make_stateful_transformation

    compression = None
    if format_name != "openvino":
        fmt = get_format(format_name)
        assert isinstance(fmt, OpenVinoWeightOnlyFormat)
        compression = fmt.settings_from(spec.options(format_name), label)
    _, _, past = examples(spec.model, spec.prompts)
    layers = len(past) // 2
    tokens = spec.prompts[:2, :3].to(torch.int64).repeat(2 // len(spec.prompts[:2]), 1)  # several new tokens
    dynamic = torch.export.Dim.DYNAMIC
    with tempfile.TemporaryDirectory(prefix="deploycheck-decoder-") as scratch:
        step = Path(scratch) / "step.onnx"
        try:
            torch.onnx.export(decode(spec.model), (tokens, *past), str(step), dynamo=True,
                              dynamic_shapes=({0: dynamic, 1: dynamic}, tuple([{0: dynamic, 2: dynamic}] * len(past))),
                              input_names=["input_ids", *cache_names(layers, "past")],
                              output_names=["logits", *cache_names(layers, "present")], external_data=False,
                              verbose=False)
        except Exception as exc:
            raise ExportError(f"{label}: exporting the step graph failed: {one_line(exc)}") from exc
        model = ov.convert_model(str(step))
    apply_make_stateful_transformation(model, dict(zip(cache_names(layers, "past"), cache_names(layers, "present"))))
    details: dict[str, Any] = {"format": format_name, **spec.described(), "layers": layers,
                               "kv_heads": int(past[0].shape[1]), "head_size": int(past[0].shape[3]),
                               "precision": dict([PRECISION_HINT])}
    if compression is not None:
        model = compress_ir_weights(model, compression)
        details["quantization"] = compression_record(model, compression)
        details["precision"] = dict([PRECISION_HINT, NO_DYNAMIC_QUANTIZATION])
    ov.save_model(model, str(out_dir / "model.xml"), compress_to_fp16=False)
    write_sidecar(out_dir, FILES, (*PACKAGES, *(("nncf",) if compression else ())), details)
    return out_dir


class OpenVinoStatefulDecoder:
    """One infer request of the stateful model; the state object handed between steps is the request itself."""

    def __init__(self, path: Path, details: dict[str, Any], threads: int, compiled: Any = None) -> None:
        import openvino as ov

        config = {**details.get("precision", {}), "PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": threads}
        self.path, self.details, self.threads = Path(path), details, threads
        self.compiled = compiled or ov.Core().compile_model(str(Path(path) / "model.xml"), "CPU", config)
        self.request = self.compiled.create_infer_request()
        self.tensor = ov.Tensor
        self.empty = (int(details["kv_heads"]), 0, int(details["head_size"]))
        self.label = f"{details['model']}/{details['format']}"

    def sibling(self) -> OpenVinoStatefulDecoder:
        """Another infer request of the same compiled model: its own state, the weights shared."""
        return type(self)(self.path, self.details, self.threads, self.compiled)

    def start_sequence(self, batch: int) -> None:
        """An empty cache of `batch` rows in every state (a reset alone leaves a batch of 0)."""
        self.request.reset_state()
        for state in self.request.query_state():
            state.state = self.tensor(np.zeros((batch, *self.empty), dtype=np.float32))

    def prefill(self, input_ids: np.ndarray) -> tuple[np.ndarray, Any]:
        self.start_sequence(len(input_ids))
        return self._infer(input_ids), self.request

    def decode(self, input_ids: np.ndarray, state: Any) -> tuple[np.ndarray, Any]:
        return self._infer(input_ids), state

    def _infer(self, input_ids: np.ndarray) -> np.ndarray:
        self.request.set_input_tensor(0, self.tensor(np.ascontiguousarray(input_ids, dtype=np.int64)))
        self.request.infer()
        logits: np.ndarray = self.request.get_output_tensor(0).data.copy()
        return logits
