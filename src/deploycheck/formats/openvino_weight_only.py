"""Weight-only OpenVINO formats, `openvino_int8_weight` and `openvino_int4_weight`: NNCF's `compress_weights` stores
the `openvino` IR's weights (MatMul, embedding and convolution) in 8 bits per output channel, or the MatMul ones
in 4 bits (in groups along the input axis, one scale per group), decompressed by the CPU plugin inside the kernel;
activations stay fp32. The weight-only scheme that transformer deployments use when activation quantization
hurts.

Under int4, NNCF keeps the embeddings and the last layer in int8 unless `all_layers` is set, and a layer whose width
is not a multiple of `group_size` is given the largest power-of-two group that divides it (NNCF's ADJUST); the
sidecar's `int8_weight_fraction` (weights in 8 bits or fewer)
and its `int4_weight_fraction` say what was done. Under int4, convolutions keep the int8 backup: a ResNet-18's
weights come out all int8 in either format (10.8 of 42.7 MiB, `benchmarks/weight_only.py`).

The CPU plugin may quantize activations on the fly for compressed weights (`DYNAMIC_QUANTIZATION_GROUP_SIZE`,
32 by default, applied where the CPU has the instructions for it); that is turned off (0) and recorded, so the
format is what it says on every machine: f32 activations and arithmetic.

Settings from `format_options[name]`: `mode` (int8: "int8_asym" (default) or "int8_sym"; int4: "int4_sym"
(default) or "int4_asym"), `group_size` (int4 only, default 128), `ratio` (int4 only: the share of the
compressible weights in int4, the rest int8; default 1.0), `all_layers` (int4 only, default False).

An optional extra: `pip install 'deploycheck[openvino]'` (openvino and nncf).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from deploycheck.artifact import Runner
from deploycheck.errors import ExportError
from deploycheck.formats.base import Format, Precision, require_packages
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

# no on-the-fly activation quantization: the arithmetic stays fp32, as the format declares
NO_DYNAMIC_QUANTIZATION = ("DYNAMIC_QUANTIZATION_GROUP_SIZE", "0")
DEFAULT_GROUP_SIZE = 128


class OpenVinoWeightOnlyFormat(Format):
    """The two formats differ in `bits` and the modes NNCF offers for them."""

    bits: ClassVar[int]
    modes: ClassVar[tuple[str, ...]]  # the first is the default
    base_format = "openvino"
    default = False  # opt-in: a weight-only form is a deployment choice for large models, not a default check
    default_tolerance = INT8_TOLERANCE
    packages = ("torch", "onnx", "onnxscript", "openvino", "nncf")
    servable = True
    platform = "openvino"

    def check_supported(self, spec: ModelSpec) -> None:
        require_packages(spec, self.name, ("openvino", "nncf"), "openvino")

    def settings(self, spec: ModelSpec) -> dict[str, Any]:
        return self.settings_from(spec.options(self.name), f"{spec.name}/{self.name}")

    def settings_from(self, given: Mapping[str, Any], label: str) -> dict[str, Any]:
        """NNCF's settings from a format's options (a `ModelSpec`'s or a generative spec's)."""
        options = dict(given)
        mode = str(options.pop("mode", self.modes[0]))
        if mode not in self.modes:
            raise ExportError(f"{label}: mode {mode!r} is not one of {', '.join(self.modes)}")
        settings: dict[str, Any] = {"mode": mode}
        if self.bits == 4:
            settings.update(group_size=int(options.pop("group_size", DEFAULT_GROUP_SIZE)),
                            ratio=float(options.pop("ratio", 1.0)), all_layers=bool(options.pop("all_layers", False)))
            if not 0 < settings["ratio"] <= 1 or settings["group_size"] < 1:
                raise ExportError(f"{label}: ratio must be in (0, 1] and group_size positive "
                                  f"(given {settings['ratio']}, {settings['group_size']})")
        if options:
            raise ExportError(f"{label}: unknown setting(s) {', '.join(sorted(options))}; "
                              f"{self.name} takes mode{', group_size, ratio, all_layers' if self.bits == 4 else ''}")
        return settings

    def cache_inputs(self, spec: ModelSpec) -> list[Any]:
        return [self.settings(spec)]

    def export(self, spec: ModelSpec, out_dir: Path, base: Artifact | None) -> dict[str, Any]:
        import openvino as ov

        assert base is not None
        settings = self.settings(spec)
        compressed = compress_ir_weights(ov.Core().read_model(str(base.path / IR_FILE)), settings)
        ov.save_model(compressed, str(out_dir / IR_FILE), compress_to_fp16=False)
        return {"counters": openvino_costs(compressed), "quantization": compression_record(compressed, settings)}

    def load(self, path: Path, metadata: dict[str, Any], spec: ModelSpec | None, **runtime: Any) -> Runner:
        return OpenVinoRunner(compile_ir(path, metadata, **runtime))


def compress_ir_weights(model: Any, settings: dict[str, Any]) -> Any:
    """`model` (an OpenVINO IR in memory) with its weights compressed by NNCF as `settings` say: the step these
    formats and the generative OpenVINO decoder share."""
    import nncf
    from nncf.quantization.advanced_parameters import AdvancedCompressionParameters, GroupSizeFallbackMode

    arguments = {**settings, "mode": nncf.CompressWeightsMode[settings["mode"].upper()]}
    if "group_size" in settings:  # int4: a layer whose width the group does not divide gets the largest that does
        arguments["advanced_parameters"] = AdvancedCompressionParameters(
            group_size_fallback_mode=GroupSizeFallbackMode.ADJUST)
    return nncf.compress_weights(model, **arguments)


def compression_record(model: Any, settings: dict[str, Any]) -> dict[str, Any]:
    """The sidecar's `quantization` section of a compressed IR."""
    return {"tool": "nncf.compress_weights", "weights_only": True, **settings,
            "int8_weight_fraction": low_bit_weight_fraction(model),
            "int4_weight_fraction": low_bit_weight_fraction(model, kinds=("i4", "u4"))}


def _precision(bits: int, layout: str) -> Precision:
    return Precision(weights=f"int{bits} MatMul/Gather weights {layout} (NNCF compress_weights), the rest f32",
                     compute="f32 (weights decompressed in the kernel)", activations="f32 (not quantized)",
                     runtime=(PRECISION_HINT, NO_DYNAMIC_QUANTIZATION))


class OpenVinoInt8WeightFormat(OpenVinoWeightOnlyFormat):
    name = "openvino_int8_weight"
    bits = 8
    modes = ("int8_asym", "int8_sym")
    precision = _precision(8, "per output channel")


class OpenVinoInt4WeightFormat(OpenVinoWeightOnlyFormat):
    name = "openvino_int4_weight"
    bits = 4
    modes = ("int4_sym", "int4_asym")
    precision = _precision(4, "in groups with f16 scales")
