"""deploycheck: gate a model's deployment formats in pytest (export, parity, accuracy, latency, baselines) and
watch it in production.

Importing the package is cheap: torch and onnxruntime are imported only by the functions that need them, so the
pytest plugin costs nothing in a test run that does not use it.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "ModelSpec": "deploycheck.spec",
    "Tolerance": "deploycheck.tolerance",
    "ParityReport": "deploycheck.parity",
    "compare_outputs": "deploycheck.parity",
    "Artifact": "deploycheck.artifact",
    "load_artifact": "deploycheck.exporting",
    "export": "deploycheck.exporting",
    "export_all": "deploycheck.exporting",
    "format_names": "deploycheck.formats",
    "model": "deploycheck.model_registry",
    "generative_model": "deploycheck.model_registry",
    "GenerativeSpec": "deploycheck.generation.spec",
    "DeployCheckError": "deploycheck.errors",
    "SpecError": "deploycheck.errors",
    "ExportError": "deploycheck.errors",
    "ArtifactError": "deploycheck.errors",
    "FormatUnavailable": "deploycheck.errors",
    "measure_accuracy": "deploycheck.accuracy",
    "explain_quantization": "deploycheck.explain",
    "bench": "deploycheck.latency",
    "compare_speed": "deploycheck.latency",
    "Monitor": "deploycheck.monitor",
}

__all__ = [*_EXPORTS, "__version__"]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    if name == "strategies":
        return importlib.import_module("deploycheck.strategies")
    raise AttributeError(f"module 'deploycheck' has no attribute {name!r}")
