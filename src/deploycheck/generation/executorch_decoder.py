"""A decoder as one ExecuTorch program, `model.pte`, with two methods: `prefill` and `decode`, the graphs of
`deploycheck.generation.cache` exported with `torch.export` and lowered through XNNPACK, the cache handed from
one call to the next as tensors.

ExecuTorch plans every tensor's memory ahead of time, so each dynamic axis is bounded: at most `max_batch` rows
(`format_options[...]["max_batch"]`, default 8) and prompts and caches of at most `max_length` positions (default:
the model's `max_position_embeddings` less one, the room for at least one new token; a model whose config names no
limit needs the option). A longer sequence is refused by name before it runs.

`executorch_8da4w` is ExecuTorch's own recipe for language models on phones: torchao's
`Int8DynamicActivationIntxWeightConfig` (int4 weights in groups of `group_size`, default 32, and int8 activations
quantized per token as the program runs) on every `nn.Linear` whose input width the group size divides (XNNPACK's
kernels need whole groups), then lowered the same way.

A method's outputs live in its planned memory, which its next call overwrites, so they are copied out each step:
the cache crosses as a copy, as on ONNX Runtime's copied path. A `.pte` holds operators by name and XNNPACK's
serialized graphs; loading it reads data and runs no code from the artifact. Threads: ExecuTorch's pool is
process-wide (`deploycheck.formats.executorch.set_threads`), and the program is loaded again after a resize.

Lowering can fail on a model whose graph ExecuTorch's passes do not take (GPT-2's attention reshapes, in
executorch 1.5): the format is then skipped with ExecuTorch's reason.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from deploycheck.errors import ExportError, FormatUnavailable, InputError, one_line
from deploycheck.formats.base import installed
from deploycheck.formats.executorch import ProgramMethods, lower_through_xnnpack, set_threads
from deploycheck.generation.artifact import write_sidecar
from deploycheck.generation.cache import Decode
from deploycheck.generation.spec import GenerativeSpec
from deploycheck.generation.torch_export_decoder import export_programs, torchao_quantized

PROGRAM_FILE = "model.pte"
FORMATS = ("executorch", "executorch_8da4w")
PACKAGES = ("torch", "transformers", "executorch")
DEFAULT_MAX_BATCH = 8
DEFAULT_GROUP_SIZE = 32


def bounds(spec: GenerativeSpec, format_name: str) -> dict[str, int]:
    """The planned bounds, `max_batch` and `max_length`, from the format's options or their defaults."""
    label = f"{spec.name}/{format_name}"
    options = spec.options(format_name)
    positions = spec.described()["max_positions"]
    found = {"max_batch": options.get("max_batch", DEFAULT_MAX_BATCH),
             "max_length": options.get("max_length", None if positions is None else positions - 1)}
    if found["max_length"] is None:
        raise ExportError(f"{label}: the model's config names no max_position_embeddings; set "
                          f"format_options[{format_name!r}]['max_length'] (the longest cache ExecuTorch plans for)")
    for name, value in found.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 3:  # above the example's 2 rows
            raise ExportError(f"{label}: {name} must be an integer of at least 3 (torch.export traces 2 rows of 2 "
                              f"or more positions, and fixes an axis whose bound equals its example), got {value!r}")
    needed = spec.prompt_length + spec.new_tokens - 1
    if found["max_length"] < needed:
        raise ExportError(f"{label}: max_length {found['max_length']} is shorter than the spec's prompt "
                          f"{spec.prompt_length} + {spec.new_tokens} new tokens need ({needed})")
    if found["max_batch"] < max(spec.batch_sizes):
        raise ExportError(f"{label}: max_batch {found['max_batch']} is smaller than the spec's batch size "
                          f"{max(spec.batch_sizes)}")
    return found


def export_executorch_decoder(spec: GenerativeSpec, format_name: str, out_dir: Path, decode: type[Decode]) -> Path:
    """`spec`'s model as `format_name` (one of `FORMATS`) in `out_dir`."""
    label = f"{spec.name}/{format_name}"
    needed = ("executorch", "torchao") if format_name == "executorch_8da4w" else ("executorch",)
    if not all(installed(package) for package in needed):
        raise FormatUnavailable(f"{label}: needs {' and '.join(needed)}: pip install 'deploycheck[executorch]'")
    planned = bounds(spec, format_name)
    # the positions the artifact holds, which the server's max_tokens check reads: no more than were planned
    model, details = spec.model, {"format": format_name, **spec.described(), "planned": planned,
                                  "max_positions": planned["max_length"] + 1}
    if format_name == "executorch_8da4w":
        model, details["quantization"] = _8da4w(spec, format_name)
    programs, layers = export_programs(model, spec.prompts, decode, label, **planned)
    try:
        lowered = lower_through_xnnpack(programs).to_executorch()
    except Exception as exc:  # the model exported; ExecuTorch's own passes cannot take its programs
        raise FormatUnavailable(f"{label}: ExecuTorch cannot lower this decoder's torch.export programs "
                                f"({one_line(exc, 300)}); torch_export and onnx are unaffected") from exc
    (out_dir / PROGRAM_FILE).write_bytes(lowered.buffer)
    packages = (*PACKAGES, "torchao") if "quantization" in details else PACKAGES
    write_sidecar(out_dir, (PROGRAM_FILE,), packages, {**details, "layers": layers})
    return out_dir


def _8da4w(spec: GenerativeSpec, format_name: str) -> tuple[torch.nn.Module, dict[str, Any]]:
    """A copy of the model whose `nn.Linear` layers of whole groups torchao quantized to 8da4w, and the record."""
    from torchao.quantization import Int8DynamicActivationIntxWeightConfig
    from torchao.quantization.granularity import PerGroup

    group = spec.options(format_name).get("group_size", DEFAULT_GROUP_SIZE)
    if not isinstance(group, int) or isinstance(group, bool) or group < 1:
        raise ExportError(f"{spec.name}/{format_name}: group_size must be a positive integer, got {group!r}")
    config = Int8DynamicActivationIntxWeightConfig(weight_dtype=torch.int4,  # type: ignore[attr-defined]
                                                    weight_granularity=PerGroup(group))
    def whole_groups(linear: torch.nn.Linear) -> bool:
        return linear.in_features % group == 0

    skipped = sum(isinstance(m, torch.nn.Linear) and not whole_groups(m) for m in spec.model.modules())
    quantized, fraction = torchao_quantized(spec.model, config, whole_groups)
    return quantized, {"backend": "torchao", "scheme": f"int4 weights in groups of {group}, int8 activations "
                       "quantized per token at run time (8da4w)", "group_size": group,
                       "modules": f"only the nn.Linear layers whose input width {group} divides",
                       "linears_left_float": skipped, "weights_only": False, "int8_weight_fraction": fraction}


class ExecuTorchDecoder:
    """The program's two methods; the cache is the tuple of tensors `decode` returns, copied out of its memory."""

    def __init__(self, path: Path, details: dict[str, Any], threads: int = 1) -> None:
        self.path = Path(path) / PROGRAM_FILE
        self.label = f"{details['model']}/{details['format']}"
        self.planned = details["planned"]
        set_threads(threads)
        self.methods = ProgramMethods(self.path, ("prefill", "decode"))

    def prefill(self, input_ids: np.ndarray) -> tuple[np.ndarray, Any]:
        return self._run("prefill", input_ids, ())

    def decode(self, input_ids: np.ndarray, state: Any) -> tuple[np.ndarray, Any]:
        return self._run("decode", input_ids, state)

    def sibling(self) -> ExecuTorchDecoder:
        return self

    def _run(self, name: str, input_ids: np.ndarray, past: tuple[torch.Tensor, ...]) -> tuple[np.ndarray, Any]:
        rows, length = input_ids.shape[0], input_ids.shape[1] + (past[0].shape[2] if past else 0)
        if rows > self.planned["max_batch"] or length > self.planned["max_length"] + (1 if past else 0):
            raise InputError(f"{self.label}: {rows} rows of {length} positions; this program was planned for at "
                             f"most {self.planned['max_batch']} rows and {self.planned['max_length']} cached "
                             "positions (format option max_batch / max_length)")
        outputs = self.methods[name].execute([torch.from_numpy(np.ascontiguousarray(input_ids)), *past])
        copied = [output.clone() for output in outputs]
        return copied[0].numpy(), tuple(copied[1:])
