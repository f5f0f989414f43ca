"""`eager`: the reference. The spec's own module, run in-process; nothing is written but the sidecar."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import TYPE_CHECKING, Any

from deploycheck.artifact import Runner
from deploycheck.errors import ArtifactError
from deploycheck.formats.base import Format, TorchRunner, parameter_bytes

if TYPE_CHECKING:
    from deploycheck.artifact import Artifact
    from deploycheck.spec import ModelSpec


class EagerFormat(Format):
    name = "eager"
    threads_fixed_at_load = False
    writes_files = False

    def export(self, spec: ModelSpec, out_dir: Path, base: Artifact | None) -> dict[str, Any]:
        return {"module_class": f"{type(spec.model).__module__}.{type(spec.model).__qualname__}",
                "counters": {"weight_bytes": parameter_bytes(spec.model)}}

    def load(self, path: Path, metadata: dict[str, Any], spec: ModelSpec | None, **runtime: Any) -> Runner:
        if spec is None:
            raise ArtifactError(f"{path}: an eager artifact runs the spec's model in-process; pass spec= to load it")
        device = runtime.get("device", "cpu")
        # .to() moves a module in place: on another device, run a copy so the spec's model stays on the CPU
        module = spec.flat_model if device == "cpu" else copy.deepcopy(spec.flat_model).to(device)
        return TorchRunner(module, spec.name, device)
