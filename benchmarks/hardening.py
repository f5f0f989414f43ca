"""The server under abuse, on loopback: figures for the hardening acceptance.

1. 20,000 connections opened and left idle (two client processes of 10,000; the server keeps at most
   `--max-connections`, default 10,000, closing the oldest idle ones): /health/live latency meanwhile.
2. One 100,000-row JSON body (the digits' integer pixels, 16.6 MiB) to /predict while another caller polls
   /health/live and a one-row /predict: the big request's status and time, the other callers' worst wait,
   and the server's RSS before, at its peak and 5 s after, against its idle level.

    python benchmarks/hardening.py [--max-body-mb 64]   (the default 16 MiB refuses the body by size at once)
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing
import multiprocessing.synchronize
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from served import free_port, wait_ready

import deploycheck
from deploycheck.digits import digits_spec


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize() / 2**20


def children_rss_mb(pid: int) -> float:
    """RSS of the server's child processes (the decoder of large bodies)."""
    total = 0.0
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            total += rss_mb(int(child))
    return total


def hold_idle(port: int, count: int, opened: multiprocessing.synchronize.Event,
              release: multiprocessing.synchronize.Event) -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    connections = []
    for _ in range(count):
        try:
            connections.append(socket.create_connection(("127.0.0.1", port), timeout=5))
        except OSError:
            break
    opened.set()
    release.wait(120)


def timed_get(port: int, path: str) -> float:
    started = time.perf_counter()
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    connection.request("GET", path)
    connection.getresponse().read()
    connection.close()
    return (time.perf_counter() - started) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-body-mb", default="16")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="deploycheck-hardening-"))
    deploycheck.export(digits_spec(), "onnx", root / "digits_cnn" / "onnx")
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "deploycheck.cli", "serve", str(root), "--port", str(port),
                               "--log-level", "warning", "--request-timeout", "60", "--max-body-mb", args.max_body_mb])
    try:
        wait_ready(port, "/v2/health/ready", server)
        print(f"health/live, quiet: {statistics.median(timed_get(port, '/health/live') for _ in range(20)):.2f} ms")

        opened = [multiprocessing.Event() for _ in range(2)]
        release = multiprocessing.Event()
        holders = [multiprocessing.Process(target=hold_idle, args=(port, 10_000, o, release)) for o in opened]
        started = time.perf_counter()
        for holder in holders:
            holder.start()
        for event in opened:
            event.wait(120)
        print(f"20,000 idle connections opened in {time.perf_counter() - started:.1f} s")
        waits = [timed_get(port, "/health/live") for _ in range(20)]
        print(f"health/live with 20,000 idle connections: median {statistics.median(waits):.2f} ms, "
              f"max {max(waits):.2f} ms")
        release.set()
        for holder in holders:
            holder.join(60)
        time.sleep(1)

        rng = np.random.default_rng(0)
        pixels = rng.integers(0, 17, size=(100_000, 1, 8, 8))  # the digits' own values, 0-16
        big = json.dumps({"input": pixels.tolist()}, separators=(",", ":")).encode()
        small = json.dumps({"input": rng.normal(size=(1, 1, 8, 8)).tolist()}).encode()
        idle_rss = rss_mb(server.pid)
        worst = {"health": 0.0, "predict": 0.0}
        peak = [idle_rss]
        done = threading.Event()

        def other_callers() -> None:
            while not done.is_set():
                worst["health"] = max(worst["health"], timed_get(port, "/health/live"))
                started = time.perf_counter()
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
                connection.request("POST", "/predict", small, {"Content-Type": "application/json"})
                connection.getresponse().read()
                connection.close()
                worst["predict"] = max(worst["predict"], (time.perf_counter() - started) * 1e3)
                peak.append(rss_mb(server.pid))

        callers = threading.Thread(target=other_callers)
        callers.start()
        started = time.perf_counter()
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        connection.request("POST", "/predict", big, {"Content-Type": "application/json"})
        response = connection.getresponse()
        answer = response.read()
        elapsed = time.perf_counter() - started
        time.sleep(0.5)
        done.set()
        callers.join()
        time.sleep(5)
        print(f"100,000-row body ({len(big) / 2**20:.1f} MiB): {response.status} in {elapsed:.2f} s "
              f"({json.loads(answer).get('error', '')[:80]})")
        print(f"other callers meanwhile: worst /health/live {worst['health']:.0f} ms, worst 1-row /predict "
              f"{worst['predict']:.0f} ms")
        print(f"server RSS: idle {idle_rss:.0f} MB, peak seen {max(peak):.0f} MB, 5 s after "
              f"{rss_mb(server.pid):.0f} MB (+ {children_rss_mb(server.pid):.0f} MB in the body decoder process)")
    finally:
        server.terminate()
        server.wait(60)


if __name__ == "__main__":
    main()
