"""A real `deploycheck serve` (uvicorn) process on loopback for the server tests, and a client for it."""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Server:
    port: int
    process: subprocess.Popen[bytes]

    def request(self, method: str, path: str, body: bytes | str | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, dict]:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            connection.request(method, path, body=body, headers=headers or {})
            response = connection.getresponse()
            raw = response.read()
        finally:
            connection.close()
        try:
            return response.status, json.loads(raw)
        except ValueError:
            return response.status, {"text": raw.decode()}

    def post(self, path: str, payload: object) -> tuple[int, dict]:
        return self.request("POST", path, json.dumps(payload), {"Content-Type": "application/json"})

    def errors_total(self) -> float:
        """`deploycheck_errors_total` summed over models and error types."""
        status, body = self.request("GET", "/metrics")
        assert status == 200
        return sum(float(v) for v in re.findall(r'^deploycheck_errors_total\{[^}]*\} (\S+)$', body["text"], re.M))

    def metric(self, name: str, model: str, **labels: str) -> float:
        """The sum of `name`'s series whose labels include `model` and `labels` (0 when there is none)."""
        return sum(value for value, _ in self.series(name, model=model, **labels))

    def series(self, name: str, **labels: str) -> list[tuple[float, dict[str, str]]]:
        """`name`'s series in /metrics whose labels include `labels`: (value, all its labels)."""
        status, body = self.request("GET", "/metrics")
        assert status == 200
        found = []
        for text, value in re.findall(rf'^{name}\{{([^}}]*)\}} (\S+)$', body["text"], re.M):
            series = dict(re.findall(r'(\w+)="([^"]*)"', text))
            if labels.items() <= series.items():
                found.append((float(value), series))
        return found


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def start_server(path: Path, *options: str) -> Server:
    """`deploycheck serve path *options` on a free port, once ready. Without a `--drain` in `options` it drains for
    0 s: the default 5 s of readiness 503s after SIGTERM (for a load balancer to notice) would make each
    `stop_server` wait 5 s; the one test of draining asks for its own."""
    port = free_port()
    drain = () if "--drain" in options else ("--drain", "0")
    process = subprocess.Popen([sys.executable, "-m", "deploycheck.cli", "serve", str(path), "--port", str(port),
                                "--log-level", "warning", *drain, *options], env={**os.environ})
    server = Server(port, process)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        assert process.poll() is None, f"deploycheck serve exited with {process.returncode}"
        try:
            if server.request("GET", "/v2/health/ready")[0] == 200:
                return server
        except OSError:
            pass
        time.sleep(0.2)
    process.kill()
    raise AssertionError("the server did not become ready in 90 s")


def stop_server(server: Server) -> None:
    server.process.send_signal(signal.SIGTERM)
    try:
        server.process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        server.process.kill()


def fuzz(server: Server, max_examples: int, paths: tuple[str, ...] = ()) -> tuple[list[tuple[str, int, str]],
                                                                                  dict[str, int]]:
    """Schemathesis requests generated from the server's own /openapi.json (valid ones, and invalid ones for each
    POST), `max_examples` each, for the operations whose path ends with one of `paths` (all when none): the
    answers at or above 500, or refused without a JSON `{"error": ...}`, and how many each operation was sent."""
    import schemathesis
    from hypothesis import HealthCheck, given, settings
    from schemathesis import GenerationMode

    base_url = f"http://127.0.0.1:{server.port}"
    schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json")
    problems: list[tuple[str, int, str]] = []
    sent: dict[str, int] = {}
    for result in schema.get_all_operations():
        operation = result.ok()
        if paths and not operation.path.endswith(paths):
            continue
        modes = [GenerationMode.POSITIVE, GenerationMode.NEGATIVE] if operation.method.upper() == "POST" else [
            GenerationMode.POSITIVE]
        for mode in modes:
            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(max_examples=max_examples, deadline=None, suppress_health_check=list(HealthCheck),
                      database=None)
            def check(case: object) -> None:
                label = case.operation.label  # type: ignore[attr-defined]
                response = case.call(base_url=base_url)  # type: ignore[attr-defined]
                sent[label] = sent.get(label, 0) + 1
                refused_without_error = response.status_code >= 400 and "error" not in json.loads(response.content)
                if response.status_code >= 500 or refused_without_error:
                    problems.append((label, response.status_code, response.text[:200]))

            check()
    return problems, sent
