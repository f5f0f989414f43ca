"""A decoder as two `torch.export` programs, `prefill.pt2` and `decode.pt2` (batch, prompt and cached lengths
dynamic), run by their `module()`. A `.pt2` archive stores entries with pickle, so it loads only when trusted
(a signature, `trust_code=True`, or this process having exported it), as the single-pass `torch_export` does.
TorchScript has no route for a cache and is not a generative format."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from deploycheck.errors import ExportError, one_line
from deploycheck.generation.artifact import prepare_directory, write_sidecar
from deploycheck.generation.cache import Decode, Prefill, dynamic_shapes, examples
from deploycheck.generation.spec import GenerativeSpec

PROGRAMS = ("prefill.pt2", "decode.pt2")
PACKAGES = ("torch", "transformers")
EXECUTES_CODE = "torch.export.load unpickles the entries a .pt2 archive stores with pickle"


def export_torch_decoder(spec: GenerativeSpec, out_dir: Path, decode: type[Decode]) -> Path:
    out_dir = prepare_directory(out_dir, f"{spec.name}/torch_export")
    example, step, past = examples(spec.model, spec.prompts)
    prefill_shapes, decode_shapes = dynamic_shapes(len(past) // 2)
    for program, module, args, shapes in (("prefill.pt2", Prefill(spec.model), (example,), prefill_shapes),
                                          ("decode.pt2", decode(spec.model), (step, *past), decode_shapes)):
        try:
            exported = torch.export.export(module, args, dynamic_shapes=shapes, strict=False)
        except Exception as exc:
            raise ExportError(f"{spec.name}/torch_export: exporting the {program.removesuffix('.pt2')} program "
                              f"failed: {one_line(exc)}") from exc
        torch.export.save(exported, str(out_dir / program))
    write_sidecar(out_dir, PROGRAMS, PACKAGES, {"format": "torch_export", **spec.described(),
                                                "layers": len(past) // 2})
    return out_dir


class TorchExportDecoder:
    """The two programs' modules; the cache is their tuple of tensors."""

    def __init__(self, path: Path, label: str) -> None:
        self.modules = {name: torch.export.load(str(Path(path) / f"{name}.pt2")).module()
                        for name in ("prefill", "decode")}
        self.label = label

    def prefill(self, input_ids: np.ndarray) -> tuple[np.ndarray, Any]:
        return self._run("prefill", input_ids, ())

    def decode(self, input_ids: np.ndarray, state: Any) -> tuple[np.ndarray, Any]:
        return self._run("decode", input_ids, state)

    def sibling(self) -> TorchExportDecoder:
        return self

    def _run(self, name: str, input_ids: np.ndarray, past: Any) -> tuple[np.ndarray, Any]:
        with torch.inference_mode():
            outputs = self.modules[name](torch.from_numpy(input_ids), *past)
        return outputs[0].float().numpy(), tuple(outputs[1:])
