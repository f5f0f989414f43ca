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
import multiprocessing
import os
import signal
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from importlib.metadata import version
from pathlib import Path
from types import FrameType
from typing import Any

import numpy as np
import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from deploycheck.artifact import Artifact
from deploycheck.formats import get_format
from deploycheck.monitor import Monitor
from deploycheck.prometheus import CONTENT_TYPE, PrometheusMetrics
from deploycheck.server.batcher import Batcher
from deploycheck.server.generate import ServedDecoder, generate, generate_stream
from deploycheck.server.limits import BodyLimit
from deploycheck.server.openapi import openapi_document
from deploycheck.server.protocol import (
    JSONResponse,
    RequestError,
    datatype_of,
    decode_infer,
    decode_predict,
    json_body,
    json_object,
    softmax,
    top1,
)
from deploycheck.server.repository import Catalog, ServedModel, discover, monitor_baselines, warmup_inputs
from deploycheck.server.settings import ServeSettings

LOGGER = logging.getLogger("deploycheck.server")
INLINE_DECODE_BYTES = 1024 * 1024  # larger request bodies are decoded in another process
UNKNOWN_MODEL = "(none)"  # the model label of refused requests that name no served model


class InferenceServer:
    """The state behind the app: served models, their monitors and metrics, and the request handlers."""

    def __init__(self, catalog: Callable[[], Catalog], settings: ServeSettings) -> None:
        self._catalog = catalog
        self.settings = settings
        self.max_batch_size = settings.max_batch_size
        self.max_delay_s = settings.max_queue_delay_ms / 1e3
        self.baselines = Path(settings.baselines) if settings.baselines else None
        self.window_s = settings.window_s
        self.models: dict[str, ServedModel] = {}
        self.generators: dict[str, ServedDecoder] = {}
        self.metrics = PrometheusMetrics()
        self.started = time.time()
        self.draining = False
        self.decoders: ProcessPoolExecutor | None = None  # started on the first large body

    @property
    def ready(self) -> bool:
        served = self.all_served()
        return not self.draining and bool(served) and all(m.ready for m in served.values())

    def drain(self) -> None:
        """Report not ready from now on (what SIGTERM does first), so load balancers stop sending requests while
        those already sent are still answered."""
        self.draining = True
        LOGGER.info("draining: readiness reports 503 for %.1f s, then the listener closes", self.settings.drain_s)

    def _drain_on_sigterm(self) -> None:
        """Put `drain` in front of the server's own SIGTERM handling (uvicorn's, installed before startup): the
        first SIGTERM drains, and `drain_s` later is passed on, when uvicorn closes the listener and finishes
        in-flight requests. Only the main thread may set signal handlers (not an in-process test client)."""
        if self.settings.drain_s <= 0 or threading.current_thread() is not threading.main_thread():
            return
        previous = signal.getsignal(signal.SIGTERM)
        if not callable(previous):
            return

        def on_sigterm(sig: int, frame: FrameType | None) -> None:
            if self.draining:
                previous(sig, frame)
                return
            self.drain()
            timer = threading.Timer(self.settings.drain_s, previous, (sig, frame))
            timer.daemon = True
            timer.start()

        signal.signal(signal.SIGTERM, on_sigterm)

    @contextlib.asynccontextmanager
    async def lifespan(self, app: Starlette) -> AsyncIterator[None]:
        """Load and warm up every model before readiness; stop the batchers after in-flight work drains."""
        loop = asyncio.get_running_loop()
        catalog = self._catalog()
        artifacts = catalog.artifacts
        release = (monitor_baselines(self.baselines, artifacts, self.max_delay_s * 1e3)
                   if self.baselines is not None else {})
        for name, artifact in artifacts.items():
            executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"deploycheck-{name}")
            monitor = Monitor(name, window_s=self.window_s, baseline=release.get(name),
                              learn_latency_requests=self.settings.learn_latency_requests)
            served = ServedModel(name, artifact, monitor, executor)
            if self.max_batch_size > 1:
                served.batcher = Batcher(artifact.runner, self.max_batch_size, self.max_delay_s, executor,
                                         functools.partial(self.metrics.observe_batch, served.labels))
                served.batcher.start()
            self.models[name] = served
        for name, (decoder, details) in catalog.decoders.items():
            self.generators[name] = ServedDecoder(
                name, decoder, details, Monitor(name, window_s=self.window_s), ThreadPoolExecutor(
                    max_workers=1, thread_name_prefix=f"deploycheck-{name}"), self.settings.max_sequences)
        for served in self.models.values():
            await loop.run_in_executor(served.executor, served.artifact.runner, warmup_inputs(served.artifact))
            served.ready = True
        for generator in self.generators.values():
            await loop.run_in_executor(generator.executor, generator.warm_up)
            generator.ready = True
        LOGGER.info("serving %s", ", ".join([*(f"{n} ({m.artifact.format})" for n, m in self.models.items()),
                                             *(f"{n} ({g.details['format']}, generative)"
                                               for n, g in self.generators.items())]))
        self._drain_on_sigterm()
        try:
            yield
        finally:
            if self.decoders is not None:  # waited for: uvicorn ends with SIGTERM's default action, no atexit
                self.decoders.shutdown(wait=True, cancel_futures=True)
            for served in self.models.values():
                served.ready = False
                if served.batcher is not None:
                    await served.batcher.stop()
                served.executor.shutdown(wait=True)
            for generator in self.generators.values():
                generator.ready = False
                generator.executor.shutdown(wait=True)

    def model(self, name: Any, format_name: Any = None) -> ServedModel:
        """The served model a request names: by what it is served as (`digits_cnn`, `distil_clf-onnx`), or by the
        model's name and a format (`?format=onnx`, or `/v2/models/NAME/versions/FORMAT`); none when only one is
        served."""
        for value, what in ((name, "model"), (format_name, "format")):
            if value is not None and not isinstance(value, str):
                raise RequestError(400, f"{what} must be a {what}'s name (a string), got {type(value).__name__}")
        if name is None:
            if len(self.models) != 1:
                raise RequestError(400, f"several models are served ({', '.join(self.models)}): name one with "
                                        "?model=NAME or use /v2/models/NAME/infer")
            name = next(iter(self.models))
        matches = [m for key, m in self.models.items() if key == name or m.artifact.model_name == name]
        if format_name is not None and format_name != "1":  # "1": the version OIP clients send by default
            matches = [m for m in matches if m.artifact.format == format_name]
        if not matches and name in self.generators:
            raise RequestError(400, f"{name!r} is a generative model: POST /v2/models/{name}/generate or "
                                    f"/v2/models/{name}/generate_stream")
        if not matches:
            wanted = f"{name!r} in format {format_name!r}" if format_name not in (None, "1") else repr(name)
            raise RequestError(404, f"unknown model {wanted}; served: {', '.join(self.models)}")
        if len(matches) > 1:
            raise RequestError(400, f"model {name!r} is served in formats "
                                    f"{', '.join(m.artifact.format for m in matches)}: add ?format=FORMAT, or name "
                                    f"one of {', '.join(m.name for m in matches)}")
        return matches[0]

    def requested(self, request: Request, body: Mapping[str, Any] | None = None) -> ServedModel:
        """The served model a request names in its path, its query or (for /feedback) its body."""
        body = body or {}
        name = request.path_params.get("name", request.query_params.get("model", body.get("model")))
        return self.model(name, request.path_params.get("version", request.query_params.get("format",
                                                                                           body.get("format"))))

    def generator(self, request: Request) -> ServedDecoder:
        """The generative model a generate request names in its path."""
        name = request.path_params["name"]
        version = request.path_params.get("version", "1")
        served = self.generators.get(name)
        if served is not None and version not in ("1", served.details["format"]):
            raise RequestError(404, f"{name!r} is served in format {served.details['format']!r}, not {version!r}")
        if served is None:
            if any(key == name or m.artifact.model_name == name for key, m in self.models.items()):
                raise RequestError(400, f"{name!r} is not a generative model: its endpoint is "
                                        f"/v2/models/{name}/infer")
            raise RequestError(404, f"unknown generative model {name!r}; generative models served: "
                                    f"{', '.join(self.generators) or 'none'}")
        return served

    def all_served(self) -> dict[str, ServedModel | ServedDecoder]:
        return {**self.models, **self.generators}

    def served(self, request: Request) -> ServedModel | ServedDecoder:
        """The model, generative or not, a request names."""
        name = request.path_params.get("name")
        if name in self.generators:
            return self.generator(request)
        return self.requested(request)

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
            self.metrics.observe(served.labels, latency_ms, rows, error=type(exc).__name__)
            raise RequestError(500, f"inference failed (error id {error_id})") from exc
        latency_ms = (time.perf_counter() - start) * 1e3
        prediction = top1(outputs[0])
        served.monitor.record(latency_ms, rows, prediction=prediction[0] if len(prediction) == 1 else None,
                              request_id=request_id)
        served.monitor.record_inputs({spec.name: array for spec, array in zip(served.artifact.inputs, inputs)})
        self.metrics.observe(served.labels, latency_ms, rows)
        return outputs, latency_ms

    def reject(self, served: ServedModel | ServedDecoder | None, status: int) -> None:
        """Count a refused request (bad input) in the metrics, so /metrics shows every request received; one
        that names no served model is counted under `UNKNOWN_MODEL`."""
        self.metrics.observe(served.labels if served is not None else (UNKNOWN_MODEL, ""), 0.0, 0,
                             error=f"http_{status}")

    async def decode(self, decoder: Callable[..., Any], raw: bytes, *args: Any) -> Any:
        """`decoder(raw, *args)`: a request's decoding (JSON parsing, array conversion, checks), in another process
        when the body is large. Parsing holds the GIL, so in a thread it would still hold up health checks and
        other callers; in a process it holds up nothing here."""
        if len(raw) <= INLINE_DECODE_BYTES:
            return decoder(raw, *args)
        if self.decoders is None:
            self.decoders = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"))
        return await asyncio.get_running_loop().run_in_executor(self.decoders, decoder, raw, *args)

    async def predict(self, request: Request) -> Response:
        served = self.requested(request)
        raw = await request.body()
        body, inputs = await self.decode(decode_predict, raw, served.name, served.artifact.inputs,
                                         self.settings.max_rows)
        request_id = str(body.get("id") or uuid.uuid4().hex)
        outputs, latency_ms = await self.run(served, inputs, request_id)
        result: dict[str, Any] = {"request_id": request_id, "model": served.name, "format": served.artifact.format,
                                  "latency_ms": round(latency_ms, 4), "predictions": top1(outputs[0]).tolist(),
                                  "outputs": {s.name: o for s, o in zip(served.artifact.outputs, outputs)}}
        if body.get("softmax") is True or request.query_params.get("softmax") in ("1", "true"):
            result["probabilities"] = softmax(outputs[0])
        return JSONResponse(result)

    async def infer_v2(self, request: Request) -> Response:
        served = self.requested(request)
        raw = await request.body()
        header = request.headers.get("inference-header-content-length")
        body, inputs = await self.decode(decode_infer, raw, header, served.name, served.artifact.inputs,
                                         self.settings.max_rows)
        request_id = str(body.get("id") or uuid.uuid4().hex)
        outputs, _ = await self.run(served, inputs, request_id)
        requested = body.get("outputs") or [{"name": s.name} for s in served.artifact.outputs]
        by_name = {s.name: o for s, o in zip(served.artifact.outputs, outputs)}
        if not isinstance(requested, list):
            raise RequestError(400, 'outputs must be a list of {"name": ...} objects')
        all_binary = json_object(body.get("parameters"), "parameters").get("binary_data_output") is True
        results, chunks = [], []
        for position, item in enumerate(requested):
            name = item.get("name") if isinstance(item, dict) else None
            if not isinstance(name, str) or name not in by_name:
                raise RequestError(400, f"outputs[{position}]: unknown output {name!r}; outputs: {list(by_name)}")
            array = np.ascontiguousarray(by_name[name])
            entry: dict[str, Any] = {"name": name, "shape": list(array.shape), "datatype": datatype_of(array.dtype)}
            if all_binary or json_object(item.get("parameters"), f"outputs[{position}].parameters").get(
                    "binary_data") is True:
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
        if not isinstance(body["request_id"], (str, int)) or isinstance(body["label"], (dict, list)):
            raise RequestError(400, "request_id must be a string (or integer) and label a single value")
        served = self.requested(request, body)
        matched = served.monitor.record_ground_truth(str(body["request_id"]), body["label"])
        return JSONResponse({"matched": matched})

    async def metrics_endpoint(self, request: Request) -> Response:
        """Prometheus text: the monitors' window figures copied into the gauges, then the registry."""
        for served in self.all_served().values():
            self.metrics.refresh(served.labels, served.monitor.metrics())
        return Response(self.metrics.render(), media_type=CONTENT_TYPE)

    def app(self) -> BodyLimit:
        def handle(method: Callable[[Request], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
            async def endpoint(request: Request) -> Response:
                served: ServedModel | ServedDecoder | None = None
                try:
                    with contextlib.suppress(RequestError):  # a refusal is counted under the model it names
                        served = self.served(request)
                    return await method(request)
                except RequestError as exc:
                    if exc.status < 500:
                        self.reject(served, exc.status)
                    retry = {"Retry-After": "1"} if exc.status in (429, 503) else None
                    return JSONResponse({"error": str(exc)}, status_code=exc.status, headers=retry)
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
                                             "models": {n: m.ready for n, m in self.all_served().items()},
                                             "uptime_s": round(time.time() - self.started, 1)}, ready_status)),
            Route("/health/live", sync(lambda r: {"live": True})),
            Route("/health/ready", sync(lambda r: {"ready": self.ready}, ready_status)),
            Route("/metrics", self.metrics_endpoint),
            Route("/alerts", sync(lambda r: {n: [a.to_json() for a in m.monitor.alerts()]
                                             for n, m in self.all_served().items()})),
            Route("/v2", sync(lambda r: {"name": "deploycheck", "version": version("deploycheck"), "extensions": [
                "binary_tensor_data", "generate"]})),
            Route("/v2/health/live", sync(lambda r: {"live": True})),
            Route("/v2/health/ready", sync(lambda r: {"ready": self.ready}, ready_status)),
            Route("/v2/models", sync(lambda r: {"models": [
                {"name": n, "versions": ["1"], "platform": get_format(m.artifact.format).platform,
                 "state": "READY" if m.ready else "UNAVAILABLE"} for n, m in self.models.items()] + [
                {"name": n, "versions": ["1"], "platform": g.metadata()["platform"],
                 "state": "READY" if g.ready else "UNAVAILABLE"} for n, g in self.generators.items()]})),
        ]
        for prefix in ("/v2/models/{name}", "/v2/models/{name}/versions/{version}"):  # a version is a format
            routes += [
                Route(prefix, sync(lambda r: self.served(r).metadata())),
                Route(f"{prefix}/ready", sync(lambda r: {"name": r.path_params["name"], "ready": self.served(r).ready},
                                              lambda r: 200 if self.served(r).ready else 400)),
                Route(f"{prefix}/infer", handle(self.infer_v2), methods=["POST"]),
                Route(f"{prefix}/generate", handle(lambda r: generate(
                    self.generator(r), r, self.metrics, self.settings.max_new_tokens)), methods=["POST"]),
                Route(f"{prefix}/generate_stream", handle(lambda r: generate_stream(
                    self.generator(r), r, self.metrics, self.settings.max_new_tokens)), methods=["POST"])]
        routes.append(Route("/openapi.json", sync(lambda r: openapi_document(list(self.models),
                                                                             list(self.generators)))))

        async def unrouted(request: Request, exc: Exception) -> Response:
            status = getattr(exc, "status_code", 404)
            self.reject(None, status)
            return JSONResponse({"error": f"{request.method} {request.url.path}: {getattr(exc, 'detail', exc)}"},
                                status_code=status)

        starlette = Starlette(routes=routes, lifespan=self.lifespan,
                              exception_handlers={404: unrouted, 405: unrouted})
        app = BodyLimit(starlette, int(self.settings.max_body_mb * 1024 * 1024))
        app.inference_server = self
        return app


def create_app(source: str | os.PathLike[str] | Mapping[str, Artifact], **settings: Any) -> BodyLimit:
    """The ASGI app serving `source`: a path (one artifact directory or a tree of them) or `{name: Artifact}`;
    `settings` are `ServeSettings` fields. Paths are loaded in the app's startup, so readiness reports loading
    honestly."""
    if isinstance(source, Mapping):
        artifacts = dict(source)
        return InferenceServer(lambda: Catalog(artifacts), ServeSettings(path="<in memory>", **settings)).app()
    return app_from_settings(ServeSettings(path=str(source), **settings))


def app_from_settings(settings: ServeSettings) -> BodyLimit:
    """The app for `deploycheck serve`'s settings; artifacts are loaded (and verified) at startup."""
    return InferenceServer(lambda: discover(settings.path, settings.verify_key, settings.trust_code,
                                            settings.threads), settings).app()


def app_from_environment() -> BodyLimit:
    """The app described by the `DEPLOYCHECK_SERVE_SETTINGS` variable: how `deploycheck serve --workers N` starts
    each worker process (uvicorn imports the app by name in every worker)."""
    return app_from_settings(ServeSettings.from_environment())
