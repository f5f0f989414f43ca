"""`aot_inductor`: the `torch.export` program compiled ahead of time by Inductor into a `.pt2` package (C++ and a
shared library), loaded with `torch._inductor.aoti_load_package` — PyTorch's deployment path for C++ services.

Opt-in (`Format.default` is False): compiling takes tens of seconds even for a small model, so it is gated only
where named, in `ModelSpec(formats=[..., "aot_inductor"])` and `--deploycheck-formats`. Exporting needs a C++
compiler (loading does not); without one the format is skipped with that reason. Loading runs the package's
native code, so the trust rules apply: signed by a trusted key, exported by this process, or `trust_code`.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from deploycheck.artifact import Runner
from deploycheck.errors import FormatUnavailable
from deploycheck.formats.base import Format, TorchRunner, dynamic_shapes, program_costs

if TYPE_CHECKING:
    from deploycheck.artifact import Artifact
    from deploycheck.spec import ModelSpec

PACKAGE_FILE = "model.pt2"
COMPILERS = ("g++", "c++", "clang++")


class AotInductorFormat(Format):
    name = "aot_inductor"
    threads_fixed_at_load = False
    servable = True
    platform = "pytorch_aoti"
    executes_code = "an AOTInductor package is a compiled shared library: loading it runs its native code"
    default = False

    def check_supported(self, spec: ModelSpec) -> None:
        if not any(shutil.which(compiler) for compiler in COMPILERS):
            raise FormatUnavailable(f"{spec.name}/aot_inductor: compiling needs a C++ compiler ({', '.join(COMPILERS)}"
                                    " on PATH); loading a compiled package does not")

    def export(self, spec: ModelSpec, out_dir: Path, base: Artifact | None) -> dict[str, Any]:
        import torch

        program = torch.export.export(spec.flat_model, spec.example_inputs, dynamic_shapes=dynamic_shapes(spec))
        torch._inductor.aoti_compile_and_package(program, package_path=str(out_dir / PACKAGE_FILE))
        return {"settings": {"compiler": next(c for c in COMPILERS if shutil.which(c)), "device": "cpu"},
                "counters": program_costs(program)}

    def load(self, path: Path, metadata: dict[str, Any], spec: ModelSpec | None, **runtime: Any) -> Runner:
        import torch

        device = runtime.get("device", "cpu")
        if device != "cpu":
            raise FormatUnavailable(f"{path}: this package was compiled for the CPU (device={device!r} asked for)")
        return TorchRunner(torch._inductor.aoti_load_package(str(path / PACKAGE_FILE)), metadata["model"], device)
