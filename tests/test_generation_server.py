"""Generative artifacts served over real HTTP: `deploycheck serve` streams tokens (the Open Inference Protocol's
generate extension, server-sent events) that equal the in-process greedy output under concurrent clients, puts
TTFT/TPOT in /metrics, refuses bad token ids with a 400 naming them, and bounds the sequences it runs at once."""

from __future__ import annotations

import asyncio
import http.client
import json
import shutil
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("transformers")
from models import llama_decoder, prompts
from serving import Server, fuzz, start_server, stop_server

from deploycheck.generation.decoders import EagerDecoder
from deploycheck.generation.spec import GenerativeSpec
from deploycheck.generation.streams import generate
from deploycheck.server.app import create_app

pytestmark = pytest.mark.slow

LLAMA = llama_decoder()
PROMPTS = prompts(rows=8, length=6)
NEW_TOKENS = 10
FORMATS = ("onnx", "openvino")


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory, shared_decoder_exports) -> Path:
    """The Llama-style decoder as ONNX (the cache passed between steps) and stateful OpenVINO (the cache inside
    the infer request: concurrent sequences each need their own), where installed: test_generation's exports,
    copied into a tree of their own to serve."""
    spec = GenerativeSpec("llama_tiny", LLAMA, prompts(), new_tokens=4, batch_sizes=(1,), formats=("eager", *FORMATS))
    root = tmp_path_factory.mktemp("generative")
    for format_name, path in shared_decoder_exports(spec, FORMATS).items():
        shutil.copytree(path, root / format_name)
    return root


@pytest.fixture(scope="module")
def server(tree: Path) -> Iterator[Server]:
    running = start_server(tree, "--max-sequences", "16")
    yield running
    stop_server(running)


def expected(row: int) -> list[int]:
    """The in-process greedy continuation of prompt `row` (eager, the reference every format matched)."""
    stream = generate(EagerDecoder(LLAMA, "eager"), PROMPTS[row:row + 1].numpy(), NEW_TOKENS)
    return stream.tokens[0].tolist()


def stream_tokens(server: Server, name: str, row: int) -> tuple[list[int], list[dict[str, Any]]]:
    """A `/generate_stream` request read event by event, as a streaming client reads it."""
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    try:
        body = json.dumps({"input_ids": PROMPTS[row].tolist(), "parameters": {"max_tokens": NEW_TOKENS}})
        connection.request("POST", f"/v2/models/{name}/generate_stream", body, {"Content-Type": "application/json"})
        response = connection.getresponse()
        assert response.status == 200, response.read()
        assert response.getheader("Content-Type", "").startswith("text/event-stream")
        events = []
        for line in response:
            if line.startswith(b"data: "):
                events.append(json.loads(line[6:]))
    finally:
        connection.close()
    return [token for event in events for token in event["output_ids"]], events


def test_concurrent_streams_equal_the_in_process_greedy_output_and_fill_the_metrics(server: Server) -> None:
    names = [f"llama_tiny-{f}" for f in FORMATS if server.request("GET", f"/v2/models/llama_tiny-{f}")[0] == 200]
    assert names, "the tree's decoders are served under model-format names"
    wanted = {row: expected(row) for row in range(len(PROMPTS))}
    jobs = [(names[(client + n) % len(names)], (client * 3 + n) % len(PROMPTS)) for client in range(8)
            for n in range(20)]

    def client(index: int) -> list[tuple[str, int, list[int], list[dict[str, Any]]]]:
        return [(name, row, *stream_tokens(server, name, row)) for name, row in jobs[index * 20:(index + 1) * 20]]

    with ThreadPoolExecutor(8) as pool:
        results = [item for chunk in pool.map(client, range(8)) for item in chunk]
    assert len(results) == 160
    for name, row, tokens, events in results:
        assert tokens == wanted[row], f"{name}, prompt {row}: streamed {tokens}, greedy in-process {wanted[row]}"
        assert [e["index"] for e in events] == list(range(NEW_TOKENS))
        assert events[-1]["finish_reason"] == "length" and events[-1]["ttft_ms"] > 0 and events[-1]["tpot_ms"] > 0
    for name in names:
        model, format_name = name.split("-")
        served = sum(1 for n, *_ in results if n == name)
        assert server.metric("deploycheck_time_to_first_token_seconds_count", model, format=format_name) == served
        assert server.metric("deploycheck_time_per_output_token_seconds_count", model, format=format_name) == served
        assert server.metric("deploycheck_generated_tokens_total", model, format=format_name) == served * NEW_TOKENS
        assert server.metric("deploycheck_active_sequences", model, format=format_name) == 0
        assert server.metric("deploycheck_window_time_per_output_token_seconds", model, format=format_name,
                             quantile="p50") > 0
    assert server.errors_total() == 0

    status, body = server.post(f"/v2/models/{names[0]}/generate", {"input_ids": PROMPTS[3].tolist(),
                                                                   "max_tokens": NEW_TOKENS, "id": "r3"})
    assert status == 200 and body["output_ids"] == wanted[3] and body["id"] == "r3", body
    assert body["prompt_tokens"] == PROMPTS.shape[1] and body["tpot_ms"] > 0


@pytest.mark.parametrize(("payload", "message"), [
    ({"input_ids": [1, 2, 512]}, "input_ids[2] = 512 is not a token id of this model (an integer from 0 to 511)"),
    ({"input_ids": [-1]}, "input_ids[0] = -1 is not a token id"),
    ({"input_ids": [1, 2.5]}, "input_ids[1] = 2.5 is not a token id"),
    ({"input_ids": [1, True]}, "input_ids[1] = True is not a token id"),
    ({"input_ids": []}, "input_ids must be a non-empty list of token ids"),
    ({"input_ids": "hello"}, "input_ids must be a non-empty list of token ids, got str"),
    ({"text_input": "hello"}, "unknown field(s) text_input"),
    ({"input_ids": [1], "max_tokens": 0}, "max_tokens must be an integer from 1 to 63"),
    ({"input_ids": [1] * 60, "max_tokens": 8}, "from 1 to 4 (the model's 64 positions less the prompt's 60)"),
    ({"input_ids": [1] * 64}, "leaves no room in the model's 64 positions"),
    ({"input_ids": [1], "parameters": {"temperature": 0.7}}, "only greedy decoding is served"),
    ({"input_ids": [1], "parameters": {"top_k": 5}}, "unknown parameter(s) top_k"),
    ({"input_ids": [1], "max_tokens": 2, "parameters": {"max_tokens": 3}}, "max_tokens given twice"),
])
def test_a_bad_generate_request_is_a_400_naming_what_is_wrong(server: Server, payload: dict, message: str) -> None:
    for endpoint in ("generate", "generate_stream"):
        status, body = server.post(f"/v2/models/llama_tiny-onnx/{endpoint}", payload)
        assert status == 400 and message in body["error"], (endpoint, status, body)


def test_generative_and_single_pass_endpoints_point_to_each_other(server: Server) -> None:
    status, body = server.post("/v2/models/llama_tiny-onnx/infer", {"inputs": []})
    assert status == 400 and "is a generative model: POST /v2/models/llama_tiny-onnx/generate" in body["error"]
    status, body = server.post("/v2/models/nothing/generate", {"input_ids": [1]})
    assert status == 404 and "generative models served: llama_tiny-onnx" in body["error"]
    status, body = server.post("/v2/models/llama_tiny-onnx/versions/openvino/generate", {"input_ids": [1]})
    assert status == 404 and "'llama_tiny-onnx' is served in format 'onnx', not 'openvino'" in body["error"]
    status, body = server.request("GET", "/v2/models/llama_tiny-onnx")
    assert status == 200 and body["parameters"]["vocab_size"] == 512 and body["parameters"]["generative"]
    assert server.request("GET", "/v2/models/llama_tiny-onnx/ready") == (200, {"name": "llama_tiny-onnx",
                                                                              "ready": True})
    assert "generate" in server.request("GET", "/v2")[1]["extensions"]
    errors = {labels["type"] for _, labels in server.series("deploycheck_errors_total")}
    assert errors and all(e.startswith("http_4") for e in errors), f"refusals only, never a failure: {errors}"


def test_sequences_beyond_the_limit_get_429_with_retry_after_and_the_slot_comes_back(tree: Path) -> None:
    """In process, on the app's ASGI interface, so a first stream can be held open deterministically: the client
    reads its first event and nothing more, and its sequence keeps its slot meanwhile."""
    asyncio.run(_hold_one_stream_and_ask_again(create_app(tree / "onnx", max_sequences=1)))


async def _hold_one_stream_and_ask_again(app: Any) -> None:
    started, stop = asyncio.Queue(), asyncio.Queue()
    lifespan = asyncio.create_task(app({"type": "lifespan", "asgi": {"version": "3.0"}},
                                       _messages([{"type": "lifespan.startup"}], stop), started.put))
    assert (await started.get())["type"] == "lifespan.startup.complete"
    body = json.dumps({"input_ids": [1, 2, 3], "max_tokens": 8}).encode()
    first_event, release = asyncio.Event(), asyncio.Event()
    held: list[dict[str, Any]] = []

    async def held_send(message: dict[str, Any]) -> None:
        held.append(message)
        if message["type"] == "http.response.body" and message.get("body"):
            first_event.set()
            await release.wait()  # the client stops reading: the server's next send waits

    holder = asyncio.create_task(app(_scope("/v2/models/llama_tiny/generate_stream"),
                                     _messages([_request(body)], asyncio.Queue()), held_send))
    await asyncio.wait_for(first_event.wait(), 30)
    refused = await _call(app, "/v2/models/llama_tiny/generate", body)
    assert refused["status"] == 429 and (b"retry-after", b"1") in refused["headers"], refused
    assert "llama_tiny is generating 1 sequences, its limit" in json.loads(refused["body"])["error"]
    release.set()
    await asyncio.wait_for(holder, 30)
    events = b"".join(m.get("body", b"") for m in held if m["type"] == "http.response.body").split(b"\n\n")
    assert len([e for e in events if e.startswith(b"data: ")]) == 8, "the held stream still completes"
    again = await _call(app, "/v2/models/llama_tiny/generate", body)
    assert again["status"] == 200 and len(json.loads(again["body"])["output_ids"]) == 8
    await stop.put({"type": "lifespan.shutdown"})
    await asyncio.wait_for(lifespan, 30)


def _scope(path: str) -> dict[str, Any]:
    return {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "path": path,
            "raw_path": path.encode(), "query_string": b"", "root_path": "", "scheme": "http",
            "headers": [(b"content-type", b"application/json")], "client": ("127.0.0.1", 1),
            "server": ("127.0.0.1", 80)}


def _request(body: bytes) -> dict[str, Any]:
    return {"type": "http.request", "body": body, "more_body": False}


def _messages(first: list[dict[str, Any]], later: asyncio.Queue) -> Any:
    """An ASGI `receive`: the given messages, then whatever is put on `later` (a disconnect never comes)."""
    pending = list(first)

    async def receive() -> dict[str, Any]:
        return pending.pop(0) if pending else await later.get()
    return receive


async def _call(app: Any, path: str, body: bytes) -> dict[str, Any]:
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)
    await app(_scope(path), _messages([_request(body)], asyncio.Queue()), send)
    return {"status": sent[0]["status"], "headers": sent[0]["headers"],
            "body": b"".join(m.get("body", b"") for m in sent[1:])}


def test_schema_driven_fuzzing_of_the_generate_endpoints_finds_no_server_error(server: Server) -> None:
    """Schemathesis generates generate requests, valid and invalid, from the server's /openapi.json: every answer
    is below 500 and every refusal a JSON `{"error": ...}`."""
    problems, sent = fuzz(server, 60, ("/generate", "/generate_stream"))
    assert not problems, problems[:5]
    assert sent.get("POST /v2/models/{name}/generate", 0) >= 100 and sent.get(
        "POST /v2/models/{name}/generate_stream", 0) >= 100, sent
