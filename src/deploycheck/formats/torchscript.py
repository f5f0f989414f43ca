"""`torchscript`: `torch.jit.trace` by default, `torch.jit.script` with `format_options={"torchscript":
{"method": "script"}}` (for models whose control flow depends on the data, which tracing would freeze)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from deploycheck.artifact import Runner
from deploycheck.costs import CostCounters, op_counts
from deploycheck.errors import ExportError
from deploycheck.formats.base import Format, TorchRunner, tensor_bytes

if TYPE_CHECKING:
    from deploycheck.artifact import Artifact
    from deploycheck.spec import ModelSpec

MODEL_FILE = "model.ts"


def script_costs(scripted: Any) -> CostCounters:
    """The counters of a TorchScript module: the aten operators of its inlined graph and its weights' bytes."""
    kinds = [node.kind() for node in scripted.inlined_graph.nodes()]
    ops = [kind.replace("::", ".") for kind in kinds if kind.startswith("aten::")]
    return {"ops": op_counts(ops), "weight_bytes": sum(tensor_bytes(t) for t in scripted.state_dict().values())}


class TorchScriptFormat(Format):
    name = "torchscript"
    threads_fixed_at_load = False
    servable = True
    platform = "pytorch_libtorch"
    executes_code = "a TorchScript file is a program: its forward runs whatever code it was saved with"

    def export(self, spec: ModelSpec, out_dir: Path, base: Artifact | None) -> dict[str, Any]:
        import torch

        method = spec.options(self.name).get("method", "trace")
        if method == "trace":
            scripted = torch.jit.trace(spec.flat_model, spec.example_inputs, check_trace=True)
        elif method == "script":
            scripted = torch.jit.script(spec.model)
        else:
            raise ExportError(f"{spec.name}/torchscript: method {method!r} is not 'trace' or 'script'")
        torch.jit.save(scripted, str(out_dir / MODEL_FILE))
        return {"settings": {"method": method}, "counters": script_costs(scripted)}

    def load(self, path: Path, metadata: dict[str, Any], spec: ModelSpec | None, **runtime: Any) -> Runner:
        import torch

        device = runtime.get("device", "cpu")
        module = torch.jit.load(str(path / MODEL_FILE), map_location=device).eval()
        return TorchRunner(module, metadata["model"], device)
