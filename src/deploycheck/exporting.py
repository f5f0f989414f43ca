"""`export` / `export_all`, which turn a `ModelSpec` into artifacts on disk, and `load_artifact`, which reopens
one through its format.

Exports are cached: an artifact directory whose recorded cache key matches (model weights and code, format,
settings, precision, data, the versions of the packages the format names) and whose files verify is reused as
it is. A new export is written to a temporary directory and moved into place only once it is complete, so a
failing export never replaces a good artifact, and `export` never deletes a directory deploycheck did not write.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import inspect
import json
import os
import traceback
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from filelock import FileLock

from deploycheck.artifact import (
    METADATA_FILE,
    Artifact,
    file_digest,
    package_versions,
    read_metadata,
    staged_directory,
    write_metadata,
)
from deploycheck.costs import CostCounters
from deploycheck.errors import ArtifactError, DeployCheckError, ExportError, FormatUnavailable
from deploycheck.formats import default_formats, get_format
from deploycheck.formats.base import Format, flops_per_sample, io_specs, parameter_bytes, quiet_exporters
from deploycheck.input_bounds import INPUT_BOUNDS_VERSION
from deploycheck.signing import sign_artifact, verify_artifact

if TYPE_CHECKING:
    from deploycheck.spec import ModelSpec

# part of the cache key: exports made before their sidecars held cost counters (or held fewer) are made again
COST_COUNTERS_VERSION = 1
# sha256 of the sidecars of the artifacts this process exported (or found in its export cache under the key it
# would write): loading those runs only what this process's own code produced, so they need no signature
_WRITTEN_HERE: set[str] = set()


def export(spec: ModelSpec, format: str, out_dir: str | Path, *, base: Artifact | None = None,
           sign_key: str | os.PathLike[str] | None = None) -> Artifact:
    """Export `spec` to one format in `out_dir` and load it back from disk (or reuse a matching cached export).
    With `sign_key` (an elliptic-curve private key, PEM) the artifact directory is signed (`deploycheck.signing`).

    Raises `FormatUnavailable` when the format cannot handle the model (with the reason) and `ExportError`
    naming the model and the format when the exporter fails.
    """
    fmt = get_format(format)
    fmt.check_supported(spec)
    out_dir = Path(out_dir)
    if fmt.base_format is not None and base is None:
        base = export(spec, fmt.base_format, out_dir.with_name(f"{out_dir.name}.{fmt.base_format}"))
    key = cache_key(spec, fmt, base)
    cached = _reusable(out_dir, key, spec)
    if cached is not None:
        if sign_key is not None:
            sign_artifact(out_dir, sign_key)
        return cached
    _check_replaceable(out_dir, spec.name, format)
    with staged_directory(out_dir) as staging:
        try:
            with quiet_exporters():
                details = fmt.export(spec, staging, base)
                details["counters"] = model_costs(spec, details.get("counters") or {})
            inputs, outputs = io_specs(spec)
        except DeployCheckError:
            raise
        except Exception as exc:
            raise ExportError(f"{spec.name}/{format}: export failed: {_summarise(exc)}") from exc
        if base is not None:
            details["base"] = {"format": base.format, "path": str(base.path.resolve()),
                               "cache_key": base.metadata["cache_key"]}
        in_memory = 0 if fmt.writes_files else parameter_bytes(spec.model)
        write_metadata(staging, format, spec, {"precision": fmt.precision.to_dict(), **details}, inputs, outputs, key,
                       fmt.packages, in_memory_bytes=in_memory)
        if sign_key is not None:
            sign_artifact(staging, sign_key)
    _WRITTEN_HERE.add(file_digest(out_dir / METADATA_FILE))
    return load_artifact(out_dir, spec=spec)


def export_all(spec: ModelSpec, out_dir: str | Path, formats: list[str] | None = None, *,
               sign_key: str | os.PathLike[str] | None = None) -> dict[str, Artifact]:
    """Export every format of the spec (or `formats`) into `out_dir/<format>` (each signed with `sign_key`).

    Formats that cannot handle the model are left out; if any export fails, the others are still attempted and
    one `ExportError` listing every failure is raised at the end.
    """
    out_dir = Path(out_dir)
    wanted = formats if formats is not None else list(spec.formats or default_formats())
    artifacts: dict[str, Artifact] = {}
    failures: list[str] = []
    for name in _dependency_order(wanted):
        fmt = get_format(name)
        base = artifacts.get(fmt.base_format) if fmt.base_format else None
        try:
            artifacts[name] = export(spec, name, out_dir / name, base=base, sign_key=sign_key)
        except FormatUnavailable:
            continue
        except DeployCheckError as exc:
            failures.append(str(exc))
    if failures:
        raise ExportError("\n".join(failures))
    return {name: artifacts[name] for name in wanted if name in artifacts}


def model_costs(spec: ModelSpec, graph: Mapping[str, Any]) -> CostCounters:
    """The format's counters of its graph with the eager model's FLOPs per sample added."""
    flops = flops_per_sample(spec)
    counters = {**graph, **({"flops_per_sample": flops} if flops is not None else {})}
    return cast(CostCounters, counters)


def cache_key(spec: ModelSpec, fmt: Format, base: Artifact | None) -> str:
    """A digest of everything an export depends on."""
    import numpy as np
    import torch

    digest = hashlib.sha256()
    digest.update(model_fingerprint(spec.model).encode())
    description = {
        "format": fmt.name, "options": spec.options(fmt.name), "versions": package_versions(fmt.packages),
        "precision": fmt.precision.to_dict(),
        "inputs": [[list(t.shape), str(t.dtype)] for t in spec.example_inputs], "dynamic_batch": spec.dynamic_batch,
        "names": [spec.input_names, spec.output_names], "base": base.metadata["cache_key"] if base else None,
        "factory": getattr(spec.factory, "__qualname__", None), "cost_counters": COST_COUNTERS_VERSION,
        "dynamic_axes": spec.dynamic_axes,
        "input_bounds": [INPUT_BOUNDS_VERSION, spec.input_value_ranges, spec.input_max_sizes],
    }
    digest.update(json.dumps(description, sort_keys=True, default=str).encode())
    for item in fmt.cache_inputs(spec):
        if isinstance(item, dict) and all(isinstance(v, np.ndarray) for v in item.values()):
            for name, array in sorted(item.items()):
                digest.update(name.encode())
                digest.update(np.ascontiguousarray(array).tobytes())
        elif isinstance(item, torch.Tensor):
            digest.update(item.detach().cpu().contiguous().numpy().tobytes())
        else:
            digest.update(json.dumps(item, sort_keys=True, default=str).encode())
    return digest.hexdigest()


def model_fingerprint(model: Any) -> str:
    """A digest of a module's weights, buffers and class source (changing either invalidates exports)."""
    import torch

    digest = hashlib.sha256()
    classes = sorted({type(m) for m in model.modules()}, key=lambda c: f"{c.__module__}.{c.__qualname__}")
    for module_class in classes:
        try:
            digest.update(inspect.getsource(module_class).encode())
        except (OSError, TypeError):
            digest.update(f"{module_class.__module__}.{module_class.__qualname__}".encode())
    for name, tensor in sorted(model.state_dict().items()):
        data = tensor.detach().cpu()
        if data.is_quantized:
            data = data.int_repr()
        digest.update(f"{name}:{data.dtype}:{tuple(data.shape)}".encode())
        digest.update(data.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _reusable(out_dir: Path, key: str, spec: ModelSpec) -> Artifact | None:
    if not (out_dir / "deploycheck.json").is_file():
        return None
    try:
        if read_metadata(out_dir).get("cache_key") != key:
            return None
        _WRITTEN_HERE.add(file_digest(out_dir / METADATA_FILE))  # the cache key matched: what this export writes
        artifact = load_artifact(out_dir, spec=spec)
    except (ArtifactError, DeployCheckError):
        return None
    artifact.reused = True
    return artifact


def _check_replaceable(out_dir: Path, model: str, format_name: str) -> None:
    """An export replaces `out_dir` whole: refuse unless it is empty or an earlier export of the same model and
    format (never delete what deploycheck did not write)."""
    if not out_dir.exists() or (out_dir.is_dir() and not any(out_dir.iterdir())):
        return
    try:
        metadata = read_metadata(out_dir)
    except ArtifactError:
        metadata = {}
    if metadata.get("model") != model or metadata.get("format") != format_name:
        if metadata:
            held = f"a deploycheck artifact of {metadata.get('model')}/{metadata.get('format')}"
        else:
            held = f"{sum(1 for _ in out_dir.iterdir())} entries that deploycheck did not write"
        raise ExportError(f"{model}/{format_name}: refusing to export into {out_dir}: it holds {held}, and an "
                          "export replaces its directory whole; give an empty or new directory")


def _dependency_order(names: list[str]) -> list[str]:
    ordered: list[str] = []
    for name in names:
        base = get_format(name).base_format
        if base and base not in ordered:
            ordered.append(base)
        if name not in ordered:
            ordered.append(name)
    return ordered


def _summarise(exc: BaseException) -> str:
    """The exporter's error in a few lines: its type and message, and the deepest frame that raised it."""
    message = str(exc).strip().splitlines()
    head = "\n    ".join(message[:8]) + ("\n    ..." if len(message) > 8 else "")
    frame = traceback.extract_tb(exc.__traceback__)[-1] if exc.__traceback__ else None
    where = f" (at {Path(frame.filename).name}:{frame.lineno})" if frame else ""
    return f"{type(exc).__name__}: {head}{where}"


def load_artifact(path: str | os.PathLike[str], spec: ModelSpec | None = None, *,
                  verify_key: str | os.PathLike[str] | None = None, trust_code: bool = False,
                  **runtime: Any) -> Artifact:
    """Reopen an artifact from its directory alone, verifying its files first.

    onnx artifacts need no model code and run no code of the artifact's. A format whose loading can run code
    that came with the artifact (`Format.executes_code`: TorchScript programs, `.pt2` archives with pickled
    entries, a factory named by the sidecar) is refused before anything of it is loaded, unless the directory
    verifies against `verify_key` (a trusted public key; see `deploycheck.signing`), or `trust_code=True` says the
    caller trusts where it came from, or this process exported it itself (`export`: its sidecar, which pins every
    file's hash, is the one written or reused here). With `verify_key`, every format must verify. `state_dict`
    needs the model class (taken from `spec.factory`, else imported from the recorded factory path) and `eager`
    needs the spec.
    `runtime` options (e.g. `intra_op_threads=1`, `device="cuda"`) go to the format's loader.
    """
    directory = Path(path)
    metadata = read_metadata(directory)
    fmt = get_format(metadata["format"])
    label = f"{metadata['model']}/{metadata['format']}"
    if verify_key is not None:
        verify_artifact(directory, verify_key, label)
    elif not trust_code and fmt.runs_artifact_code(metadata, spec) and \
            file_digest(directory / METADATA_FILE) not in _WRITTEN_HERE:
        raise ArtifactError(f"{label}: refusing to load {directory}: {fmt.executes_code}. Load it only from a "
                            "source you trust: sign it (`deploycheck export --sign-key KEY`) and verify it "
                            "(verify_key= / --verify-key PUBLIC_KEY), or say so with trust_code=True / --trust-code")
    with quiet_exporters():
        runner = fmt.load(directory, metadata, spec, **runtime)
    return Artifact(metadata["format"], directory, metadata, runner, spec=spec)

Progress = Callable[[str], contextlib.AbstractContextManager[None]]


def no_progress(text: str) -> contextlib.AbstractContextManager[None]:
    return contextlib.nullcontext()


class ExportSession:
    """Exports on demand into `artifacts_dir/<model>/<format>`, once per process and, through a file lock in
    `lock_dir` and the on-disk export cache, once per run across pytest-xdist workers; each signed with
    `sign_key` when one is given."""

    def __init__(self, artifacts_dir: Path, lock_dir: Path, progress: Progress = no_progress,
                 sign_key: str | None = None) -> None:
        self.sign_key = sign_key
        self.artifacts_dir = Path(artifacts_dir)
        self.lock_dir = Path(lock_dir)
        self.progress = progress
        self._done: dict[tuple[str, str], Artifact | DeployCheckError] = {}

    def artifact(self, spec: ModelSpec, format_name: str) -> Artifact:
        """The artifact of one model x format; a failed export raises the same error for each test that asks."""
        key = (spec.name, format_name)
        if key not in self._done:
            self._done[key] = self._export(spec, format_name)
        outcome = self._done[key]
        if isinstance(outcome, DeployCheckError):
            raise outcome
        return outcome

    def release(self, model: str, format_name: str) -> None:
        """Drop the loaded artifact of a model x format (its runtime session and weights); its files stay on disk,
        and a later request loads them again."""
        if isinstance(self._done.pop((model, format_name), None), Artifact):
            gc.collect()

    def _export(self, spec: ModelSpec, format_name: str) -> Artifact | DeployCheckError:
        fmt = get_format(format_name)
        try:
            base = self.artifact(spec, fmt.base_format) if fmt.base_format else None
            self.lock_dir.mkdir(parents=True, exist_ok=True)
            lock = FileLock(str(self.lock_dir / f"deploycheck-export-{spec.name}-{format_name}.lock"))
            with lock, self.progress(f"exporting {spec.name}/{format_name}"):
                return export(spec, format_name, self.artifacts_dir / spec.name / format_name, base=base,
                              sign_key=self.sign_key)
        except DeployCheckError as exc:
            return exc
