"""`executorch_int8`: the model quantized by ExecuTorch's XNNPACK quantizer (PT2E static quantization: int8
weights, per channel by default, and int8 activations calibrated on the spec's calibration batches, the same ones
`onnx_int8_static` and `openvino_int8` calibrate on), then lowered like `executorch`.

Settings from `format_options["executorch_int8"]`: `per_channel` (default True) and `max_batch` (as for
`executorch`); recorded in the metadata. An optional extra: `pip install 'deploycheck[executorch]'` (executorch,
which brings torchao's PT2E quantization with it).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from deploycheck.artifact import Runner
from deploycheck.errors import FormatUnavailable
from deploycheck.formats.base import Format, Precision, dynamic_shapes, require_packages
from deploycheck.formats.executorch import load_pte, lower_to_pte, max_batch
from deploycheck.tolerance import INT8_TOLERANCE

if TYPE_CHECKING:
    import torch

    from deploycheck.artifact import Artifact
    from deploycheck.spec import ModelSpec


def quantizer_settings(spec: ModelSpec) -> dict[str, Any]:
    options = spec.options("executorch_int8")
    return {"per_channel": bool(options.get("per_channel", True)), "max_batch": max_batch(spec, "executorch_int8")}


def int8_weight_fraction(module: torch.fx.GraphModule) -> float:
    """The share of the weight elements a converted graph reads (tensors of more than one element, excluding
    quantization parameters) stored as int8. Only what the graph reads: conversion leaves the fp32 originals of
    the quantized weights on the module, unused."""
    import torch

    read = {node.target for node in module.graph.nodes if node.op == "get_attr"}
    tensors = [t for name, t in [*module.named_parameters(), *module.named_buffers()]
               if name in read and t.numel() > 1 and t.dtype in (torch.int8, torch.float32, torch.float16)
               and not name.startswith(("_scale", "_zero_point"))]
    total = sum(t.numel() for t in tensors)
    return sum(t.numel() for t in tensors if t.dtype == torch.int8) / total if total else 0.0


def calibrate(prepared: Any, captured: Any, batches: list[Any], spec: ModelSpec) -> None:
    """Run the calibration batches through the observed graph. When the graph runs as captured but not once
    prepared, PT2E's preparation broke it (torchao 0.18's `prepare_pt2e` does so on Hugging Face BERT's
    attention-mask indexing, even with nothing to quantize): the format is unavailable for this model, said
    with the cause, rather than a failure of the model."""
    for index, batch in enumerate(batches):
        try:
            prepared(*batch)
        except Exception as exc:
            try:
                captured(*batch)
            except Exception:
                raise exc from None
            raise FormatUnavailable(
                f"{spec.name}/executorch_int8: PT2E preparation (torchao's prepare_pt2e) breaks this model's graph: "
                f"calibration batch {index} fails with {type(exc).__name__}: {exc}, which the graph as captured "
                "runs; the fp32 executorch format is not affected") from exc


class ExecuTorchInt8Format(Format):
    name = "executorch_int8"
    precision = Precision(weights="int8", compute="int8 (XNNPACK)", activations="int8, calibrated ranges")
    default_tolerance = INT8_TOLERANCE
    packages = ("torch", "executorch", "torchao")
    servable = True
    platform = "executorch"

    def check_supported(self, spec: ModelSpec) -> None:
        require_packages(spec, self.name, ("executorch", "torchao"), "executorch")

    def cache_inputs(self, spec: ModelSpec) -> list[Any]:
        assert spec.calibration_data is not None
        return [*(t for batch in spec.calibration_data for t in batch), quantizer_settings(spec)]

    def export(self, spec: ModelSpec, out_dir: Path, base: Artifact | None) -> dict[str, Any]:
        import torch
        from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
            XNNPACKQuantizer,
            get_symmetric_quantization_config,
        )
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

        assert spec.calibration_data is not None
        batches = list(spec.calibration_data)
        settings = quantizer_settings(spec)
        config = get_symmetric_quantization_config(is_per_channel=settings["per_channel"])
        quantizer = XNNPACKQuantizer().set_global(config)
        # captured with the unbounded batch, so that calibration batches of any size run through it
        captured = torch.export.export(spec.flat_model, spec.example_inputs, dynamic_shapes=dynamic_shapes(spec))
        prepared = prepare_pt2e(captured.module(), quantizer)
        with torch.no_grad():
            calibrate(prepared, captured.module(), batches, spec)
        converted = convert_pt2e(prepared)
        lowered, counters = lower_to_pte(converted, spec, out_dir, self.name)
        return {"settings": lowered, "counters": counters, "quantization": {
            "tool": "XNNPACKQuantizer (PT2E)", "scheme": "int8 weights and activations, symmetric",
            "per_channel": settings["per_channel"], "calibration_batches": len(batches),
            "calibration_samples": int(sum(len(batch[0]) for batch in batches)),
            "int8_weight_fraction": int8_weight_fraction(converted)}}

    def load(self, path: Path, metadata: dict[str, Any], spec: ModelSpec | None, **runtime: Any) -> Runner:
        return load_pte(path, metadata, **runtime)
