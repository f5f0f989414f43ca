"""The format registry: every format's name mapped to its `Format` class.

Built-in formats are named here and imported only when used; third parties add formats through the entry-point
group `deploycheck.formats` (each entry point names a `Format` subclass). Adding a format is one file with a
`Format` subclass and one line here (or one entry point).
"""

from __future__ import annotations

import importlib
from functools import cache
from importlib import metadata as importlib_metadata

from deploycheck.errors import DeployCheckError
from deploycheck.formats.base import Format

BUILTIN_FORMATS = {
    "eager": "deploycheck.formats.eager:EagerFormat",
    "state_dict": "deploycheck.formats.state_dict:StateDictFormat",
    "torchscript": "deploycheck.formats.torchscript:TorchScriptFormat",
    "torch_export": "deploycheck.formats.torch_export:TorchExportFormat",
    "onnx": "deploycheck.formats.onnx:OnnxFormat",
    "onnx_int8_dynamic": "deploycheck.formats.onnx_int8_dynamic:OnnxInt8DynamicFormat",
    "onnx_int8_static": "deploycheck.formats.onnx_int8_static:OnnxInt8StaticFormat",
    "onnx_int8_weight": "deploycheck.formats.onnx_weight_only:OnnxInt8WeightFormat",
    "onnx_int4_weight": "deploycheck.formats.onnx_weight_only:OnnxInt4WeightFormat",
    "torch_int8_dynamic": "deploycheck.formats.torch_int8_dynamic:TorchInt8DynamicFormat",
    "openvino": "deploycheck.formats.openvino:OpenVinoFormat",
    "openvino_int8": "deploycheck.formats.openvino_int8:OpenVinoInt8Format",
    "openvino_int8_weight": "deploycheck.formats.openvino_weight_only:OpenVinoInt8WeightFormat",
    "openvino_int4_weight": "deploycheck.formats.openvino_weight_only:OpenVinoInt4WeightFormat",
    "executorch": "deploycheck.formats.executorch:ExecuTorchFormat",
    "executorch_int8": "deploycheck.formats.executorch_int8:ExecuTorchInt8Format",
    "aot_inductor": "deploycheck.formats.aot_inductor:AotInductorFormat",
}
ENTRY_POINT_GROUP = "deploycheck.formats"

__all__ = ["Format", "default_formats", "format_names", "get_format", "searchable_formats"]


@cache
def _registry() -> dict[str, str]:
    registry = dict(BUILTIN_FORMATS)
    for entry in importlib_metadata.entry_points(group=ENTRY_POINT_GROUP):
        registry.setdefault(entry.name, entry.value)
    return registry


def format_names() -> list[str]:
    """Every known format name: the built-in ones in pipeline order, then third-party ones."""
    return list(_registry())


def default_formats() -> list[str]:
    """The formats gated when none are named: every known one except the opt-in ones (`Format.default`)."""
    return [name for name in format_names() if get_format(name).default]


def searchable_formats() -> list[str]:
    """The formats `deploycheck quantize` searches: those that declare an `int8_search_space`."""
    return [name for name in format_names() if get_format(name).int8_search_space]


@cache
def get_format(name: str) -> Format:
    """The format registered under `name`; an unknown name lists the valid ones."""
    registry = _registry()
    if name not in registry:
        raise DeployCheckError(f"unknown format {name!r}; valid formats: {', '.join(registry)}")
    module_name, _, class_name = registry[name].partition(":")
    format_class = getattr(importlib.import_module(module_name), class_name)
    if not (isinstance(format_class, type) and issubclass(format_class, Format)):
        raise DeployCheckError(f"format {name!r} ({registry[name]}) is not a deploycheck.formats.Format subclass")
    instance: Format = format_class()
    return instance


