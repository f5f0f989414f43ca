"""Tokens from a generative artifact over HTTP: the Open Inference Protocol's generate extension as Triton defines
it. `POST /v2/models/{name}/generate` answers once with every token; `/generate_stream` sends each token as a
server-sent event (`data: {...}`) the moment it is chosen. The request is a JSON object: `input_ids` (the prompt,
token ids: the artifact carries no tokenizer) and `max_tokens` (at the top level or in `parameters`); decoding is
greedy, so a stream equals what the generative gate checked in-process.

Sequences of one model interleave step by step on its worker thread: each prefill and each decode step is one job
on the model's single-thread executor, taken in arrival order, so a new request's first token waits for one step
of each running sequence, not for whole generations. A stateful runtime gets its own decoder (an infer request)
per sequence from `Decoder.sibling`. At most `max_sequences` run at once per model: beyond that a request gets
429 with `Retry-After` (the client's to retry, as TGI's `max_concurrent_requests`); a model not ready, or a
draining server, gets 503.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from deploycheck.generation.decoders import Decoder
from deploycheck.monitor import Monitor
from deploycheck.prometheus import PrometheusMetrics
from deploycheck.server.protocol import JSONResponse, RequestError, json_object, parse_json

LOGGER = logging.getLogger("deploycheck.server")
DEFAULT_MAX_TOKENS = 16  # what a request that names no max_tokens gets (Triton's vLLM backend's default)
REQUEST_KEYS = ("input_ids", "max_tokens", "parameters", "id")
PARAMETER_KEYS = ("max_tokens", "temperature", "stream")


@dataclass(frozen=True)
class GenerateRequest:
    input_ids: np.ndarray  # 1 x prompt length, int64
    max_tokens: int
    request_id: str


def decode_generate(raw: bytes, model: str, details: dict[str, Any], max_new_tokens: int) -> GenerateRequest:
    """A generate request checked against the artifact's sidecar (`vocab_size`, `max_positions`): every refusal a
    400 that names the field, the position and the range expected."""
    body = parse_json(raw)
    if not isinstance(body, dict):
        raise RequestError(400, f"{model}: expected a JSON object with input_ids (token ids) and max_tokens")
    unknown = sorted(set(body) - set(REQUEST_KEYS))
    if unknown:
        raise RequestError(400, f"{model}: unknown field(s) {', '.join(unknown)}; a generate request has "
                                f"{', '.join(REQUEST_KEYS)}")
    parameters = json_object(body.get("parameters"), "parameters")
    unknown = sorted(set(parameters) - set(PARAMETER_KEYS))
    if unknown:
        raise RequestError(400, f"{model}: unknown parameter(s) {', '.join(unknown)}; known: "
                                f"{', '.join(PARAMETER_KEYS)}")
    if parameters.get("temperature", 0) != 0:
        raise RequestError(400, f"{model}: only greedy decoding is served (temperature 0), got temperature "
                                f"{parameters['temperature']!r}")
    vocabulary, limit = int(details["vocab_size"]), details.get("max_positions")
    ids = body.get("input_ids")
    if not isinstance(ids, list) or not ids:
        raise RequestError(400, f"{model}: input_ids must be a non-empty list of token ids, got "
                                f"{type(ids).__name__ if ids is not None else 'nothing'}")
    for position, token in enumerate(ids):
        if not isinstance(token, int) or isinstance(token, bool) or not 0 <= token < vocabulary:
            raise RequestError(400, f"{model}: input_ids[{position}] = {token!r} is not a token id of this model "
                                    f"(an integer from 0 to {vocabulary - 1})")
    if "max_tokens" in body and "max_tokens" in parameters and body["max_tokens"] != parameters["max_tokens"]:
        raise RequestError(400, f"{model}: max_tokens given twice ({body['max_tokens']!r} and "
                                f"{parameters['max_tokens']!r}); give it once")
    wanted = body.get("max_tokens", parameters.get("max_tokens", DEFAULT_MAX_TOKENS))
    room = max_new_tokens if limit is None else min(max_new_tokens, int(limit) - len(ids))
    if room < 1:
        raise RequestError(400, f"{model}: a prompt of {len(ids)} tokens leaves no room in the model's {limit} "
                                "positions")
    if not isinstance(wanted, int) or isinstance(wanted, bool) or not 1 <= wanted <= room:
        where = f"the model's {limit} positions less the prompt's {len(ids)}" if room < max_new_tokens else \
            "the server's --max-new-tokens"
        raise RequestError(400, f"{model}: max_tokens must be an integer from 1 to {room} ({where}), got "
                                f"{wanted!r}")
    request_id = body.get("id")
    return GenerateRequest(np.asarray([ids], dtype=np.int64), wanted,
                           str(request_id) if request_id not in (None, "") else uuid.uuid4().hex)


@dataclass
class ServedDecoder:
    """A generative artifact being served: its decoder (and the siblings lent to concurrent sequences), its
    sidecar, monitor and worker thread, and how many sequences it is generating."""

    name: str
    decoder: Decoder
    details: dict[str, Any]
    monitor: Monitor
    executor: ThreadPoolExecutor
    max_sequences: int
    ready: bool = False
    active: int = 0
    idle: list[Decoder] = field(default_factory=list)

    @property
    def labels(self) -> tuple[str, str]:
        return str(self.details["model"]), str(self.details["format"])

    def metadata(self) -> dict[str, Any]:
        """The Open Inference Protocol model metadata: token ids in, token ids out."""
        return {"name": self.name, "versions": ["1"], "platform": f"deploycheck_generative_{self.details['format']}",
                "inputs": [{"name": "input_ids", "datatype": "INT64", "shape": [-1]},
                           {"name": "max_tokens", "datatype": "INT32", "shape": [1]}],
                "outputs": [{"name": "output_ids", "datatype": "INT64", "shape": [-1]}],
                "parameters": {"format": self.details["format"], "vocab_size": self.details["vocab_size"],
                               "max_positions": self.details.get("max_positions"),
                               "max_sequences": self.max_sequences, "generative": True}}

    def warm_up(self) -> None:
        """One short generation, so the first request does not pay for the runtime's first run."""
        logits, state = self.decoder.prefill(np.zeros((1, 2), dtype=np.int64))
        self.decoder.decode(logits[:, -1:].argmax(-1), state)

    @property
    def _busy(self) -> str:
        return f"{self.name} is generating {self.active} sequences, its limit (deploycheck serve --max-sequences)"

    def claim(self) -> Decoder:
        """A slot for one more sequence, and the decoder it runs on; 503 when not ready, 429 when full."""
        if not self.ready:
            raise RequestError(503, f"model {self.name!r} is not ready")
        if self.active >= self.max_sequences:
            raise RequestError(429, f"{self._busy}; retry later")
        self.active += 1
        return self.idle.pop() if self.idle else self.decoder.sibling()

    def release(self, decoder: Decoder) -> None:
        self.active -= 1
        self.idle.append(decoder)


@dataclass
class Generated:
    """A sequence's tokens so far and when each came, in seconds from the request's arrival."""

    request: GenerateRequest
    tokens: list[int] = field(default_factory=list)
    times_s: list[float] = field(default_factory=list)

    @property
    def gaps_s(self) -> list[float]:
        return [b - a for a, b in zip(self.times_s, self.times_s[1:])]

    def timings_ms(self) -> dict[str, float | None]:
        gaps = self.gaps_s
        return {"ttft_ms": round(self.times_s[0] * 1e3, 4),
                "tpot_ms": round(sum(gaps) / len(gaps) * 1e3, 4) if gaps else None}


async def tokens(served: ServedDecoder, request: GenerateRequest, metrics: PrometheusMetrics, arrived: float
                 ) -> AsyncGenerator[Generated, None]:
    """Generate `request` on `served`, yielding after each token. Claims a slot first (429/503 raised before
    anything runs); the slot and decoder go back however the sequence ends, a client gone included. A runtime
    failure is logged with an error id, counted, and raised as a 500."""
    decoder = served.claim()
    metrics.sequences.labels(*served.labels).inc()
    loop = asyncio.get_running_loop()
    generated = Generated(request)
    try:
        logits, state = await loop.run_in_executor(served.executor, decoder.prefill, request.input_ids)
        while True:
            token = int(logits[0, -1].argmax())
            generated.tokens.append(token)
            generated.times_s.append(time.perf_counter() - arrived)
            yield generated
            if len(generated.tokens) == request.max_tokens:
                break
            logits, state = await loop.run_in_executor(served.executor, decoder.decode,
                                                       np.asarray([[token]], dtype=np.int64), state)
    except Exception as exc:
        error_id = uuid.uuid4().hex[:12]
        LOGGER.exception("generation failed on %s (error id %s, request %s)", served.name, error_id,
                         request.request_id)
        served.monitor.record_generation((time.perf_counter() - arrived) * 1e3, None, len(generated.tokens),
                                         error=exc, request_id=request.request_id)
        metrics.observe(served.labels, 0.0, 0, error=type(exc).__name__)
        raise RequestError(500, f"generation failed (error id {error_id})") from exc
    finally:
        served.release(decoder)
        metrics.sequences.labels(*served.labels).dec()
    timings = generated.timings_ms()
    served.monitor.record_generation(float(timings["ttft_ms"] or 0.0), timings["tpot_ms"], len(generated.tokens),
                                     request_id=request.request_id)
    metrics.observe_generation(served.labels, generated.times_s[0], generated.gaps_s)


def answer(served: ServedDecoder, generated: Generated) -> dict[str, Any]:
    """The whole generation as one JSON object."""
    return {"model_name": served.name, "model_version": "1", "id": generated.request.request_id,
            "output_ids": generated.tokens, "finish_reason": "length",
            "prompt_tokens": int(generated.request.input_ids.shape[1]), **generated.timings_ms()}


def event(served: ServedDecoder, generated: Generated) -> bytes:
    """The server-sent event of the newest token; the last one says why the sequence ended and its timings."""
    payload: dict[str, Any] = {"model_name": served.name, "model_version": "1", "id": generated.request.request_id,
                               "index": len(generated.tokens) - 1, "output_ids": generated.tokens[-1:]}
    if len(generated.tokens) == generated.request.max_tokens:
        payload.update({"finish_reason": "length", **generated.timings_ms()})
    return b"data: " + orjson.dumps(payload) + b"\n\n"


async def stream_events(first: Generated, rest: AsyncGenerator[Generated, None], served: ServedDecoder
                        ) -> AsyncIterator[bytes]:
    """Every token's event, starting from the one already generated (so that refusals and a failing prefill
    were answered with their status before the stream began); a failure later is one `error` event."""
    yield event(served, first)
    try:
        async for generated in rest:
            yield event(served, generated)
    except RequestError as exc:
        yield b"data: " + orjson.dumps({"id": first.request.request_id, "error": str(exc)}) + b"\n\n"
    finally:
        await rest.aclose()  # a client gone mid-stream: the sequence's slot and decoder go back now


async def generate(served: ServedDecoder, request: Request, metrics: PrometheusMetrics, max_new_tokens: int
                   ) -> Response:
    """`/generate`: the whole generation in one answer."""
    arrived = time.perf_counter()
    parsed = decode_generate(await request.body(), served.name, served.details, max_new_tokens)
    generated = Generated(parsed)
    async for generated in tokens(served, parsed, metrics, arrived):  # noqa: B007 (the last one is the answer)
        pass
    return JSONResponse(answer(served, generated))


async def generate_stream(served: ServedDecoder, request: Request, metrics: PrometheusMetrics, max_new_tokens: int
                          ) -> Response:
    """`/generate_stream`: server-sent events, the first sent once the first token is chosen."""
    arrived = time.perf_counter()
    parsed = decode_generate(await request.body(), served.name, served.details, max_new_tokens)
    sequence = tokens(served, parsed, metrics, arrived)
    first = await anext(sequence)
    return StreamingResponse(stream_events(first, sequence, served), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
