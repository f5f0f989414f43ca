"""The model server over real HTTP on loopback: a real `deploycheck serve` (uvicorn) process per test module."""

from __future__ import annotations

import http.client
import json
import shutil
import signal
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest
import torch
from serving import Server, fuzz, start_server, stop_server

pytestmark = pytest.mark.slow


class Lookup(torch.nn.Module):
    """An embedding lookup at a shifted index: the table's bound is not found from the input (which is not what
    indexes the table), so an index beyond it makes ONNX Runtime fail at run time (a real 500)."""

    def __init__(self) -> None:
        super().__init__()
        self.table = torch.nn.Embedding(20, 4)

    def forward(self, index: torch.Tensor) -> torch.Tensor:
        return self.table(index + 5).sum(dim=1)


@pytest.fixture(scope="module")
def served(digits_artifacts, tmp_path_factory) -> Iterator[tuple[Server, dict]]:
    """Two models from a directory of artifacts: the digits CNN (onnx) and the lookup model (onnx)."""
    import deploycheck

    root = tmp_path_factory.mktemp("served")
    lookup = deploycheck.ModelSpec(name="lookup", model=Lookup(), example_inputs=torch.randint(0, 10, (4, 3)),
                                   formats=["onnx"])
    artifacts = {"digits_cnn": deploycheck.export(digits_artifacts["onnx"].spec, "onnx", root / "digits_cnn" / "onnx"),
                 "lookup": deploycheck.export(lookup, "onnx", root / "lookup" / "onnx")}
    server = start_server(root, "--max-body-mb", "1")
    yield server, artifacts
    stop_server(server)


def digits_rows(count: int, seed: int = 0) -> np.ndarray:
    from deploycheck.digits import load_split

    images = load_split()[2].numpy()
    rng = np.random.default_rng(seed)
    picked = images[rng.integers(0, len(images), count)]
    return (picked + rng.normal(0, 0.05, picked.shape)).astype(np.float32)


def test_tritonclient_health_metadata_and_infer_match_in_process(served) -> None:
    import tritonclient.http as triton

    server, artifacts = served
    client = triton.InferenceServerClient(f"127.0.0.1:{server.port}")
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("digits_cnn")
    metadata = client.get_model_metadata("digits_cnn")
    assert metadata["inputs"] == [{"name": "image", "datatype": "FP32", "shape": [-1, 1, 8, 8]}]
    assert metadata["outputs"][0]["shape"] == [-1, 10] and metadata["platform"] == "onnxruntime_onnx"
    assert client.get_server_metadata()["name"] == "deploycheck"
    images = digits_rows(5)
    expected = artifacts["digits_cnn"].run(images)[0]
    for binary in (True, False):
        request = triton.InferInput("image", list(images.shape), "FP32")
        request.set_data_from_numpy(images, binary_data=binary)
        result = client.infer("digits_cnn", [request], request_id="req-7",
                              outputs=[triton.InferRequestedOutput("logits", binary_data=binary)])
        np.testing.assert_allclose(result.as_numpy("logits"), expected, rtol=1e-6, atol=1e-6)
        assert result.get_response()["id"] == "req-7"
    with pytest.raises(triton.InferenceServerException, match="unknown model 'nope'"):
        client.get_model_metadata("nope")


def test_predict_and_feedback(served) -> None:
    server, artifacts = served
    images = digits_rows(3, seed=1)
    status, body = server.post("/predict?model=digits_cnn&softmax=true", {"input": images.tolist()})
    assert status == 200, body
    expected = artifacts["digits_cnn"].run(images)[0]
    assert body["predictions"] == expected.argmax(1).tolist() and body["latency_ms"] > 0
    np.testing.assert_allclose(body["outputs"]["logits"], expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.sum(body["probabilities"], axis=1), 1.0, rtol=1e-5)
    status, single = server.post("/predict?model=digits_cnn", {"input": images[0].tolist(), "id": "one"})
    assert status == 200 and single["request_id"] == "one" and single["predictions"] == body["predictions"][:1]
    status, matched = server.post("/feedback", {"model": "digits_cnn", "request_id": "one",
                                                "label": single["predictions"][0]})
    assert status == 200 and matched == {"matched": True}
    assert server.request("GET", "/health")[1]["models"] == {"digits_cnn": True, "lookup": True}
    assert server.request("GET", "/health/ready")[0] == 200 and server.request("GET", "/alerts")[0] == 200
    status, index = server.request("GET", "/v2/models")
    assert status == 200 and sorted((m["name"], m["state"]) for m in index["models"]) == [
        ("digits_cnn", "READY"), ("lookup", "READY")], "the repository index KServe / Triton clients read"


BAD_REQUESTS = [
    ("malformed JSON", "POST", "/predict?model=digits_cnn", b'{"input": [1, 2', 400, "malformed JSON"),
    ("wrong input name", "POST", "/v2/models/digits_cnn/infer",
     {"inputs": [{"name": "pixels", "shape": [1, 64], "datatype": "FP32", "data": [0.0] * 64}]}, 400,
     "expects inputs ['image']; unknown ['pixels'] missing ['image']"),
    ("wrong shape", "POST", "/predict?model=digits_cnn", {"input": [[0.0] * 7] * 7}, 400,
     "input 'image' has shape [7, 7], expected [?, 1, 8, 8] (? is dynamic)"),
    ("wrong datatype", "POST", "/v2/models/digits_cnn/infer",
     {"inputs": [{"name": "image", "shape": [1, 1, 8, 8], "datatype": "BYTES", "data": ["a"] * 64}]}, 400,
     "datatype 'BYTES' is not one of"),
    ("not numbers", "POST", "/predict?model=digits_cnn", {"input": [[["x"] * 8] * 8]}, 400,
     "not a rectangular array of numbers"),
    ("NaN", "POST", "/predict?model=digits_cnn", b'{"input": [[' + b",".join([b"[" + b",".join([b"1e999"] * 8)
                                                                              + b"]"] * 8) + b"]]}", 400,
     "contains NaN or Inf"),
    ("unknown model", "POST", "/v2/models/nope/infer", {"inputs": []}, 404, "unknown model 'nope'"),
    ("inference failure", "POST", "/predict?model=lookup", {"input": [[1, 2, 99]]}, 500, "inference failed (error id"),
    # the hardening issue's probes, each a 500 before
    ("JSON nested 50k deep", "POST", "/predict?model=digits_cnn", b'{"input": ' + b"[" * 50_000 + b"]" * 50_000 + b"}",
     400, "malformed JSON"),
    ("JSON nested 50k deep (v2)", "POST", "/v2/models/digits_cnn/infer", b"[" * 50_000 + b"]" * 50_000, 400,
     "malformed JSON"),
    ("INT64 above 2**63", "POST", "/v2/models/lookup/infer",
     {"inputs": [{"name": "index", "shape": [1, 3], "datatype": "INT64", "data": [1, 2, 2**63 + 5]}]}, 400,
     "values outside the range of int64"),
    ("INT64 above 2**64", "POST", "/v2/models/lookup/infer",
     {"inputs": [{"name": "index", "shape": [1, 3], "datatype": "INT64", "data": [1, 2, 2**64 + 5]}]}, 400,
     "values outside the range of int64"),
    ("INT64 of 1e40", "POST", "/v2/models/lookup/infer",
     {"inputs": [{"name": "index", "shape": [1, 3], "datatype": "INT64", "data": [1, 2, 1e40]}]}, 400,
     "values outside the range of int64"),
    ("outputs: 5", "POST", "/v2/models/digits_cnn/infer",
     {"inputs": [{"name": "image", "shape": [1, 1, 8, 8], "datatype": "FP32", "data": [0.0] * 64}], "outputs": 5},
     400, "outputs must be a list"),
    ("request parameters a string", "POST", "/v2/models/digits_cnn/infer",
     {"inputs": [{"name": "image", "shape": [1, 1, 8, 8], "datatype": "FP32", "data": [0.0] * 64}],
      "parameters": "x"}, 400, "parameters must be a JSON object"),
    ("input parameters a list", "POST", "/v2/models/digits_cnn/infer",
     {"inputs": [{"name": "image", "shape": [1, 1, 8, 8], "datatype": "FP32", "data": [0.0] * 64,
                  "parameters": [1]}]}, 400, "parameters must be a JSON object"),
    ("output parameters a string", "POST", "/v2/models/digits_cnn/infer",
     {"inputs": [{"name": "image", "shape": [1, 1, 8, 8], "datatype": "FP32", "data": [0.0] * 64}],
      "outputs": [{"name": "logits", "parameters": "binary"}]}, 400, "parameters must be a JSON object"),
    ("datatype a list", "POST", "/v2/models/digits_cnn/infer",
     {"inputs": [{"name": "image", "shape": [1, 1, 8, 8], "datatype": ["FP32"], "data": [0.0] * 64}]}, 400,
     "datatype ['FP32'] is not one of"),
    ("feedback model a list", "POST", "/feedback", {"request_id": "r", "label": 1, "model": ["digits_cnn"]}, 400,
     "model must be a model's name"),
    ("feedback model an object", "POST", "/feedback", {"request_id": "r", "label": 1, "model": {"a": 1}}, 400,
     "model must be a model's name"),
    ("header length of a superscript digit", "POST", "/v2/models/digits_cnn/infer",
     (b"{}", {"Inference-Header-Content-Length": "\u00b2"}), 400, "Inference-Header-Content-Length '\u00b2'"),
    ("FP64 of 1e300 for an FP32 input", "POST", "/predict?model=digits_cnn", {"input": [[[1e300] * 8] * 8]}, 400,
     "values too large for float32"),
    ("booleans for numbers", "POST", "/predict?model=digits_cnn", {"input": [[[True] * 8] * 8]}, 400,
     "expected numbers of float32, got booleans"),
    ("too many rows", "POST", "/predict?model=digits_cnn", {"input": [[[[0] * 8] * 8]] * 4097}, 413,
     "at most 4096 per request (--max-rows)"),
    ("unknown route", "GET", "/nowhere", None, 404, "GET /nowhere"),
    ("wrong method", "GET", "/predict", None, 405, "GET /predict"),
]


@pytest.mark.parametrize(("method", "path", "payload", "status", "message"),
                         [case[1:] for case in BAD_REQUESTS], ids=[case[0] for case in BAD_REQUESTS])
def test_bad_input_gets_its_status_and_the_server_keeps_answering(served, method, path, payload, status,
                                                                  message) -> None:
    server, artifacts = served
    payload, extra = payload if isinstance(payload, tuple) else (payload, {})
    body = None if payload is None else payload if isinstance(payload, bytes) else json.dumps(payload)
    refused_before = server.errors_total()
    got, answer = server.request(method, path, body, {"Content-Type": "application/json", **extra})
    assert got == status, answer
    assert message in answer["error"], answer
    if status < 500:  # every refusal is counted, under its model or under "(none)"
        assert server.errors_total() == refused_before + 1
    images = digits_rows(2, seed=2)
    ok, good = server.post("/predict?model=digits_cnn", {"input": images.tolist()})
    assert ok == 200 and good["predictions"] == artifacts["digits_cnn"].run(images)[0].argmax(1).tolist()
    lookup = server.post("/predict?model=lookup", {"input": [[1, 2, 3]]})
    assert lookup[0] == 200


def test_bodies_over_the_limit_get_413_whether_announced_or_streamed(served) -> None:
    server, artifacts = served
    limit = 1024 * 1024
    # a client that writes its whole body before reading (http.client, urllib, requests) reads the 413
    announced = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    announced.request("POST", "/predict?model=digits_cnn", body=b"0" * (10 * limit),
                      headers={"Content-Type": "application/json"})
    response = announced.getresponse()
    assert response.status == 413 and b"exceeds the limit of 1048576 bytes" in response.read()
    announced.close()
    # one that announces the size and waits for 100 Continue gets the 413 at once, sending nothing
    waiting = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    waiting.putrequest("POST", "/predict?model=digits_cnn")
    waiting.putheader("Content-Length", str(10 * limit))
    waiting.putheader("Expect", "100-continue")
    waiting.endheaders()
    response = waiting.getresponse()
    assert response.status == 413 and b"exceeds the limit of 1048576 bytes" in response.read()
    waiting.close()

    chunks = [b"[" + b"0," * (limit // 4)] * 2 + [b"0]"]
    streamed = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    streamed.request("POST", "/predict?model=digits_cnn", body=iter(chunks), encode_chunked=True,
                     headers={"Content-Type": "application/json", "Transfer-Encoding": "chunked"})
    response = streamed.getresponse()
    assert response.status == 413 and b"request body exceeds the limit of 1048576 bytes" in response.read()
    streamed.close()
    images = digits_rows(2, seed=5)
    ok, good = server.post("/predict?model=digits_cnn", {"input": images.tolist()})
    assert ok == 200 and good["predictions"] == artifacts["digits_cnn"].run(images)[0].argmax(1).tolist()


def test_inference_failures_are_counted(served) -> None:
    server, _ = served
    before = server.metric("deploycheck_errors_total", "lookup")
    status, _ = server.post("/predict?model=lookup", {"input": [[0, 1, 50]]})
    assert status == 500
    errors = server.series("deploycheck_errors_total", model="lookup", format="onnx")
    assert errors and all(labels["type"] for _, labels in errors)
    assert sum(value for value, _ in errors) > before


def test_32_clients_each_get_their_own_rows_and_every_request_is_counted(served) -> None:
    server, artifacts = served
    clients, per_client = 32, 200
    images = digits_rows(clients * per_client, seed=3)
    expected = artifacts["digits_cnn"].run(images)[0]
    before = server.metric("deploycheck_requests_total", "digits_cnn")

    def client(index: int) -> int:
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
        mismatches = 0
        for step in range(per_client):
            row = index * per_client + step
            connection.request("POST", "/predict?model=digits_cnn", json.dumps({"input": images[row].tolist()}),
                               {"Content-Type": "application/json"})
            body = json.loads(connection.getresponse().read())
            if not np.allclose(body["outputs"]["logits"][0], expected[row], rtol=1e-4, atol=1e-4):
                mismatches += 1
        connection.close()
        return mismatches

    batches_before = server.metric("deploycheck_batches_total", "digits_cnn")
    with ThreadPoolExecutor(clients) as pool:
        assert sum(pool.map(client, range(clients))) == 0
    assert server.metric("deploycheck_requests_total", "digits_cnn") - before == clients * per_client
    batches = server.metric("deploycheck_batches_total", "digits_cnn") - batches_before
    assert 0 < batches < clients * per_client, "concurrent requests were merged into batches"


def test_several_workers_share_their_metrics(digits_artifacts) -> None:
    server = start_server(digits_artifacts["onnx"].path, "--workers", "2")
    try:
        images = digits_rows(40, seed=4)
        for row in images:
            assert server.post("/predict", {"input": row.tolist()})[0] == 200
        assert server.metric("deploycheck_requests_total", "digits_cnn") == 40
    finally:
        stop_server(server)
    assert server.process.returncode == 0, "SIGTERM shuts the server down cleanly"


def test_refuses_formats_that_need_pickles_or_code(digits_artifacts, tmp_path: Path) -> None:
    from deploycheck.errors import DeployCheckError
    from deploycheck.server.repository import discover

    with pytest.raises(DeployCheckError, match="format 'state_dict' is not served"):
        discover(digits_artifacts["state_dict"].path)
    with pytest.raises(DeployCheckError, match="no artifact"):
        discover(tmp_path)
    # a state_dict artifact in a folder named "onnx", its factory pointing at os:abort: the format comes from the
    # sidecar, and the factory is never imported or called (this process would be gone)
    disguised = tmp_path / "tree" / "onnx"
    shutil.copytree(digits_artifacts["state_dict"].path, disguised)
    sidecar = json.loads((disguised / "deploycheck.json").read_text())
    (disguised / "deploycheck.json").write_text(json.dumps({**sidecar, "factory": "os:abort"}))
    with pytest.raises(DeployCheckError, match="format 'state_dict' is not served"):
        discover(disguised)
    with pytest.raises(DeployCheckError, match="nothing servable found"):
        discover(tmp_path / "tree")


def test_the_monitor_holds_traffic_to_the_release_baseline(digits_artifacts, tmp_path: Path) -> None:
    """Baselines written by the gate give the served model's monitor its release class distribution and the
    calibration data's input profile: traffic of one digit only is prediction drift (not input drift), and
    pixels sent unscaled (0..16 instead of 0..1) are input drift, each visible in /metrics and as one alert."""
    from deploycheck.baseline.update import write_baselines
    from deploycheck.digits import load_split
    from deploycheck.gate import Gate

    rows: list[dict] = []
    Gate(rows.append).check_accuracy(digits_artifacts["onnx"])
    write_baselines(tmp_path / "baselines", rows)
    server = start_server(digits_artifacts["onnx"].path, "--baselines", str(tmp_path / "baselines"))
    try:
        _, _, images, labels = load_split()
        zeros = images[labels == 0].numpy()
        for step in range(250):
            assert server.post("/predict", {"input": zeros[step % len(zeros)].tolist()})[0] == 200
        assert server.metric("deploycheck_prediction_drift_psi", "digits_cnn") > 0.2
        alerts = server.request("GET", "/alerts")[1]["digits_cnn"]
        drift = [a for a in alerts if a["type"] == "drift"]
        assert len(drift) == 1 and drift[0]["state"] == "firing" and drift[0]["model"] == "digits_cnn"
        fired = datetime.fromisoformat(drift[0]["first_seen_utc"])
        assert abs((datetime.now(timezone.utc) - fired).total_seconds()) < 120, "a wall-clock time, not monotonic"
        assert not [a for a in alerts if a["type"] == "input_drift"], "the pixels of zeros are still digit pixels"
        mixed = images.numpy()
        for step in range(250):
            assert server.post("/predict", {"input": (mixed[step] * 16).tolist()})[0] == 200
        psi = server.series("deploycheck_input_drift_psi", input="image", model="digits_cnn", format="onnx")
        assert psi and psi[0][0] > 0.2, "half of the window's pixels are unscaled"
        alerts = server.request("GET", "/alerts")[1]["digits_cnn"]
        input_drift = [a for a in alerts if a["type"] == "input_drift"]
        assert len(input_drift) == 1 and "input 'image'" in input_drift[0]["message"]
    finally:
        stop_server(server)


def test_sigterm_drains_requests_in_flight(digits_artifacts) -> None:
    """Large requests are sent on eight connections; SIGTERM arrives once the first answer is back, while the
    others are still being served: every request that reached the server is answered with its own result."""
    server = start_server(digits_artifacts["onnx"].path, "--drain", "2")
    images = digits_rows(3000, seed=6)
    expected = digits_artifacts["onnx"].run(images)[0].argmax(1).tolist()
    body = json.dumps({"input": images.tolist()})
    answered: list[tuple[int, float, bool]] = []
    first_answer = threading.Event()

    def client() -> None:
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
        connection.request("POST", "/predict", body, {"Content-Type": "application/json"})
        response = connection.getresponse()
        payload = json.loads(response.read())
        answered.append((response.status, time.monotonic(), payload.get("predictions") == expected))
        first_answer.set()
        connection.close()

    threads = [threading.Thread(target=client) for _ in range(8)]
    for thread in threads:
        thread.start()
    assert first_answer.wait(60)
    terminated = time.monotonic()
    children = [int(pid) for task in Path(f"/proc/{server.process.pid}/task").iterdir()
                for pid in (task / "children").read_text().split()]
    assert children, "the large bodies were decoded in a child process"
    server.process.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    # draining: readiness says 503 so load balancers stop sending, while requests are still answered
    assert server.request("GET", "/v2/health/ready")[0] == 503
    assert server.request("GET", "/health/live")[0] == 200
    small = digits_rows(1, seed=7)
    assert server.post("/predict", {"input": small.tolist()})[0] == 200
    for thread in threads:
        thread.join(60)
    assert server.process.wait(timeout=60) in (0, -signal.SIGTERM), "uvicorn re-raises SIGTERM after draining"
    deadline = time.monotonic() + 10
    while [pid for pid in children if Path(f"/proc/{pid}").exists()] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [pid for pid in children if Path(f"/proc/{pid}").exists()], "no child process outlives the server"
    assert len(answered) == 8 and all(status == 200 and correct for status, _, correct in answered), answered
    assert any(when > terminated for _, when, _ in answered), "some requests were still in flight at SIGTERM"


def test_schema_driven_fuzzing_finds_no_server_error(served) -> None:
    """Schemathesis generates requests from the server's own /openapi.json, valid and invalid (100 of each per
    POST endpoint here; `benchmarks/fuzz_server.py` runs 1,000): every answer is below 500, and every refusal is
    a JSON `{"error": ...}`."""
    server, _ = served
    problems, sent = fuzz(server, 100)
    assert not problems, problems[:5]
    assert sent["POST /v2/models/{name}/infer"] >= 150 and sent["POST /predict"] >= 150


def test_idle_and_slow_connections_are_closed_and_never_lock_out_a_health_check(digits_artifacts) -> None:
    """300 connections that send nothing and one that sends half a request, against a server that keeps at most
    100 open and gives each request 1 s: the oldest idle ones are closed to make room, the health check and a
    real request are answered meanwhile, and after the deadline every idle or slow connection is closed."""
    server = start_server(digits_artifacts["onnx"].path, "--request-timeout", "1", "--max-connections", "100")
    try:
        slow = socket.create_connection(("127.0.0.1", server.port))
        slow.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{\"input\": [")
        idle = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(300)]
        assert server.request("GET", "/health/live")[0] == 200
        images = digits_rows(2, seed=8)
        assert server.post("/predict", {"input": images.tolist()})[0] == 200

        def closed_by_server(connection: socket.socket, wait_s: float) -> bool:
            connection.settimeout(wait_s)
            try:
                return connection.recv(1) == b""
            except TimeoutError:
                return False
            except OSError:
                return True

        evicted = sum(closed_by_server(connection, 0.05) for connection in idle)
        assert evicted >= 190, f"only {evicted} of 300 idle connections closed to stay within 100"
        time.sleep(1.5)
        assert all(closed_by_server(connection, 0.5) for connection in [slow, *idle])
        assert server.request("GET", "/health/live")[0] == 200
        for connection in [slow, *idle]:
            connection.close()
    finally:
        stop_server(server)


def test_the_optional_runtimes_are_served_over_http_at_parity(digits_artifacts, tmp_path: Path) -> None:
    """OpenVINO and ExecuTorch artifacts served side by side on one thread each: 40 rows through the Open Inference
    Protocol (more than the ExecuTorch program's planned 32, so the server's call runs in two chunks) agree with
    ONNX Runtime in process, and each reports its platform."""
    from models import installed_formats

    formats = [name for name in ("openvino", "openvino_int8", "executorch", "executorch_int8")
               if name in installed_formats()]
    if not formats:
        pytest.skip("neither the openvino nor the executorch extra is installed")
    for name in formats:
        shutil.copytree(digits_artifacts[name].path, tmp_path / name)
    server = start_server(tmp_path, "--threads", "1")
    try:
        images = digits_rows(40, seed=2)
        expected = digits_artifacts["onnx"].run(images)[0]
        for name in formats:
            status, body = server.post(f"/v2/models/digits_cnn-{name}/infer", {"inputs": [
                {"name": "image", "shape": list(images.shape), "datatype": "FP32", "data": images.ravel().tolist()}]})
            assert status == 200, (name, body)
            logits = np.array(body["outputs"][0]["data"]).reshape(body["outputs"][0]["shape"])
            assert logits.shape == (40, 10)
            if name.endswith("_int8"):
                assert np.mean(logits.argmax(1) == expected.argmax(1)) >= 0.95, name
            else:
                np.testing.assert_allclose(logits, expected, atol=1e-4, err_msg=name)
            platform = server.request("GET", f"/v2/models/digits_cnn-{name}")[1]["platform"]
            assert platform == name.removesuffix("_int8"), (name, platform)
    finally:
        stop_server(server)
