"""Serving throughput and latency on the digits CNN (run on demand; prints, asserts nothing).

Three ways to answer a batch-1 request, under 8 and 32 concurrent clients on loopback:

1. `deploycheck serve` on the ONNX artifact (uvicorn, dynamic batching, orjson), and on the TorchScript one
   (`--trust-code`: our own export), each runtime with one intra-op thread and no spinning pool threads;
2. a reference Flask server written the naive way: threaded Flask, a torch tensor built from the JSON, the eager
   model, and a monitor that recomputes a numpy mean over a 1000-entry deque on every call;
3. in-process `session.run` from the same number of threads (no HTTP: the ceiling).

The HTTP load comes from `wrk` (Debian package `wrk`) when it is installed: a C load generator leaves the
CPU to the servers, which matters on a 2-core machine; otherwise from Python threads (`--load python`), one
keep-alive connection each. Every client sends requests back to back for `--seconds`; printed are requests/s
and the p50 / p99 latency the clients saw.

    python benchmarks/serve.py [--seconds 10] [--clients 8,32] [--load wrk|python]
"""

from __future__ import annotations

import argparse
import http.client
import json
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

import numpy as np
from served import free_port, wait_ready


def flask_server(port: int) -> None:
    """The naive reference server (runs in its own process)."""
    import torch
    from flask import Flask, jsonify, request

    from deploycheck.digits import trained_cnn

    torch.set_num_threads(1)
    model = trained_cnn().eval()
    latencies: deque[float] = deque(maxlen=1000)
    app = Flask("naive")

    @app.post("/predict")
    def predict() -> object:
        start = time.perf_counter()
        tensor = torch.tensor(request.get_json()["input"], dtype=torch.float32)
        with torch.no_grad():
            logits = model(tensor)
        latencies.append((time.perf_counter() - start) * 1e3)
        mean_ms = float(np.mean(latencies))
        return jsonify({"predictions": logits.argmax(1).tolist(), "mean_ms": mean_ms})

    @app.get("/health")
    def health() -> object:
        return jsonify({"status": "ok"})

    app.run("127.0.0.1", port, threaded=True)


def load(clients: int, seconds: float, call: Callable[[], Callable[[], None]]) -> tuple[float, float, float]:
    """Run `clients` threads calling their own `call()` back to back; (requests/s, p50 ms, p99 ms)."""
    latencies: list[list[float]] = [[] for _ in range(clients)]
    start_line = threading.Barrier(clients + 1)
    stop = [0.0]

    def client(index: int) -> None:
        send = call()
        start_line.wait()
        mine = latencies[index]
        while time.perf_counter() < stop[0]:
            began = time.perf_counter()
            send()
            mine.append(time.perf_counter() - began)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    stop[0] = time.perf_counter() + seconds
    start_line.wait()
    began = time.perf_counter()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - began
    flat = np.concatenate([np.asarray(v) for v in latencies]) * 1e3
    return len(flat) / elapsed, float(np.percentile(flat, 50)), float(np.percentile(flat, 99))


def wrk_load(clients: int, seconds: float, port: int, path: str, body: bytes) -> tuple[float, float, float]:
    """(requests/s, p50 ms, p99 ms) from `wrk --latency` with `clients` connections on 2 threads."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(f'wrk.method = "POST"\nwrk.body = {json.dumps(body.decode())}\n'
                     'wrk.headers["Content-Type"] = "application/json"\n')
    output = subprocess.run(["wrk", "-t", "2", "-c", str(clients), "-d", f"{seconds:g}s", "--latency", "-s",
                             script.name, f"http://127.0.0.1:{port}{path}"], capture_output=True, text=True,
                            check=True).stdout
    if re.search(r"Non-2xx or 3xx responses", output):
        raise RuntimeError(f"wrk saw failed requests:\n{output}")
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))  # type: ignore[union-attr]

    def percentile(label: str) -> float:
        value, unit = re.search(rf"^\s+{label}%\s+([\d.]+)(us|ms|s)\s*$", output, re.M).groups()  # type: ignore
        return float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]

    return rps, percentile("50"), percentile("99")


def http_client(port: int, path: str, body: bytes) -> Callable[[], Callable[[], None]]:
    def make() -> Callable[[], None]:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)

        def send() -> None:
            connection.request("POST", path, body, {"Content-Type": "application/json"})
            response = connection.getresponse()
            payload = response.read()
            if response.status != 200:
                raise RuntimeError(f"{response.status}: {payload[:200]!r}")
        return send
    return make


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--clients", default="8,32")
    parser.add_argument("--load", choices=["wrk", "python"], default="wrk" if shutil.which("wrk") else "python")
    parser.add_argument("--flask-server", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.flask_server:
        flask_server(args.flask_server)
        return

    import deploycheck
    from deploycheck.digits import digits_spec
    from deploycheck.formats.onnx import create_session

    spec = digits_spec()
    root = Path(tempfile.mkdtemp(prefix="deploycheck-serve-"))
    onnx = deploycheck.export(spec, "onnx", root / "onnx")
    torchscript = deploycheck.export(spec, "torchscript", root / "torchscript")
    image = spec.sample_inputs(1)[0].numpy()
    body = json.dumps({"input": image.tolist()}).encode()

    ours_port, script_port, flask_port = free_port(), free_port(), free_port()
    servers = {
        "deploycheck serve": (subprocess.Popen([sys.executable, "-m", "deploycheck.cli", "serve", str(onnx.path),
                                                "--port", str(ours_port), "--log-level", "warning"]), ours_port,
                              "/v2/health/ready"),
        "deploycheck serve (ts)": (subprocess.Popen([sys.executable, "-m", "deploycheck.cli", "serve",
                                                     str(torchscript.path), "--trust-code", "--port",
                                                     str(script_port), "--log-level", "warning"]), script_port,
                                   "/v2/health/ready"),
        "naive Flask": (subprocess.Popen([sys.executable, __file__, "--flask-server", str(flask_port)],
                                         stderr=subprocess.DEVNULL), flask_port, "/health"),
    }
    try:
        for process, port, health in servers.values():
            wait_ready(port, health, process)
        session = create_session(onnx.path / "model.onnx", intra_op_threads=1, inter_op_threads=1)
        feed = {"image": image}

        def in_process() -> Callable[[], None]:
            return lambda: session.run(None, feed)

        rows = []
        for clients in (int(c) for c in args.clients.split(",")):
            for name, (_, port, _) in servers.items():
                if args.load == "wrk":
                    rows.append((clients, name, *wrk_load(clients, args.seconds, port, "/predict", body)))
                else:
                    rows.append((clients, name, *load(clients, args.seconds, http_client(port, "/predict", body))))
            rows.append((clients, "in-process session.run", *load(clients, args.seconds, in_process)))
        print(f"HTTP load from {args.load}")
        print(f"{'clients':>7}  {'server':<24} {'requests/s':>10} {'p50 ms':>8} {'p99 ms':>8}")
        for clients, name, rps, p50, p99 in rows:
            print(f"{clients:>7}  {name:<24} {rps:>10.0f} {p50:>8.2f} {p99:>8.2f}")
        for clients in sorted({r[0] for r in rows}):
            ours = next(r for r in rows if r[0] == clients and r[1] == "deploycheck serve")
            flask = next(r for r in rows if r[0] == clients and r[1] == "naive Flask")
            script = next(r for r in rows if r[0] == clients and r[1] == "deploycheck serve (ts)")
            print(f"{clients} clients: deploycheck serve {ours[2] / flask[2]:.1f}x the requests/s of naive Flask, "
                  f"p99 {ours[4]:.2f} ms vs {flask[4]:.2f} ms; TorchScript served at {script[2] / ours[2]:.2f}x "
                  "ONNX's requests/s")
    finally:
        for process, _, _ in servers.values():
            process.terminate()
            process.wait(timeout=30)


if __name__ == "__main__":
    main()
