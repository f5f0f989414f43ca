"""`openvino_int8`: the `openvino` IR quantized by NNCF's post-training quantization, calibrated on the spec's
calibration data: the same batches `onnx_int8_static` calibrates on, fed whole (NNCF averages each item's
min/max, so single rows would clip the ranges: on the `deploycheck init` model that cost 4.7 points of accuracy
against 0.4 with batches). Settings from `format_options["openvino_int8"]`: `preset` ("performance":
symmetric, or "mixed"), `fast_bias_correction` (default True; False runs NNCF's full bias correction, slower),
`model_type` ("transformer": NNCF's transformer patterns, and SmoothQuant on MatMuls at its default alpha 0.95) and
`smooth_quant_alpha` (0..1, implies "transformer"; a negative alpha turns SmoothQuant off). SmoothQuant moves an
activation outlier's range into the weights of the MatMul it feeds (per input channel, by scales^alpha), so int8
activations stop paying for one channel's range. All recorded in the metadata.

An optional extra: `pip install 'deploycheck[openvino]'` (openvino and nncf).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from deploycheck.artifact import Runner
from deploycheck.errors import ExportError
from deploycheck.formats.base import Format, Precision, require_packages
from deploycheck.formats.onnx_int8_static import calibration_feeds
from deploycheck.formats.openvino import (
    IR_FILE,
    PRECISION_HINT,
    OpenVinoRunner,
    compile_ir,
    low_bit_weight_fraction,
    openvino_costs,
)
from deploycheck.tolerance import INT8_TOLERANCE

if TYPE_CHECKING:
    from deploycheck.artifact import Artifact
    from deploycheck.spec import ModelSpec

PRESETS = ("performance", "mixed")
MODEL_TYPES = (None, "transformer")
SMOOTH_QUANT_ALPHAS = (None, 0.5, 0.75, 0.95)  # what `deploycheck quantize` tries; None: no SmoothQuant


def nncf_settings(spec: ModelSpec) -> dict[str, Any]:
    options = spec.options("openvino_int8")
    alpha = options.get("smooth_quant_alpha")
    settings = {"preset": str(options.get("preset", "performance")),
                "fast_bias_correction": bool(options.get("fast_bias_correction", True)),
                "model_type": options.get("model_type", "transformer" if alpha is not None else None),
                "smooth_quant_alpha": None if alpha is None else float(alpha)}
    if settings["preset"] not in PRESETS:
        raise ExportError(f"{spec.name}/openvino_int8: preset {settings['preset']!r} is not one of "
                          f"{', '.join(PRESETS)}")
    if settings["model_type"] not in MODEL_TYPES:
        raise ExportError(f"{spec.name}/openvino_int8: model_type {settings['model_type']!r} is not "
                          "'transformer' (or unset)")
    if alpha is not None and (settings["model_type"] != "transformer" or float(alpha) > 1):
        raise ExportError(f"{spec.name}/openvino_int8: smooth_quant_alpha {alpha!r} needs model_type "
                          "'transformer' (NNCF smooths only there) and at most 1")
    return settings


def nncf_options(settings: dict[str, Any]) -> dict[str, Any]:
    """`nncf.quantize`'s keyword arguments for `nncf_settings`."""
    import nncf
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, AdvancedSmoothQuantParameters

    options: dict[str, Any] = {"preset": nncf.QuantizationPreset(settings["preset"]),
                               "fast_bias_correction": settings["fast_bias_correction"]}
    if settings["model_type"] == "transformer":
        options["model_type"] = nncf.ModelType.TRANSFORMER
    if settings["smooth_quant_alpha"] is not None:
        alphas = AdvancedSmoothQuantParameters(matmul=settings["smooth_quant_alpha"])
        options["advanced_parameters"] = AdvancedQuantizationParameters(smooth_quant_alphas=alphas)
    return options


class OpenVinoInt8Format(Format):
    name = "openvino_int8"
    precision = Precision(weights="int8 (NNCF)", compute="int8, f32 elsewhere",
                          activations="int8, calibrated ranges", runtime=(PRECISION_HINT,))
    base_format = "openvino"
    default_tolerance = INT8_TOLERANCE
    packages = ("torch", "onnx", "onnxscript", "openvino", "nncf")
    servable = True
    platform = "openvino"
    int8_search_space = tuple({"preset": preset} if alpha is None else {"preset": preset, "smooth_quant_alpha": alpha}
                              for alpha in SMOOTH_QUANT_ALPHAS for preset in PRESETS)

    def check_supported(self, spec: ModelSpec) -> None:
        require_packages(spec, self.name, ("openvino", "nncf"), "openvino")

    def cache_inputs(self, spec: ModelSpec) -> list[Any]:
        return [*calibration_feeds(spec), nncf_settings(spec)]

    def export(self, spec: ModelSpec, out_dir: Path, base: Artifact | None) -> dict[str, Any]:
        import nncf
        import openvino as ov

        assert base is not None
        settings = nncf_settings(spec)
        feeds = calibration_feeds(spec)
        model = ov.Core().read_model(str(base.path / IR_FILE))
        quantized = nncf.quantize(model, nncf.Dataset(feeds), subset_size=len(feeds), **nncf_options(settings))
        ov.save_model(quantized, str(out_dir / IR_FILE), compress_to_fp16=False)
        return {"counters": openvino_costs(quantized), "quantization": {
                "tool": "nncf.quantize", "calibration_batches": len(feeds),
                "calibration_samples": int(sum(len(next(iter(f.values()))) for f in feeds)),
                "int8_weight_fraction": low_bit_weight_fraction(quantized), **settings}}

    def load(self, path: Path, metadata: dict[str, Any], spec: ModelSpec | None, **runtime: Any) -> Runner:
        return OpenVinoRunner(compile_ir(path, metadata, **runtime))
