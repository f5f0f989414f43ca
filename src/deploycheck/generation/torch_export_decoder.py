"""A decoder as two `torch.export` programs, `prefill.pt2` and `decode.pt2` (batch, prompt and cached lengths
dynamic), run by their `module()`. `torchao_int8_weight` exports the same programs from a copy of the model whose
`nn.Linear` weights torchao quantized to int8 per output channel (`Int8WeightOnlyConfig`; activations stay float).
torchao's int4 weight-only layouts need bfloat16 or CUDA kernels in torchao 0.18, so there is no CPU fp32 int4
form here. A `.pt2` archive stores entries with pickle, so it loads only when trusted (a signature,
`trust_code=True`, or this process having exported it), as the single-pass `torch_export` does. TorchScript has no
route for a cache and is not a generative format."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from deploycheck.errors import ExportError, FormatUnavailable, one_line
from deploycheck.formats.base import installed
from deploycheck.generation.artifact import write_sidecar
from deploycheck.generation.cache import Decode, Prefill, dynamic_shapes, examples
from deploycheck.generation.spec import GenerativeSpec

PROGRAMS = ("prefill.pt2", "decode.pt2")
PACKAGES = ("torch", "transformers")
FORMATS = ("torch_export", "torchao_int8_weight")
EXECUTES_CODE = "torch.export.load unpickles the entries a .pt2 archive stores with pickle"


def export_torch_decoder(spec: GenerativeSpec, format_name: str, out_dir: Path, decode: type[Decode]) -> Path:
    """`spec`'s model as `format_name` (one of `FORMATS`) in `out_dir`."""
    label = f"{spec.name}/{format_name}"
    model, details = spec.model, {"format": format_name, **spec.described()}
    if format_name == "torchao_int8_weight":
        model, details["quantization"] = _int8_weights(spec.model, label)
    programs, layers = export_programs(model, spec.prompts, decode, label)
    for name, exported in programs.items():
        torch.export.save(exported, str(out_dir / f"{name}.pt2"))
    packages = (*PACKAGES, "torchao") if "quantization" in details else PACKAGES
    write_sidecar(out_dir, PROGRAMS, packages, {**details, "layers": layers})
    return out_dir


def export_programs(model: torch.nn.Module, prompts: torch.Tensor, decode: type[Decode], label: str,
                    max_batch: int | None = None, max_length: int | None = None) -> tuple[dict[str, Any], int]:
    """The `prefill` and `decode` graphs of `model` as `torch.export` programs, by name (their dynamic axes
    bounded as `deploycheck.generation.cache.dynamic_shapes` says), and the number of layers of the cache."""
    example, step, past = examples(model, prompts)
    prefill_shapes, decode_shapes = dynamic_shapes(len(past) // 2, max_batch, max_length)
    programs = {}
    for name, module, args, shapes in (("prefill", Prefill(model), (example,), prefill_shapes),
                                       ("decode", decode(model), (step, *past), decode_shapes)):
        try:
            programs[name] = torch.export.export(module, args, dynamic_shapes=shapes, strict=False)
        except Exception as exc:
            raise ExportError(f"{label}: exporting the {name} program failed: {one_line(exc)}") from exc
    return programs, len(past) // 2


def torchao_quantized(model: torch.nn.Module, config: Any,
                      accepts: Callable[[torch.nn.Linear], bool] = lambda _: True) -> tuple[torch.nn.Module, float]:
    """A copy of `model` whose `nn.Linear` layers that `accepts` takes torchao quantized with `config`, and the
    share of the model's weights those layers hold (torchao must be installed)."""
    from torchao.quantization import quantize_

    def chosen(module: torch.nn.Module, *_: Any) -> bool:
        return isinstance(module, torch.nn.Linear) and accepts(module)

    in_chosen = sum(p.numel() for m in model.modules() if chosen(m) for p in m.parameters())
    total = sum(p.numel() for p in model.parameters())
    quantized = copy.deepcopy(model).eval()
    quantize_(quantized, config, filter_fn=chosen)
    return quantized, in_chosen / total if total else 0.0


def _int8_weights(model: torch.nn.Module, label: str) -> tuple[torch.nn.Module, dict[str, Any]]:
    """A copy of `model` with torchao's int8 weight-only `nn.Linear` layers, and what was quantized."""
    if not installed("torchao"):
        raise FormatUnavailable(f"{label}: needs torchao: pip install 'deploycheck[torchao]'")
    from torchao.quantization import Int8WeightOnlyConfig

    quantized, fraction = torchao_quantized(model, Int8WeightOnlyConfig())
    return quantized, {"backend": "torchao", "scheme": "int8 weights per output channel, float activations",
                       "modules": "nn.Linear layers only (GPT-2's Conv1D is not one)", "weights_only": True,
                       "int8_weight_fraction": fraction}


class TorchExportDecoder:
    """The two programs' modules (or any two callables on tensors, as AOTInductor's packages are); the cache is
    their tuple of tensors."""

    def __init__(self, path: Path, label: str, quantized_by: str | None = None) -> None:
        if quantized_by == "torchao":
            import torchao  # noqa: F401  (registers the quantized tensor types the programs refer to)
        self.modules = self.load(Path(path))
        self.label = label

    def load(self, path: Path) -> dict[str, Any]:
        """The `prefill` and `decode` programs in `path`, by name."""
        return {name: torch.export.load(str(path / f"{name}.pt2")).module() for name in ("prefill", "decode")}

    def prefill(self, input_ids: np.ndarray) -> tuple[np.ndarray, Any]:
        return self._run("prefill", input_ids, ())

    def decode(self, input_ids: np.ndarray, state: Any) -> tuple[np.ndarray, Any]:
        return self._run("decode", input_ids, state)

    def sibling(self) -> TorchExportDecoder:
        return self

    def cache_in(self, past: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        """The cache as the next step is given it: as the last step returned it (an exported program runs on any
        strides)."""
        return past

    def _run(self, name: str, input_ids: np.ndarray, past: Any) -> tuple[np.ndarray, Any]:
        with torch.inference_mode():
            outputs = self.modules[name](torch.from_numpy(np.ascontiguousarray(input_ids)), *self.cache_in(past))
        return outputs[0].float().numpy(), tuple(outputs[1:])
