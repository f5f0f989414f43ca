"""Per-layer quantization error: `explain_quantization` and the engines behind it (each format names its engine
in `Format.explanation`).

All three compare the quantized model with its fp32 form on the same real inputs and report, per layer, the SQNR
of its output (10·log10(signal power / error power), in dB; lower is worse), listed worst first.
"""

from __future__ import annotations

import copy
import math
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from deploycheck.errors import DeployCheckError, SpecError
from deploycheck.exporting import export
from deploycheck.formats import format_names, get_format
from deploycheck.formats.base import quiet_exporters
from deploycheck.formats.onnx import MODEL_FILE
from deploycheck.formats.onnx_int8_static import calibration_feeds, feed_reader, pre_process
from deploycheck.formats.torch_int8_dynamic import quantize_linear_layers
from deploycheck.table import format_table

if TYPE_CHECKING:
    from deploycheck.artifact import Artifact
    from deploycheck.spec import ModelSpec


def sqnr_db(reference: np.ndarray, obtained: np.ndarray) -> float:
    reference = np.asarray(reference, np.float64)
    noise = float(np.sum((reference - np.asarray(obtained, np.float64)) ** 2))
    signal = float(np.sum(reference**2))
    if noise == 0:
        return math.inf
    return 10 * math.log10(signal / noise) if signal > 0 else -math.inf


def fp32_onnx_path(artifact: Artifact, spec: ModelSpec) -> Path:
    """The fp32 ONNX model an int8 ONNX artifact was quantized from (re-exported from the cache if moved)."""
    default = artifact.path.with_name(f"{artifact.path.name}.onnx")
    recorded = Path(artifact.metadata.get("base", {}).get("path", default))
    return export(spec, "onnx", recorded).path / MODEL_FILE


INPUT_ELEMENTS = 2**18  # inputs fed to an explanation; every intermediate activation of them is kept in memory


def _feeds(spec: ModelSpec, batches: int) -> list[dict[str, np.ndarray]]:
    """The first `batches` calibration batches, cut to at most `INPUT_ELEMENTS` input values (at least one row):
    the debugging helpers keep every intermediate activation (MobileNetV2: ~100 MB per 224x224 image, for the
    fp32 and the quantized model), so a vision model is explained on one image, the digits CNN on 256."""
    feeds: list[dict[str, np.ndarray]] = []
    total = 0
    for feed in calibration_feeds(spec)[:batches]:
        rows = len(next(iter(feed.values())))
        per_row = sum(array[:1].size for array in feed.values())
        fits = (INPUT_ELEMENTS - total) // per_row
        if not feeds:
            fits = max(1, fits)
        elif fits <= 0:
            break
        feeds.append({name: array[:fits] for name, array in feed.items()})
        total += min(rows, fits) * per_row
    return feeds


def _producers(model_path: Path) -> tuple[dict[str, str], dict[str, str]]:
    """Maps of tensor name -> the node producing it, and initializer name -> the node consuming it."""
    import onnx

    model = onnx.load(str(model_path))
    produced = {output: node.name for node in model.graph.node for output in node.output}
    initializers = {i.name for i in model.graph.initializer}
    consumed = {name: node.name for node in model.graph.node for name in node.input if name in initializers}
    return produced, consumed


def explain_qdq(artifact: Artifact, spec: ModelSpec, batches: int) -> QuantizationExplanation:
    """ONNX Runtime's `qdq_loss_debug` on the QDQ model and its pre-processed fp32 model.

    Layers are ranked by the error their own quantize/dequantize pair adds (before vs after QDQ, per channel),
    so the layer where the error starts comes before the layers that merely inherit it; the SQNR against the
    fp32 model's tensor is shown beside it."""
    from onnxruntime.quantization.qdq_loss_debug import (
        collect_activations,
        create_activation_matching,
        create_weight_matching,
        modify_model_output_intermediate_tensors,
    )

    with tempfile.TemporaryDirectory(prefix="deploycheck-explain-") as scratch, quiet_exporters():
        float_model = Path(scratch) / "float.onnx"
        pre_process(fp32_onnx_path(artifact, spec), float_model)
        qdq_model = _scratch_copy(artifact.path, Path(scratch) / "qdq") / MODEL_FILE
        float_augmented, qdq_augmented = Path(scratch) / "float_aug.onnx", Path(scratch) / "qdq_aug.onnx"
        modify_model_output_intermediate_tensors(str(float_model), str(float_augmented))
        modify_model_output_intermediate_tensors(str(qdq_model), str(qdq_augmented))
        feeds = _feeds(spec, batches)
        float_activations = collect_activations(str(float_augmented), feed_reader(feeds))
        qdq_activations = collect_activations(str(qdq_augmented), feed_reader(feeds))
        matching = create_activation_matching(qdq_activations, float_activations)
        # our own SQNR per weight: ONNX Runtime's compute_weight_error fails on a 0-d weight (a transformer's
        # scalar constants: "object of type 'numpy.float32' has no len()")
        weight_error = {name: sqnr_db(np.ravel(pair["float"]), np.ravel(pair["dequantized"]))
                        for name, pair in create_weight_matching(str(float_model), str(qdq_model)).items()
                        if "float" in pair and "dequantized" in pair}
        produced, consumed = _producers(qdq_model)
        float_produced, float_consumers = _producers(float_model)
        activations = _activation_bounds(float_model)
    weights_by_node = {(consumed.get(name) or float_consumers.get(name)): float(error)
                       for name, error in weight_error.items()}
    layers = []
    for tensor, pair in matching.items():
        if "pre_qdq" not in pair or "post_qdq" not in pair:
            continue
        node = produced.get(tensor, "")
        if not node or node.endswith("_DequantizeLinear"):
            node = float_produced.get(tensor, tensor)
        pre = pair["pre_qdq"]
        if tensor in activations:  # the activation was folded into the quantization range: apply it
            low, high = activations[tensor]
            pre = [np.clip(np.asarray(a), low, high) for a in pre]
        rows = [len(next(iter(feed.values()))) for feed in feeds]
        post = _by_row(pair["post_qdq"], rows)
        local = channel_median_sqnr_db(_by_row(pre, rows), post)
        versus_float = channel_median_sqnr_db(_by_row(pair["float"], rows), post) if "float" in pair else None
        layers.append(LayerError(node, tensor, local, weights_by_node.get(node), versus_float))
    layers.sort(key=layer_sort_key)
    return QuantizationExplanation(spec.name, artifact.format, "onnxruntime qdq_loss_debug", layers)


def _activation_bounds(model_path: Path) -> dict[str, tuple[float, float]]:
    """The output tensors of the model's Relu and Clip nodes, with the range each clips to. ONNX Runtime folds
    such an activation into the quantization range of the layer before it, so in the quantized model the tensor
    before `QuantizeLinear` is that layer's raw output: the activation's clipping must be applied to it before
    comparing, or it counts as quantization error (every ReLU-fused convolution then ranked at ~3 dB)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(model_path))
    constants = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    constants.update({node.output[0]: numpy_helper.to_array(node.attribute[0].t) for node in model.graph.node
                      if node.op_type == "Constant" and node.attribute and node.attribute[0].type == 4})

    def bound(node: Any, position: int, default: float) -> float:
        name = node.input[position] if len(node.input) > position else ""
        return float(constants[name]) if name in constants else default

    bounds = {}
    for node in model.graph.node:
        if node.op_type == "Relu":
            bounds[node.output[0]] = (0.0, math.inf)
        elif node.op_type == "Clip":
            bounds[node.output[0]] = (bound(node, 1, -math.inf), bound(node, 2, math.inf))
    return bounds


def _by_row(arrays: list[np.ndarray], rows: list[int]) -> list[np.ndarray]:
    """Activations as ONNX Runtime's debugging helpers return them (one flat array per batch) reshaped to
    (rows, values per row), so that per-channel statistics see channels (the units of a dense layer) rather
    than one flat vector dominated by its largest values; a batch of one row stays flat (whole-tensor SQNR)."""
    return [np.asarray(a).reshape(count, -1) if np.ndim(a) == 1 and count > 1 and np.size(a) % count == 0
            else np.asarray(a) for a, count in zip(arrays, rows)]


def channel_median_sqnr_db(reference: list[np.ndarray], obtained: list[np.ndarray]) -> float:
    """The median over channels (axis 1) of each channel's SQNR.

    A whole-tensor SQNR is dominated by the largest values: a layer whose few huge outliers set the int8 scale,
    crushing every other channel to zero, still scores well on it. Per channel, the crushed channels show.
    """
    ref = np.concatenate([np.asarray(a, np.float64) for a in reference])
    got = np.concatenate([np.asarray(a, np.float64) for a in obtained])
    if ref.ndim < 2:
        return sqnr_db(ref, got)
    ref, got = np.moveaxis(ref, 1, 0).reshape(ref.shape[1], -1), np.moveaxis(got, 1, 0).reshape(got.shape[1], -1)
    signal, noise = (ref**2).sum(axis=1), ((ref - got) ** 2).sum(axis=1)
    live = signal > 0  # a channel that is all zeros says nothing
    if not live.any():
        return math.inf
    with np.errstate(divide="ignore"):
        values = 10 * np.log10(signal[live] / noise[live])  # +inf where a channel came through exactly
    return float(np.median(values))


def _scratch_copy(directory: Path, target: Path) -> Path:
    """A copy of an artifact directory to work on: ONNX Runtime's debugging helpers write files (such as
    `model-inferred.onnx`) beside the model they read, and an artifact must stay exactly as exported."""
    shutil.copytree(directory, target)
    return target


def explain_onnx_by_name(artifact: Artifact, spec: ModelSpec, batches: int) -> QuantizationExplanation:
    """Every intermediate tensor that the fp32 and the quantized ONNX models share by name, compared."""
    from onnxruntime.quantization.qdq_loss_debug import collect_activations, modify_model_output_intermediate_tensors

    with tempfile.TemporaryDirectory(prefix="deploycheck-explain-") as scratch, quiet_exporters():
        float_model = _scratch_copy(fp32_onnx_path(artifact, spec).parent, Path(scratch) / "float") / MODEL_FILE
        quant_model = _scratch_copy(artifact.path, Path(scratch) / "quant") / MODEL_FILE
        float_augmented, quant_augmented = Path(scratch) / "float_aug.onnx", Path(scratch) / "quant_aug.onnx"
        modify_model_output_intermediate_tensors(str(float_model), str(float_augmented))
        modify_model_output_intermediate_tensors(str(quant_model), str(quant_augmented))
        float_activations = collect_activations(str(float_augmented), feed_reader(_feeds(spec, batches)))
        quant_activations = collect_activations(str(quant_augmented), feed_reader(_feeds(spec, batches)))
        produced, _ = _producers(float_model)
    layers = []
    for tensor in float_activations.keys() & quant_activations.keys():
        reference = np.concatenate([np.ravel(a) for a in float_activations[tensor]])
        obtained = np.concatenate([np.ravel(a) for a in quant_activations[tensor]])
        if reference.shape == obtained.shape and np.issubdtype(reference.dtype, np.floating):
            layers.append(LayerError(produced.get(tensor, tensor), tensor, sqnr_db(reference, obtained)))
    layers.sort(key=layer_sort_key)
    return QuantizationExplanation(spec.name, artifact.format, "intermediate tensors matched by name", layers)


def explain_torch(artifact: Artifact, spec: ModelSpec, batches: int) -> QuantizationExplanation:
    """Forward hooks on every leaf module of the eager model and of the same model quantized in-process with the
    artifact's recorded backend; each module's output is compared on the calibration inputs."""
    import torch

    backend = artifact.metadata.get("quantization", {}).get("backend")
    quantized = copy.deepcopy(spec.flat_model).eval()
    if backend is not None:
        quantized, backend = quantize_linear_layers(spec.flat_model, backend)

    def record_into(store: dict[str, list[np.ndarray]], name: str) -> Any:
        def hook(module: Any, inputs: Any, output: Any) -> None:
            if isinstance(output, torch.Tensor):
                store.setdefault(name, []).append(output.detach().float().numpy().ravel())
        return hook

    stores: list[dict[str, list[np.ndarray]]] = [{}, {}]
    handles = []
    for store, model in zip(stores, (spec.flat_model.model, quantized.model)):  # the user's module names
        for name, module in model.named_modules():
            if name and not list(module.children()):
                handles.append(module.register_forward_hook(record_into(store, name)))
    try:
        with torch.no_grad():
            for batch in list(spec.calibration_data or [])[:batches]:
                spec.flat_model(*batch)
                quantized(*batch)
    finally:
        for handle in handles:
            handle.remove()
    reference, obtained = stores
    layers = [LayerError(name, name, sqnr_db(np.concatenate(reference[name]), np.concatenate(obtained[name])))
              for name in reference if name in obtained]
    layers.sort(key=layer_sort_key)
    return QuantizationExplanation(spec.name, artifact.format, f"forward hooks ({backend or 'fp32'})", layers)


@dataclass
class LayerError:
    """Quantization error of one layer: SQNR in dB (higher is better) of its output, and of its weight."""

    node: str
    tensor: str
    activation_sqnr_db: float
    weight_sqnr_db: float | None = None
    versus_float_sqnr_db: float | None = None


@dataclass
class QuantizationExplanation:
    """Per-layer quantization error, worst layer first."""

    model: str
    format: str
    method: str
    layers: list[LayerError]

    def worst_nodes(self, count: int) -> list[str]:
        return [layer.node for layer in self.layers[:count]]

    def __str__(self, limit: int = 10) -> str:
        def db(value: float | None) -> str:
            return "" if value is None else f"{value:.1f}"

        rows = [[layer.node, layer.tensor, db(layer.activation_sqnr_db), db(layer.versus_float_sqnr_db),
                 db(layer.weight_sqnr_db)] for layer in self.layers[:limit]]
        return (f"where the error comes from ({self.model}/{self.format}, {self.method}; lowest SQNR first):\n"
                + format_table(["layer", "output tensor", "activation SQNR dB", "vs fp32 model dB", "weight SQNR dB"],
                               rows))


def explain_quantization(artifact: Artifact, spec: ModelSpec | None = None,
                         batches: int = 4) -> QuantizationExplanation:
    """Per-layer quantization error of an int8 artifact against its fp32 form, worst first.

    `onnx_int8_static` uses ONNX Runtime's `qdq_loss_debug` (activation SQNR of every quantized tensor against the
    fp32 model on the same calibration inputs, and weight SQNR); `onnx_int8_dynamic` compares every intermediate
    tensor the two ONNX models share by name; torch formats compare each module's output through forward hooks.
    """
    spec = spec or artifact.spec
    if spec is None:
        raise SpecError(f"{artifact!r} has no spec; pass spec= (its data feeds the comparison)")
    name = get_format(artifact.format).explanation or ""
    engine = ENGINES.get(name)
    if engine is None:
        raise DeployCheckError(f"{artifact.model_name}/{artifact.format}: this format has no per-layer quantization "
                               f"explanation (formats with one: {', '.join(explained_formats())})")
    try:
        return engine(artifact, spec, batches)
    except Exception as exc:  # a debugging helper that cannot handle this graph: compare what can be compared
        if name != "qdq":
            raise
        fallback = explain_onnx_by_name(artifact, spec, batches)
        fallback.method += f" (onnxruntime qdq_loss_debug failed on this graph: {type(exc).__name__}: {exc})"
        return fallback


def layer_sort_key(layer: LayerError) -> float:
    return layer.activation_sqnr_db if math.isfinite(layer.activation_sqnr_db) else math.inf


ENGINES: dict[str, Callable[[Artifact, ModelSpec, int], QuantizationExplanation]] = {
    "qdq": explain_qdq, "onnx_by_name": explain_onnx_by_name, "torch_hooks": explain_torch}


def explained_formats() -> list[str]:
    """The formats whose `Format.explanation` names an engine."""
    return [name for name in format_names() if get_format(name).explanation in ENGINES]
