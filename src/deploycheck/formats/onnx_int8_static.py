"""`onnx_int8_static`: `quant_pre_process`, then `quantize_static` in QDQ form, per-channel by default, calibrated
on the spec's calibration data (real inputs, not random ones).

Settings come from `format_options["onnx_int8_static"]`: `calibrate_method` (MinMax, Entropy, Percentile,
Distribution), `per_channel`, `activation_type` / `weight_type` (QInt8, QUInt8), `nodes_to_exclude`, and
`extra_options` passed through to ONNX Runtime. All of them are recorded in the metadata.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from deploycheck.artifact import Runner
from deploycheck.errors import ExportError
from deploycheck.formats.base import Format, Precision
from deploycheck.formats.onnx import (
    MODEL_FILE,
    OnnxRunner,
    create_session,
    int8_weight_fraction,
    onnx_costs,
    opset_of,
)
from deploycheck.tolerance import INT8_TOLERANCE

if TYPE_CHECKING:
    from deploycheck.artifact import Artifact
    from deploycheck.spec import ModelSpec

CALIBRATION_METHODS = ("MinMax", "Entropy", "Percentile", "Distribution")


def static_settings(spec: ModelSpec) -> dict[str, Any]:
    """The quantization settings in force for a spec, defaults filled in."""
    options = spec.options("onnx_int8_static")
    settings = {
        "calibrate_method": str(options.get("calibrate_method", "MinMax")),
        "per_channel": bool(options.get("per_channel", True)),
        "activation_type": str(options.get("activation_type", "QInt8")),
        "weight_type": str(options.get("weight_type", "QInt8")),
        "nodes_to_exclude": sorted(options.get("nodes_to_exclude", [])),
        "extra_options": dict(options.get("extra_options", {})),
    }
    if settings["calibrate_method"] not in CALIBRATION_METHODS:
        raise ExportError(f"{spec.name}/onnx_int8_static: calibrate_method {settings['calibrate_method']!r} is not "
                          f"one of {', '.join(CALIBRATION_METHODS)}")
    return settings


def calibration_feeds(spec: ModelSpec) -> list[dict[str, np.ndarray]]:
    """The spec's calibration batches as ONNX Runtime feeds."""
    assert spec.input_names is not None and spec.calibration_data is not None
    return [{name: tensor.detach().cpu().numpy() for name, tensor in zip(spec.input_names, batch)}
            for batch in spec.calibration_data]


def feed_reader(feeds: list[dict[str, np.ndarray]]) -> Any:
    """An ONNX Runtime `CalibrationDataReader` that hands out `feeds` once, in order."""
    from onnxruntime.quantization import CalibrationDataReader

    class FeedReader(CalibrationDataReader):  # type: ignore[misc]
        def __init__(self) -> None:
            self.remaining = iter(feeds)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.remaining, None)

    return FeedReader()


def pre_process(fp32_model: Path, output: Path) -> None:
    """ONNX Runtime's pre-processing for static quantization (shape inference, graph optimisation).
    `auto_merge` and `guess_output_rank`: without them symbolic shape inference gives up on graphs with a dynamic
    sequence axis (attention), and the failed attempt leaves a stray external-data file in the working directory."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    quant_pre_process(str(fp32_model), str(output), auto_merge=True, guess_output_rank=True)


def quantize_static_qdq(fp32_model: Path, output: Path, feeds: list[dict[str, np.ndarray]],
                        settings: dict[str, Any]) -> None:
    """Pre-process then statically quantize an fp32 ONNX model to QDQ int8 with the given settings."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    with tempfile.TemporaryDirectory(prefix="deploycheck-qdq-") as scratch:
        preprocessed = Path(scratch) / "preprocessed.onnx"
        pre_process(fp32_model, preprocessed)
        quantize_static(str(preprocessed), str(output), feed_reader(feeds), quant_format=QuantFormat.QDQ,
                        per_channel=settings["per_channel"],
                        activation_type=QuantType[settings["activation_type"]],
                        weight_type=QuantType[settings["weight_type"]],
                        calibrate_method=CalibrationMethod[settings["calibrate_method"]],
                        nodes_to_exclude=settings["nodes_to_exclude"],
                        extra_options=settings["extra_options"] or None)


# ONNX Runtime's calibrations `deploycheck quantize` tries, each per channel and per tensor
CALIBRATIONS: tuple[dict[str, Any], ...] = (
    {"calibrate_method": "MinMax"},
    {"calibrate_method": "Entropy"},
    {"calibrate_method": "Percentile"},
    {"calibrate_method": "Percentile", "extra_options": {"CalibPercentile": 99.99}},
    {"calibrate_method": "Percentile", "extra_options": {"CalibPercentile": 99.9}},
    # A16W8: 16-bit activations (an outlier no longer crushes the other channels' int8 steps), int8 weights
    {"calibrate_method": "MinMax", "activation_type": "QInt16"},
)


class OnnxInt8StaticFormat(Format):
    name = "onnx_int8_static"
    precision = Precision(weights="int8", compute="int8", activations="int8, calibrated ranges (QDQ)")
    base_format = "onnx"
    default_tolerance = INT8_TOLERANCE
    packages = ("torch", "onnx", "onnxscript", "onnxruntime")
    servable = True
    platform = "onnxruntime_onnx"
    explanation = "qdq"
    int8_search_space = tuple({**calibration, "per_channel": per_channel}
                              for calibration in CALIBRATIONS for per_channel in (True, False))

    def cache_inputs(self, spec: ModelSpec) -> list[Any]:
        return [*calibration_feeds(spec), static_settings(spec)]

    def export(self, spec: ModelSpec, out_dir: Path, base: Artifact | None) -> dict[str, Any]:
        assert base is not None
        settings = static_settings(spec)
        feeds = calibration_feeds(spec)
        quantize_static_qdq(base.path / MODEL_FILE, out_dir / MODEL_FILE, feeds, settings)
        return {"opset": opset_of(out_dir / MODEL_FILE), "counters": onnx_costs(out_dir / MODEL_FILE),
                "quantization": {"tool": "onnxruntime.quantization.quantize_static", "quant_format": "QDQ",
                                 "calibration_batches": len(feeds),
                                 "calibration_samples": int(sum(len(next(iter(f.values()))) for f in feeds)),
                                 "int8_weight_fraction": int8_weight_fraction(out_dir / MODEL_FILE), **settings}}

    def load(self, path: Path, metadata: dict[str, Any], spec: ModelSpec | None, **runtime: Any) -> Runner:
        return OnnxRunner(create_session(path / MODEL_FILE, **runtime))
