"""`state_dict`: weights saved with `torch.save`, loaded with `weights_only=True` into a fresh model instance.

This checks what most training pipelines actually ship: that the weights survive a round trip into a newly built
model. It needs the model's class (`ModelSpec.factory`); no pickled object is ever loaded.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from deploycheck.artifact import Runner
from deploycheck.errors import ArtifactError, FormatUnavailable
from deploycheck.formats.base import Format, TorchRunner, parameter_bytes
from deploycheck.tensors import FlatModule

if TYPE_CHECKING:
    from deploycheck.artifact import Artifact
    from deploycheck.spec import ModelSpec

WEIGHTS_FILE = "state_dict.pt"


class StateDictFormat(Format):
    name = "state_dict"
    threads_fixed_at_load = False
    executes_code = "loading it imports and calls the model factory its sidecar names"

    def runs_artifact_code(self, metadata: dict[str, Any], spec: ModelSpec | None) -> bool:
        """Only the factory named in the sidecar is the artifact's code; the spec's own factory is the caller's."""
        return (spec is None or spec.factory is None) and bool(metadata.get("factory"))

    def check_supported(self, spec: ModelSpec) -> None:
        if spec.factory is None:
            raise FormatUnavailable(f"{spec.name}/state_dict: no factory given, so there is no fresh instance to load "
                                    "the weights into (set ModelSpec(factory=YourModel))")

    def export(self, spec: ModelSpec, out_dir: Path, base: Artifact | None) -> dict[str, Any]:
        import torch

        torch.save(spec.model.state_dict(), out_dir / WEIGHTS_FILE)
        return {"factory": _importable_path(spec.factory), "keyword_inputs": spec.keyword_inputs,
                "counters": {"weight_bytes": parameter_bytes(spec.model)}}

    def load(self, path: Path, metadata: dict[str, Any], spec: ModelSpec | None, **runtime: Any) -> Runner:
        import torch

        factory = spec.factory if spec is not None else _import_factory(metadata.get("factory"), path)
        assert factory is not None
        model = factory()
        state = torch.load(path / WEIGHTS_FILE, map_location="cpu", weights_only=True)
        model.load_state_dict(state, strict=True)
        device = runtime.get("device", "cpu")
        flat = FlatModule(model, [i["name"] for i in metadata["inputs"]], bool(metadata.get("keyword_inputs")),
                          metadata["model"])
        return TorchRunner(flat.eval().to(device), metadata["model"], device)


def _importable_path(factory: Any) -> str | None:
    """`module:qualname` of a class or function that can be imported again; None for a partial, a lambda, a
    local class or a callable object (loading without a spec then says the model class is needed)."""
    module, qualname = getattr(factory, "__module__", None), getattr(factory, "__qualname__", None)
    if not module or not qualname or "<" in qualname:
        return None
    return f"{module}:{qualname}"


def _import_factory(reference: str | None, path: Path) -> Any:
    if not reference or "<locals>" in reference:
        raise ArtifactError(f"{path}: a state_dict artifact needs its model class; pass spec= to load_artifact "
                            f"(the recorded factory {reference!r} cannot be imported)")
    module_name, _, qualname = reference.partition(":")
    target: Any = importlib.import_module(module_name)
    for part in qualname.split("."):
        target = getattr(target, part)
    return target
