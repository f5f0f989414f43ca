"""`Artifact`: one exported model on disk, its metadata sidecar, and a runner loaded back from those files.

Every artifact directory holds the format's files plus `deploycheck.json`, which records each file's sha256 and
size. `load_artifact` refuses to run anything whose files do not match their recorded hashes: a truncated or
altered file is reported by name, never turned into wrong numbers.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from deploycheck.errors import ArtifactError, InputError
from deploycheck.jsonio import write_json

if TYPE_CHECKING:
    from deploycheck.spec import ModelSpec

METADATA_FILE = "deploycheck.json"
SIGNATURE_FILE = "deploycheck.sig"  # written by `deploycheck.signing`; not listed in the sidecar it signs
METADATA_SCHEMA = 1
Runner = Callable[[list[np.ndarray]], list[np.ndarray]]


@dataclass(frozen=True)
class TensorSpec:
    """Name, shape (None on a dynamic axis) and numpy dtype of one input or output, and for an input what the model
    accepts beyond that: `axis_names` ("batch" and the spec's names of its dynamic axes: inputs sharing a name
    must agree in size), `max_shape` (the largest size of an axis, where the model has a limit such as its
    positions) and `value_range` (inclusive, for integer ids indexing a table)."""

    name: str
    shape: tuple[int | None, ...]
    dtype: str
    axis_names: tuple[str | None, ...] = ()
    max_shape: tuple[int | None, ...] = ()
    value_range: tuple[int, int] | None = None

    def to_dict(self) -> dict[str, Any]:
        dynamic = [axis for axis, size in enumerate(self.shape) if size is None]
        described: dict[str, Any] = {"name": self.name, "shape": list(self.shape), "dtype": self.dtype,
                                     "dynamic_axes": dynamic}
        if self.axis_names:
            described["axis_names"] = list(self.axis_names)
        if any(size is not None for size in self.max_shape):
            described["max_shape"] = list(self.max_shape)
        if self.value_range is not None:
            described["value_range"] = list(self.value_range)
        return described

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TensorSpec:
        value_range = data.get("value_range")
        shape = tuple(data["shape"])
        # a sidecar written before axes were named: a dynamic first axis is the batch all inputs share
        unnamed = (("batch" if shape[0] is None else None,) + (None,) * (len(shape) - 1)) if shape else ()
        return cls(name=data["name"], shape=shape, dtype=data["dtype"],
                   axis_names=tuple(data.get("axis_names", unnamed)), max_shape=tuple(data.get("max_shape", ())),
                   value_range=(int(value_range[0]), int(value_range[1])) if value_range is not None else None)

    def axis_label(self, axis: int) -> str:
        """"axis 1 (seq)": an axis by number, and by name where it has one."""
        name = self.axis_names[axis] if axis < len(self.axis_names) else None
        return f"axis {axis} ({name})" if name else f"axis {axis}"


class Artifact:
    """An exported model: `.format`, `.path`, `.metadata`, `.size_bytes`, and `.run(inputs) -> list[np.ndarray]`.

    `spec` is set when the artifact was produced from a `ModelSpec` in this process (the plugin and the
    measurement functions use it to find the reference model and the data); an artifact reopened with
    `load_artifact` has no spec and needs none to run.
    """

    def __init__(self, format: str, path: Path, metadata: dict[str, Any], runner: Runner,
                 spec: ModelSpec | None = None, reused: bool = False) -> None:
        self.format = format
        self.path = Path(path)
        self.metadata = metadata
        self.spec = spec
        self.reused = reused
        self._runner = runner
        self.inputs = [TensorSpec.from_dict(d) for d in metadata["inputs"]]
        self.outputs = [TensorSpec.from_dict(d) for d in metadata["outputs"]]

    @property
    def runner(self) -> Runner:
        """The loaded runtime call on prepared numpy inputs (what `bench` times)."""
        return self._runner

    @property
    def size_bytes(self) -> int:
        return int(self.metadata["size_bytes"])

    @property
    def model_name(self) -> str:
        return str(self.metadata["model"])

    @property
    def quantized(self) -> bool:
        return bool(self.metadata.get("quantization"))

    def run(self, inputs: Any) -> list[np.ndarray]:
        """Run the artifact on a numpy array, a torch tensor, or a tuple/list of them (in input order)."""
        return self._runner(self.prepare_inputs(inputs))

    def prepare_inputs(self, inputs: Any) -> list[np.ndarray]:
        """Inputs as contiguous numpy arrays of the declared dtypes, checked against the input specification."""
        return check_inputs(f"{self.model_name}/{self.format}", self.inputs, inputs)

    def __repr__(self) -> str:
        return f"Artifact({self.model_name}/{self.format}, {self.path}, {self.size_bytes} bytes)"


def check_inputs(label: str, declared_inputs: Sequence[TensorSpec], inputs: Any) -> list[np.ndarray]:
    """Inputs (a numpy array, a torch tensor, or a tuple/list of them, in input order) as contiguous numpy arrays
    of the declared dtypes, checked against the declared shapes, axis limits, shared axes and value ranges;
    `label` names the model and format in errors."""
    items = list(inputs) if isinstance(inputs, (tuple, list)) else [inputs]
    if len(items) != len(declared_inputs):
        raise InputError(f"{label}: expected {len(declared_inputs)} input(s) {[i.name for i in declared_inputs]}, "
                         f"got {len(items)}")
    arrays = []
    for item, declared in zip(items, declared_inputs):
        if hasattr(item, "detach"):
            item = item.detach().cpu().numpy()
        array = np.asarray(item)
        want = np.dtype(declared.dtype)
        if array.dtype != want:
            if not np.can_cast(array.dtype, want, casting="same_kind"):
                raise InputError(f"{label}: input {declared.name!r} has dtype {array.dtype}, expected {want}")
            array = array.astype(want)
        if array.ndim != len(declared.shape) or any(
                size is not None and size != got for size, got in zip(declared.shape, array.shape)):
            shown = ", ".join("?" if s is None else str(s) for s in declared.shape)
            raise InputError(f"{label}: input {declared.name!r} has shape {list(array.shape)}, expected [{shown}] "
                             "(? is dynamic)")
        _check_limits(label, declared, array)
        arrays.append(np.ascontiguousarray(array))
    _check_shared_axes(label, declared_inputs, arrays)
    return arrays


def _check_limits(label: str, declared: TensorSpec, array: np.ndarray) -> None:
    """An input within its axes' limits (none empty beyond the batch) and its value range."""
    for axis, (size, got) in enumerate(zip(declared.shape, array.shape)):
        if size is None and axis > 0 and got == 0:
            raise InputError(f"{label}: input {declared.name!r} is empty on {declared.axis_label(axis)}")
        limit = declared.max_shape[axis] if axis < len(declared.max_shape) else None
        if limit is not None and got > limit:
            raise InputError(f"{label}: input {declared.name!r} has {got} on {declared.axis_label(axis)}; the model "
                             f"accepts at most {limit}")
    if declared.value_range is not None and array.size:
        low, high = declared.value_range
        smallest, largest = array.min(), array.max()
        if smallest < low or largest > high:
            value = int(smallest) if smallest < low else int(largest)
            raise InputError(f"{label}: input {declared.name!r} holds {value}; the model accepts {low}..{high} "
                             f"(ids indexing a table of {high - low + 1} rows, e.g. a vocabulary)")


def _check_shared_axes(label: str, declared_inputs: Sequence[TensorSpec], arrays: Sequence[np.ndarray]) -> None:
    """Axes of the same name (the batch, a sequence shared by ids and mask) the same size in every input."""
    seen: dict[str, tuple[str, int]] = {}
    for declared, array in zip(declared_inputs, arrays):
        for axis, name in enumerate(declared.axis_names):
            if name is None or axis >= array.ndim:
                continue
            first = seen.setdefault(name, (declared.name, int(array.shape[axis])))
            if first[1] != array.shape[axis]:
                raise InputError(f"{label}: input {declared.name!r} has {array.shape[axis]} on "
                                 f"{declared.axis_label(axis)} where {first[0]!r} has {first[1]}")


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def package_versions(packages: Iterable[str]) -> dict[str, str | None]:
    """Versions of Python, deploycheck, numpy and `packages` (a format's: they decide what an export contains, so
    they are recorded in its sidecar and are part of its cache key); None for a package that is not installed."""
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for package in sorted({"deploycheck", "numpy", *packages}):
        try:
            versions[package] = importlib_metadata.version(package)
        except importlib_metadata.PackageNotFoundError:
            versions[package] = None
    return versions


def write_metadata(directory: Path, format_name: str, spec: ModelSpec, details: dict[str, Any],
                   inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec], cache_key: str,
                   packages: Iterable[str], in_memory_bytes: int = 0) -> dict[str, Any]:
    """Hash every file of the artifact and write the sidecar. `in_memory_bytes` sizes formats with no files."""
    files: dict[str, dict[str, Any]] = {}
    for path in sorted(directory.iterdir()):
        if path.is_file() and path.name not in (METADATA_FILE, SIGNATURE_FILE):
            files[path.name] = {"sha256": file_digest(path), "size": path.stat().st_size}
    metadata = {
        "schema": METADATA_SCHEMA,
        "format": format_name,
        "model": spec.name,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "cache_key": cache_key,
        "files": files,
        "size_bytes": sum(f["size"] for f in files.values()) or in_memory_bytes,
        "versions": package_versions(packages),
        "inputs": [t.to_dict() for t in inputs],
        "outputs": [t.to_dict() for t in outputs],
        "dynamic_batch": spec.dynamic_batch,
        **details,
    }
    write_json(directory / METADATA_FILE, metadata)
    return metadata


def read_metadata(path: Path) -> dict[str, Any]:
    """The sidecar of an artifact directory, with every recorded file verified against its hash."""
    path = Path(path)
    sidecar = path / METADATA_FILE
    if not sidecar.is_file():
        raise ArtifactError(f"{path} is not a deploycheck artifact: {METADATA_FILE} is missing")
    try:
        metadata: dict[str, Any] = json.loads(sidecar.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"{sidecar} is unreadable: {exc}") from exc
    if metadata.get("schema") != METADATA_SCHEMA:
        raise ArtifactError(f"{sidecar} has schema {metadata.get('schema')!r}; this deploycheck reads "
                            f"{METADATA_SCHEMA}")
    files = metadata.get("files")
    if not isinstance(files, dict):
        raise ArtifactError(f"{sidecar}: 'files' must map each file of the artifact to its sha256 and size")
    unlisted = sorted(entry.name for entry in path.iterdir()
                      if entry.name not in (METADATA_FILE, SIGNATURE_FILE) and entry.name not in files)
    if unlisted:
        raise ArtifactError(f"{metadata.get('model')}/{metadata.get('format')}: {path} holds {unlisted}, which its "
                            f"{METADATA_FILE} does not list; an artifact is exactly the files it records (re-export "
                            "it, or remove what was added)")
    for name, recorded in files.items():
        file = path / name
        if not file.is_file():
            raise ArtifactError(f"{metadata.get('model')}/{metadata.get('format')}: file {file} is missing")
        size = file.stat().st_size
        if size != recorded["size"]:
            raise ArtifactError(f"{metadata.get('model')}/{metadata.get('format')}: file {file} has {size} bytes, "
                                f"{recorded['size']} were recorded (truncated or replaced)")
        if file_digest(file) != recorded["sha256"]:
            raise ArtifactError(f"{metadata.get('model')}/{metadata.get('format')}: file {file} does not match its "
                                "recorded sha256 (altered or corrupted); re-export it")
    return metadata


@contextlib.contextmanager
def staged_directory(target: Path) -> Iterator[Path]:
    """A new, empty directory beside `target` to write an artifact into. When the block ends without an error it
    replaces `target` whole (the old one removed only once the new one is in place); otherwise it is removed. An
    export that fails, or a process killed while writing, never replaces or half-writes `target`."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    mask = os.umask(0)
    os.umask(mask)
    staging.chmod(0o777 & ~mask)  # mkdtemp makes it private; an artifact is shared like any other output
    try:
        yield staging
        old = None
        if target.exists():
            old = target.with_name(f".{target.name}.old-{staging.name}")
            target.rename(old)
        staging.rename(target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
