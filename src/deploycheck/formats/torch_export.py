"""`torch_export`: `torch.export.export` with a dynamic batch dimension, saved and loaded as a `.pt2` program."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from deploycheck.artifact import Runner
from deploycheck.costs import CostCounters
from deploycheck.formats.base import Format, TorchRunner, dynamic_shapes, program_costs

if TYPE_CHECKING:
    from deploycheck.artifact import Artifact
    from deploycheck.spec import ModelSpec

PROGRAM_FILE = "model.pt2"


def save_exported_program(module: Any, spec: ModelSpec, out_dir: Path) -> CostCounters:
    """Export `module` (taking the spec's inputs positionally) with the spec's example inputs and dynamic axes,
    save the program into `out_dir`, and return its cost counters."""
    import torch

    program = torch.export.export(module, spec.example_inputs, dynamic_shapes=dynamic_shapes(spec))
    torch.export.save(program, str(out_dir / PROGRAM_FILE))
    return program_costs(program)


def load_exported_program(path: Path, metadata: dict[str, Any], device: str) -> TorchRunner:
    import torch

    program = torch.export.load(str(path / PROGRAM_FILE))
    return TorchRunner(program.module().to(device), metadata["model"], device)


class TorchExportFormat(Format):
    name = "torch_export"
    threads_fixed_at_load = False
    servable = True
    platform = "pytorch_export"
    executes_code = "torch.export.load unpickles the entries a .pt2 archive stores with pickle"

    def export(self, spec: ModelSpec, out_dir: Path, base: Artifact | None) -> dict[str, Any]:
        return {"counters": save_exported_program(spec.flat_model, spec, out_dir)}

    def load(self, path: Path, metadata: dict[str, Any], spec: ModelSpec | None, **runtime: Any) -> Runner:
        return load_exported_program(path, metadata, runtime.get("device", "cpu"))
