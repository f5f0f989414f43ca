"""The REST server: exported artifacts over HTTP, with seed endpoints and the Open Inference Protocol v2.

`create_app(path_or_artifacts)` returns a Starlette (ASGI) app; `deploycheck serve` runs it on uvicorn.
Artifacts are loaded through their metadata with file hashes verified; only formats that need no pickled
Python object are served (ONNX Runtime, TorchScript, torch.export programs).

Concurrent requests for a model are merged by a `Batcher` (up to `max_batch_size` rows within
`max_queue_delay_ms`), run in a worker thread off the event loop, and split back so each caller gets exactly its
own rows. Bad input is answered with a 4xx naming what was expected; an inference failure with a 500 carrying
an error id (also logged), counted by the monitor; the server keeps serving after each.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from deploycheck.artifact import Artifact
from deploycheck.formats import get_format
from deploycheck.monitor import Monitor
from deploycheck.prometheus import CONTENT_TYPE, PrometheusMetrics
from deploycheck.server.batcher import Batcher
from deploycheck.server.protocol import (
    JSONResponse,
    RequestError,
    datatype_of,
    json_body,
    parse_json,
    prepare_inputs,
    softmax,
    tensor_data,
    top1,
)
from deploycheck.server.repository import ServedModel, discover, monitor_baselines, warmup_inputs

LOGGER = logging.getLogger("deploycheck.server")
DEFAULT_MAX_BODY = 16 * 1024 * 1024


class BodyLimit:
    """ASGI middleware refusing request bodies above `max_bytes` with 413: at once when Content-Length says so,
    otherwise while the body streams in (uvicorn sets no limit of its own)."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for key, value in scope.get("headers", []):
            if key == b"content-length" and value.isdigit() and int(value) > self.max_bytes:
                await _send_error(send, 413, f"request body of {int(value)} bytes exceeds the limit of "
                                             f"{self.max_bytes} bytes")
                return
        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise _TooLarge(413, f"request body exceeds the limit of {self.max_bytes} bytes")
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _TooLarge:
            if not started:
                await _send_error(send, 413, f"request body exceeds the limit of {self.max_bytes} bytes")


class _TooLarge(RequestError):
    """Raised while reading a body past the limit: endpoints answer it as a 413 like any refused request."""


async def _send_error(send: Send, status: int, message: str) -> None:
    body = orjson.dumps({"error": message})
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


class InferenceServer:
    """The state behind the app: served models, their monitors and metrics, and the request handlers."""

    def __init__(self, artifacts: Mapping[str, Artifact] | Callable[[], Mapping[str, Artifact]],
                 max_batch_size: int = 32, max_queue_delay_ms: float = 0.0, baselines: Path | None = None,
                 window_s: float = 60.0) -> None:
        self._artifacts = artifacts
        self.max_batch_size = max_batch_size
        self.max_delay_s = max_queue_delay_ms / 1e3
        self.baselines = baselines
        self.window_s = window_s
        self.models: dict[str, ServedModel] = {}
        self.metrics = PrometheusMetrics()
        self.started = time.time()

    @property
    def ready(self) -> bool:
        return bool(self.models) and all(m.ready for m in self.models.values())

    @contextlib.asynccontextmanager
    async def lifespan(self, app: Starlette) -> AsyncIterator[None]:
        """Load and warm up every model before readiness; stop the batchers after in-flight work drains."""
        loop = asyncio.get_running_loop()
        artifacts = self._artifacts() if callable(self._artifacts) else self._artifacts
        release = (monitor_baselines(self.baselines, artifacts, self.max_delay_s * 1e3)
                   if self.baselines is not None else {})
        for name, artifact in artifacts.items():
            executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"deploycheck-{name}")
            served = ServedModel(name, artifact, Monitor(name, window_s=self.window_s, baseline=release.get(name)),
                                 executor)
            if self.max_batch_size > 1:
                served.batcher = Batcher(artifact.runner, self.max_batch_size, self.max_delay_s, executor,
                                         functools.partial(self.metrics.observe_batch, name))
                served.batcher.start()
            self.models[name] = served
        for served in self.models.values():
            await loop.run_in_executor(served.executor, served.artifact.runner, warmup_inputs(served.artifact))
            served.ready = True
        LOGGER.info("serving %s", ", ".join(f"{n} ({m.artifact.format})" for n, m in self.models.items()))
        try:
            yield
        finally:
            for served in self.models.values():
                served.ready = False
                if served.batcher is not None:
                    await served.batcher.stop()
                served.executor.shutdown(wait=True)

    def model(self, name: str | None) -> ServedModel:
        if name is None:
            if len(self.models) != 1:
                raise RequestError(400, f"several models are served ({', '.join(self.models)}): name one with "
                                        "?model=NAME or use /v2/models/NAME/infer")
            return next(iter(self.models.values()))
        if name not in self.models:
            raise RequestError(404, f"unknown model {name!r}; served: {', '.join(self.models)}")
        return self.models[name]

    async def run(self, served: ServedModel, inputs: list[np.ndarray], request_id: str
                  ) -> tuple[list[np.ndarray], float]:
        """Infer and count the request in the monitor and the metrics; an inference failure becomes a 500 with an
        error id."""
        if not served.ready:
            raise RequestError(503, f"model {served.name!r} is not ready")
        rows = int(inputs[0].shape[0]) if inputs[0].ndim else 1
        start = time.perf_counter()
        try:
            outputs = await served.infer(inputs)
        except Exception as exc:
            latency_ms = (time.perf_counter() - start) * 1e3
            error_id = uuid.uuid4().hex[:12]
            LOGGER.exception("inference failed on %s (error id %s, request %s)", served.name, error_id, request_id)
            served.monitor.record(latency_ms, rows, error=exc, request_id=request_id)
            self.metrics.observe(served.name, latency_ms, rows, error=type(exc).__name__)
            raise RequestError(500, f"inference failed (error id {error_id})") from exc
        latency_ms = (time.perf_counter() - start) * 1e3
        prediction = top1(outputs[0])
        served.monitor.record(latency_ms, rows, prediction=prediction[0] if len(prediction) == 1 else None,
                              request_id=request_id)
        served.monitor.record_inputs({spec.name: array for spec, array in zip(served.artifact.inputs, inputs)})
        self.metrics.observe(served.name, latency_ms, rows)
        return outputs, latency_ms

    def reject(self, served: ServedModel | None, status: int) -> None:
        """Count a refused request (bad input) in the metrics, so /metrics shows every request received."""
        if served is not None:
            self.metrics.observe(served.name, 0.0, 0, error=f"http_{status}")

    async def predict(self, request: Request) -> Response:
        served = self.model(request.query_params.get("model"))
        body = await json_body(request)
        if not isinstance(body, dict) or ("input" not in body and "inputs" not in body):
            raise RequestError(400, 'expected a JSON object {"input": [...]} (or {"inputs": {name: [...]}} for '
                                    f"several inputs: {[s.name for s in served.artifact.inputs]})")
        given = body.get("inputs", body.get("input"))
        named = given if isinstance(given, dict) else {served.artifact.inputs[0].name: given}
        if not isinstance(given, dict) and len(served.artifact.inputs) > 1:
            raise RequestError(400, f"model {served.name!r} has inputs {[s.name for s in served.artifact.inputs]}; "
                                    'send {"inputs": {name: [...]}}')
        inputs = prepare_inputs(served.name, served.artifact, {name: (value, None) for name, value in named.items()})
        request_id = str(body.get("id") or uuid.uuid4().hex)
        outputs, latency_ms = await self.run(served, inputs, request_id)
        result: dict[str, Any] = {"request_id": request_id, "model": served.name,
                                  "latency_ms": round(latency_ms, 4), "predictions": top1(outputs[0]).tolist(),
                                  "outputs": {s.name: o for s, o in zip(served.artifact.outputs, outputs)}}
        if body.get("softmax") or request.query_params.get("softmax") in ("1", "true"):
            result["probabilities"] = softmax(outputs[0])
        return JSONResponse(result)

    async def infer_v2(self, request: Request) -> Response:
        served = self.model(request.path_params["name"])
        header_length = request.headers.get("inference-header-content-length")
        raw = await request.body()
        binary = b""
        if header_length is not None:
            if not header_length.isdigit() or int(header_length) > len(raw):
                raise RequestError(400, "Inference-Header-Content-Length does not fit the body")
            raw, binary = raw[:int(header_length)], raw[int(header_length):]
        body = parse_json(raw)
        if not isinstance(body, dict) or not isinstance(body.get("inputs"), list):
            raise RequestError(400, 'expected {"inputs": [{"name", "shape", "datatype", "data"}, ...]}')
        named: dict[str, tuple[Any, list[int] | None]] = {}
        offset = 0
        for position, tensor in enumerate(body["inputs"]):
            if not isinstance(tensor, dict) or not isinstance(tensor.get("name"), str):
                raise RequestError(400, f"inputs[{position}] is not an object with a name")
            value, offset = tensor_data(tensor, binary, offset)
            named[tensor["name"]] = (value, tensor.get("shape"))
        inputs = prepare_inputs(served.name, served.artifact, named)
        request_id = str(body.get("id") or uuid.uuid4().hex)
        outputs, _ = await self.run(served, inputs, request_id)
        requested = body.get("outputs") or [{"name": s.name} for s in served.artifact.outputs]
        by_name = {s.name: o for s, o in zip(served.artifact.outputs, outputs)}
        all_binary = bool((body.get("parameters") or {}).get("binary_data_output"))
        results, chunks = [], []
        for item in requested:
            name = item.get("name") if isinstance(item, dict) else None
            if name not in by_name:
                raise RequestError(400, f"unknown output {name!r}; outputs: {list(by_name)}")
            array = np.ascontiguousarray(by_name[name])
            entry: dict[str, Any] = {"name": name, "shape": list(array.shape), "datatype": datatype_of(array.dtype)}
            if all_binary or (item.get("parameters") or {}).get("binary_data"):
                chunks.append(array.tobytes())
                entry["parameters"] = {"binary_data_size": len(chunks[-1])}
            else:
                entry["data"] = array.reshape(-1)
            results.append(entry)
        payload = orjson.dumps({"model_name": served.name, "model_version": "1", "id": request_id,
                                "outputs": results}, option=orjson.OPT_SERIALIZE_NUMPY)
        if not chunks:
            return Response(payload, media_type="application/json")
        return Response(payload + b"".join(chunks), media_type="application/octet-stream",
                        headers={"Inference-Header-Content-Length": str(len(payload))})

    async def feedback(self, request: Request) -> Response:
        body = await json_body(request)
        if not isinstance(body, dict) or "request_id" not in body or "label" not in body:
            raise RequestError(400, 'expected {"request_id": ..., "label": ...}')
        served = self.model(body.get("model"))
        matched = served.monitor.record_ground_truth(str(body["request_id"]), body["label"])
        return JSONResponse({"matched": matched})

    async def metrics_endpoint(self, request: Request) -> Response:
        """Prometheus text: the monitors' window figures copied into the gauges, then the registry."""
        for name, served in self.models.items():
            self.metrics.refresh(name, served.monitor.metrics())
        return Response(self.metrics.render(), media_type=CONTENT_TYPE)

    def app(self, max_body_bytes: int = DEFAULT_MAX_BODY) -> ASGIApp:
        def handle(method: Callable[[Request], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
            async def endpoint(request: Request) -> Response:
                served = None
                try:
                    name = request.path_params.get("name") or request.query_params.get("model")
                    served = self.models.get(name) if name else (
                        next(iter(self.models.values())) if len(self.models) == 1 else None)
                    return await method(request)
                except RequestError as exc:
                    if exc.status < 500:
                        self.reject(served, exc.status)
                    return JSONResponse({"error": str(exc)}, status_code=exc.status)
            return endpoint

        def sync(build: Callable[[Request], Any], status: Callable[[Request], int] = lambda r: 200
                 ) -> Callable[[Request], Awaitable[Response]]:
            async def endpoint(request: Request) -> Response:
                try:
                    return JSONResponse(build(request), status_code=status(request))
                except RequestError as exc:
                    return JSONResponse({"error": str(exc)}, status_code=exc.status)
            return endpoint

        ready_status: Callable[[Request], int] = lambda r: 200 if self.ready else 503  # noqa: E731
        routes = [
            Route("/predict", handle(self.predict), methods=["POST"]),
            Route("/feedback", handle(self.feedback), methods=["POST"]),
            Route("/health", sync(lambda r: {"status": "ready" if self.ready else "loading",
                                             "models": {n: m.ready for n, m in self.models.items()},
                                             "uptime_s": round(time.time() - self.started, 1)}, ready_status)),
            Route("/health/live", sync(lambda r: {"live": True})),
            Route("/health/ready", sync(lambda r: {"ready": self.ready}, ready_status)),
            Route("/metrics", self.metrics_endpoint),
            Route("/alerts", sync(lambda r: {n: [_alert_json(a) for a in m.monitor.alerts()]
                                             for n, m in self.models.items()})),
            Route("/v2", sync(lambda r: {"name": "deploycheck", "version": _version(), "extensions": [
                "binary_tensor_data"]})),
            Route("/v2/health/live", sync(lambda r: {"live": True})),
            Route("/v2/health/ready", sync(lambda r: {"ready": self.ready}, ready_status)),
            Route("/v2/models", sync(lambda r: {"models": [
                {"name": n, "versions": ["1"], "platform": get_format(m.artifact.format).platform,
                 "state": "READY" if m.ready else "UNAVAILABLE"} for n, m in self.models.items()]})),
            Route("/v2/models/{name}", sync(lambda r: self.model(r.path_params["name"]).metadata())),
            Route("/v2/models/{name}/ready", sync(
                lambda r: {"name": r.path_params["name"], "ready": self.model(r.path_params["name"]).ready},
                lambda r: 200 if self.models.get(r.path_params["name"]) and
                self.models[r.path_params["name"]].ready else 400)),
            Route("/v2/models/{name}/infer", handle(self.infer_v2), methods=["POST"]),
        ]
        return BodyLimit(Starlette(routes=routes, lifespan=self.lifespan), max_body_bytes)


def create_app(source: str | os.PathLike[str] | Mapping[str, Artifact], max_batch_size: int = 32,
               max_queue_delay_ms: float = 0.0, max_body_mb: float = 16.0, baselines: Path | None = None,
               window_s: float = 60.0) -> ASGIApp:
    """The ASGI app serving `source`: a path (one artifact directory or a tree of them) or `{name: Artifact}`.
    Paths are loaded in the app's startup, so readiness reports loading honestly. `baselines` (a `baselines/`
    directory) gives each model's monitor the release figures its alerts are held to."""
    if isinstance(source, Mapping):
        artifacts: Mapping[str, Artifact] | Callable[[], Mapping[str, Artifact]] = dict(source)
    else:
        path = Path(source)
        artifacts = lambda: discover(path)  # noqa: E731
    server = InferenceServer(artifacts, max_batch_size, max_queue_delay_ms, baselines, window_s)
    return server.app(int(max_body_mb * 1024 * 1024))


def app_from_environment() -> ASGIApp:
    """The app described by `DEPLOYCHECK_SERVE_*` variables: how `deploycheck serve --workers N` starts each
    worker process (uvicorn imports the app by name in every worker)."""
    baselines = os.environ.get("DEPLOYCHECK_SERVE_BASELINES")
    return create_app(os.environ["DEPLOYCHECK_SERVE_PATH"],
                      max_batch_size=int(os.environ.get("DEPLOYCHECK_SERVE_MAX_BATCH_SIZE", "32")),
                      max_queue_delay_ms=float(os.environ.get("DEPLOYCHECK_SERVE_MAX_QUEUE_DELAY_MS", "0")),
                      max_body_mb=float(os.environ.get("DEPLOYCHECK_SERVE_MAX_BODY_MB", "16")),
                      baselines=Path(baselines) if baselines else None)


def _alert_json(alert: Any) -> dict[str, Any]:
    """An alert as JSON, with its monitor-clock readings also as UTC wall-clock timestamps (ISO 8601)."""
    offset = time.time() - time.monotonic()
    data = dict(vars(alert))
    for key in ("first_seen", "last_seen"):
        moment = datetime.fromtimestamp(data[key] + offset, tz=timezone.utc)
        data[f"{key}_utc"] = moment.isoformat(timespec="seconds")
    return data


def _version() -> str:
    from importlib.metadata import version

    return version("deploycheck")


