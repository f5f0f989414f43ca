"""What is served: the artifacts found under a path (format read from each verified sidecar, only servable
formats loaded), each wrapped as a `ServedModel` with its batcher and monitor, and the release figures from
`baselines/` that its monitor is held to."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from deploycheck.artifact import METADATA_FILE, Artifact, read_metadata
from deploycheck.baseline.compare import smallest_batch
from deploycheck.baseline.store import BaselineStore
from deploycheck.errors import DeployCheckError
from deploycheck.exporting import load_artifact
from deploycheck.formats import format_names, get_format
from deploycheck.generation.artifact import SIDECAR, read_sidecar
from deploycheck.generation.decoders import Decoder
from deploycheck.generation.formats import load_decoder
from deploycheck.generation.spec import GENERATIVE_FORMATS
from deploycheck.monitor import Monitor
from deploycheck.server.batcher import Batcher
from deploycheck.server.protocol import datatype_of
from deploycheck.signing import verify_artifact

LOGGER = logging.getLogger("deploycheck.server")


def servable_formats() -> list[str]:
    """The formats `Format.servable` allows: loadable from their directory alone, without model code."""
    return [name for name in format_names() if get_format(name).servable]


@dataclass
class Catalog:
    """What a path holds to serve: single-pass artifacts and generative decoders (with their sidecars), each by
    the name it is served as."""

    artifacts: dict[str, Artifact] = field(default_factory=dict)
    decoders: dict[str, tuple[Decoder, dict[str, Any]]] = field(default_factory=dict)


def discover(path: str | os.PathLike[str], verify_key: str | os.PathLike[str] | None = None,
             trust_code: bool = False, threads: int | None = None) -> Catalog:
    """The artifacts under `path` (one artifact directory, or a tree of them), named by model, or
    `model-format` when a model has several servable formats (its metrics keep the model's name, with the
    format in a label, and requests may also name the model and the format apart). The format is read from each
    verified sidecar (never from a directory's name) before anything is loaded: a format that needs model code
    is never served, one whose loading runs the artifact's code (TorchScript, `.pt2`) only when signed by
    `verify_key`'s owner or with `trust_code`; with `verify_key`, every artifact must verify. What cannot be
    served is refused when named directly and skipped, with a log line saying why, in a tree. `threads` fixes
    each runtime's intra-op thread count (ONNX Runtime's pool without spinning threads; torch's process-wide
    count). Generative artifacts (a `deploycheck-generative.json` sidecar) are loaded as decoders."""
    root = Path(path)
    single = (root / METADATA_FILE).is_file() or (root / SIDECAR).is_file()
    directories = [root] if single else sorted({p.parent for name in (METADATA_FILE, SIDECAR)
                                                for p in root.rglob(name)})
    if not directories:
        raise DeployCheckError(f"{root}: no artifact (a directory with {METADATA_FILE} or {SIDECAR}) found")
    artifacts: list[Artifact] = []
    decoders: list[tuple[Decoder, dict[str, Any]]] = []
    for directory in directories:
        try:
            if (directory / SIDECAR).is_file():
                decoders.append(_load_decoder(directory, verify_key, trust_code, threads))
                LOGGER.info("loaded %s from %s", decoders[-1][0].label, directory)
            else:
                artifacts.append(_load_artifact(directory, verify_key, trust_code, threads))
                LOGGER.info("loaded %s/%s from %s", artifacts[-1].model_name, artifacts[-1].format, directory)
        except DeployCheckError as exc:
            if single:
                raise
            LOGGER.warning("skipped %s", exc)
    if not artifacts and not decoders:
        generative = ", ".join(f for f in GENERATIVE_FORMATS if f != "eager")
        raise DeployCheckError(f"{root}: nothing servable found (see the skipped lines above; servable formats: "
                               f"{', '.join(servable_formats())}; generative: {generative})")
    if threads is not None and (decoders or any(not get_format(a.format).threads_fixed_at_load for a in artifacts)):
        import torch  # only when a torch format is served: its thread count is a process setting

        torch.set_num_threads(threads)
    named = [(a.model_name, a.format) for a in artifacts] + [(d["model"], d["format"]) for _, d in decoders]
    models = [model for model, _ in named]

    def served_as(model: str, format_name: str) -> str:
        return model if models.count(model) == 1 else f"{model}-{format_name}"

    return Catalog({served_as(a.model_name, a.format): a for a in artifacts},
                   {served_as(d["model"], d["format"]): (decoder, d) for decoder, d in decoders})


def _load_artifact(directory: Path, verify_key: str | os.PathLike[str] | None, trust_code: bool,
                   threads: int | None) -> Artifact:
    metadata = read_metadata(directory)
    if metadata.get("format") not in servable_formats():
        raise DeployCheckError(f"{directory}: format {metadata.get('format')!r} is not served (it needs "
                               f"model code); serve one of: {', '.join(servable_formats())}")
    runtime: dict[str, Any] = {} if threads is None else {
        "intra_op_threads": threads, "inter_op_threads": 1, "spinning": False}
    return load_artifact(directory, verify_key=verify_key, trust_code=trust_code, **runtime)


def _load_decoder(directory: Path, verify_key: str | os.PathLike[str] | None, trust_code: bool,
                  threads: int | None) -> tuple[Decoder, dict[str, Any]]:
    """A generative artifact, its files checked against its sidecar and, with `verify_key`, its signature."""
    details = read_sidecar(directory)
    if verify_key is not None:
        verify_artifact(directory, verify_key, f"{details['model']}/{details['format']}")
    verified = trust_code or verify_key is not None  # a signature checked above is the trust a .pt2 needs
    return load_decoder(directory, threads=threads or 1, trust_code=verified), details


@dataclass
class ServedModel:
    name: str
    artifact: Artifact
    monitor: Monitor
    executor: ThreadPoolExecutor
    batcher: Batcher | None = None
    ready: bool = False
    dynamic_batch: bool = field(init=False)

    def __post_init__(self) -> None:
        self.dynamic_batch = all(spec.shape and spec.shape[0] is None for spec in self.artifact.inputs)

    @property
    def labels(self) -> tuple[str, str]:
        """Its metrics' (model, format) labels: the model's own name whatever it is served as."""
        return self.artifact.model_name, self.artifact.format

    async def infer(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        if self.batcher is not None and self.dynamic_batch:
            return await self.batcher.submit(inputs)
        return await asyncio.get_running_loop().run_in_executor(self.executor, self.artifact.runner, inputs)

    def metadata(self) -> dict[str, Any]:
        """The Open Inference Protocol model metadata (-1 on dynamic axes)."""
        def tensors(specs: Sequence[Any]) -> list[dict[str, Any]]:
            return [{"name": s.name, "datatype": datatype_of(s.dtype), "shape": [-1 if d is None else d
                                                                                 for d in s.shape]} for s in specs]
        return {"name": self.name, "versions": ["1"], "platform": get_format(self.artifact.format).platform,
                "inputs": tensors(self.artifact.inputs), "outputs": tensors(self.artifact.outputs),
                "parameters": {"format": self.artifact.format, "sha256": self.artifact.metadata.get("files")}}


def monitor_baselines(directory: Path, artifacts: Mapping[str, Artifact],
                       queue_delay_ms: float) -> dict[str, dict[str, Any]]:
    """Per served model, from its stored baseline: the p95 latency a request should see (the release batch-1 p95
    plus the time it may wait for a batch), the release accuracy, the distribution of predicted classes on the
    evaluation data (what prediction drift is measured against) and the calibration data's input profile (what
    input drift is measured against)."""
    store = BaselineStore(directory)
    result: dict[str, dict[str, Any]] = {}
    for name, artifact in artifacts.items():
        record = store.read(artifact.model_name, artifact.format)
        if record is None:
            continue
        figures: dict[str, Any] = {}
        p95_ms = smallest_batch(record.get("latency")).get("p95_ms")
        if p95_ms is not None:
            figures["p95_ms"] = p95_ms + queue_delay_ms
        accuracy = record.get("accuracy") or {}
        if accuracy.get("value") is not None:
            figures["accuracy"] = accuracy["value"]
        if accuracy.get("input_profile"):
            figures["input_profile"] = accuracy["input_profile"]
        if accuracy.get("class_distribution"):
            figures["class_distribution"] = {int(k) if str(k).lstrip("-").isdigit() else k: v
                                             for k, v in accuracy["class_distribution"].items()}
        result[name] = figures
    return result


def warmup_inputs(artifact: Artifact) -> list[np.ndarray]:
    return [np.zeros([1 if d is None else d for d in s.shape], dtype=s.dtype) for s in artifact.inputs]
