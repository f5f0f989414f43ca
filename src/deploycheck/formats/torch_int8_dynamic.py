"""`torch_int8_dynamic`: Linear layers with int8 weights and dynamically quantized int8 activations.

torchao (`Int8DynamicActivationInt8WeightConfig`) is used when it imports, and the result is saved as a
`torch.export` program; otherwise the deprecated `torch.ao.quantization.quantize_dynamic` is used and saved as
TorchScript. The metadata records which backend produced the artifact, and loading follows it.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import TYPE_CHECKING, Any

from deploycheck.artifact import Runner
from deploycheck.costs import CostCounters
from deploycheck.errors import FormatUnavailable
from deploycheck.formats.base import Format, Precision, TorchRunner
from deploycheck.formats.torch_export import load_exported_program, save_exported_program
from deploycheck.formats.torchscript import script_costs
from deploycheck.tolerance import INT8_TOLERANCE

if TYPE_CHECKING:
    from deploycheck.artifact import Artifact
    from deploycheck.spec import ModelSpec

TORCHSCRIPT_FILE = "model.ts"


def quantize_linear_layers(model: Any, backend: str | None = None) -> tuple[Any, str]:
    """A copy of `model` with dynamic int8 Linear layers, and the backend that made it: `backend` when given
    ("torchao" or "torch.ao.quantization"), else torchao when it imports."""
    import torch

    quantized = copy.deepcopy(model).eval()
    if backend in (None, "torchao"):
        try:
            from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_
        except ImportError:
            if backend == "torchao":
                raise
        else:
            quantize_(quantized, Int8DynamicActivationInt8WeightConfig())
            return quantized, "torchao"
    dynamic = torch.ao.quantization.quantize_dynamic(quantized, {torch.nn.Linear}, dtype=torch.qint8)
    return dynamic, "torch.ao.quantization"


class TorchInt8DynamicFormat(Format):
    name = "torch_int8_dynamic"
    precision = Precision(weights="int8 (nn.Linear)", compute="int8 (nn.Linear), float elsewhere",
                          activations="int8, ranges per call (dynamic)")
    threads_fixed_at_load = False
    default_tolerance = INT8_TOLERANCE
    packages = ("torch", "torchao")
    servable = True
    platform = "pytorch_export"
    executes_code = "torch.export.load unpickles its quantized weights, which the .pt2 archive stores with pickle"
    explanation = "torch_hooks"

    def check_supported(self, spec: ModelSpec) -> None:
        import torch

        if not any(isinstance(m, torch.nn.Linear) for m in spec.model.modules()):
            raise FormatUnavailable(f"{spec.name}/torch_int8_dynamic: the model has no nn.Linear layer to quantize")

    def export(self, spec: ModelSpec, out_dir: Path, base: Artifact | None) -> dict[str, Any]:
        import torch

        linear = [m for m in spec.model.modules() if isinstance(m, torch.nn.Linear)]
        in_linear = sum(p.numel() for m in linear for p in m.parameters())
        total = sum(p.numel() for p in spec.model.parameters())
        quantized, backend = quantize_linear_layers(spec.flat_model)
        counters: CostCounters = {}
        if backend == "torchao":
            counters = save_exported_program(quantized, spec, out_dir)
        else:
            scripted = torch.jit.trace(quantized, spec.example_inputs)
            torch.jit.save(scripted, str(out_dir / TORCHSCRIPT_FILE))
            counters = script_costs(scripted)
        return {"counters": counters, "quantization": {
            "backend": backend, "scheme": "int8 dynamic activations, int8 weights", "modules": "nn.Linear",
            "quantized_layers": len(linear), "int8_weight_fraction": in_linear / total if total else 0.0}}

    def load(self, path: Path, metadata: dict[str, Any], spec: ModelSpec | None, **runtime: Any) -> Runner:
        import torch

        device = runtime.get("device", "cpu")
        if metadata["quantization"]["backend"] == "torchao":
            import torchao  # noqa: F401  (registers the quantized tensor types the program refers to)

            return load_exported_program(path, metadata, device)
        module = torch.jit.load(str(path / TORCHSCRIPT_FILE), map_location=device).eval()
        return TorchRunner(module, metadata["model"], device)
