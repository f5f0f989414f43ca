"""A decoder as two AOTInductor packages, `prefill.pt2` and `decode.pt2`: the `torch.export` programs of
`deploycheck.generation.torch_export_decoder` (batch, prompt and cached lengths dynamic) compiled ahead of time
into shared libraries, as a C++ service would load them.

Opt-in, as the single-pass `aot_inductor` is: compiling takes tens of seconds even for a tiny model (19 s for the
benchmark's 2-layer Llama-style one on 2 quiet cores, twice that on busy ones), so it is gated only where named in
`GenerativeSpec(formats=...)`.
Compiling needs a C++ compiler; without one the format is skipped with that reason. Loading runs the packages'
native code, so the trust rule of `.pt2` archives applies (a signature, `trust_code`, or this process having
compiled them).

A compiled program assumes the strides it was traced with and does not check them: the prefill package returns
keys and values laid out batch x positions x heads (strided views of batch x heads x positions), and the decode
package fed those reads the wrong elements (logits off by 0.3 on the test model, no error). The cache is
therefore made contiguous before each step, a copy only where the layout differs.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch

from deploycheck.errors import ExportError, FormatUnavailable, one_line
from deploycheck.formats.aot_inductor import COMPILERS, AotInductorFormat
from deploycheck.generation.artifact import write_sidecar
from deploycheck.generation.cache import Decode
from deploycheck.generation.spec import GenerativeSpec
from deploycheck.generation.torch_export_decoder import PROGRAMS, TorchExportDecoder, export_programs

FORMATS = ("aot_inductor",)
PACKAGES = ("torch", "transformers")
EXECUTES_CODE = AotInductorFormat.executes_code


def export_aot_inductor_decoder(spec: GenerativeSpec, format_name: str, out_dir: Path,
                                decode: type[Decode]) -> Path:
    """`spec`'s model compiled as `format_name` (`aot_inductor`) into `out_dir`."""
    label = f"{spec.name}/{format_name}"
    compiler = next((c for c in COMPILERS if shutil.which(c)), None)
    if compiler is None:
        raise FormatUnavailable(f"{label}: compiling needs a C++ compiler ({', '.join(COMPILERS)} on PATH)")
    programs, layers = export_programs(spec.model, spec.prompts, decode, label)
    for name, program in programs.items():
        try:
            torch._inductor.aoti_compile_and_package(program, package_path=str(out_dir / f"{name}.pt2"))
        except Exception as exc:
            raise ExportError(f"{label}: compiling the {name} program failed: {one_line(exc)}") from exc
    write_sidecar(out_dir, PROGRAMS, PACKAGES, {"format": format_name, **spec.described(), "layers": layers,
                                                "compiler": compiler, "device": "cpu"})
    return out_dir


class AotInductorDecoder(TorchExportDecoder):
    """The two compiled packages; the cache is their tuple of tensors, made contiguous before each step."""

    def load(self, path: Path) -> dict[str, Any]:
        return {name: torch._inductor.aoti_load_package(str(path / f"{name}.pt2")) for name in ("prefill", "decode")}

    def cache_in(self, past: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        return tuple(tensor.contiguous() for tensor in past)  # a compiled step assumes the strides it was traced with
