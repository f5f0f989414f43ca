"""Generative artifacts streamed over real HTTP: `deploycheck serve` on loopback serving the Llama-style and GPT-2
decoders of `benchmarks/generative.py` (prompts of 32 tokens, 32 new tokens), 8 concurrent clients x 20 streamed
generations per served decoder. Every stream is checked token for token against the in-process greedy output
(eager's), and the client-side TTFT / TPOT / inter-token latency are printed beside what the server's /metrics
counted.

    python benchmarks/generative_serving.py [--clients 8] [--generations 20] [--formats onnx,openvino,executorch]

Prints; asserts nothing (a stream that differs is counted and printed).
"""

from __future__ import annotations

import argparse
import http.client
import json
import re
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from deploycheck.errors import FormatUnavailable
from deploycheck.generation.decoders import EagerDecoder
from deploycheck.generation.formats import export_decoder
from deploycheck.generation.spec import GenerativeSpec
from deploycheck.generation.streams import generate
from deploycheck.table import format_table

sys.path.insert(0, str(Path(__file__).parent))
from generative import NEW, PROMPT, models  # the same models and lengths as the gate benchmark

PORT = 8731


def stream(name: str, prompt: list[int]) -> tuple[list[int], float, list[float]]:
    """One streamed generation: its tokens, the client's TTFT and the gaps between events, in seconds."""
    connection = http.client.HTTPConnection("127.0.0.1", PORT, timeout=120)
    started = time.perf_counter()
    connection.request("POST", f"/v2/models/{name}/generate_stream",
                       json.dumps({"input_ids": prompt, "max_tokens": NEW}), {"Content-Type": "application/json"})
    response = connection.getresponse()
    tokens, times = [], []
    for line in response:
        if line.startswith(b"data: "):
            event = json.loads(line[6:])
            if "error" in event:
                raise RuntimeError(event["error"])
            times.append(time.perf_counter() - started)
            tokens.extend(event["output_ids"])
    connection.close()
    return tokens, times[0], list(np.diff(times))


def metric(text: str, name: str, model: str, format_name: str) -> float:
    pattern = rf'^{name}\{{[^}}]*format="{format_name}"[^}}]*model="{model}"[^}}]*\}} (\S+)$'
    return sum(float(v) for v in re.findall(pattern, text, re.M))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--generations", type=int, default=20)
    parser.add_argument("--formats", default="onnx,openvino,executorch")
    args = parser.parse_args()
    formats = args.formats.split(",")
    prompts = torch.randint(0, 512, (16, PROMPT), generator=torch.Generator().manual_seed(3))
    root = Path(tempfile.mkdtemp(prefix="deploycheck-serving-"))
    wanted: dict[tuple[str, int], list[int]] = {}
    served: list[str] = []
    for model_name, model in models().items():
        spec = GenerativeSpec(model_name, model, prompts, new_tokens=NEW, batch_sizes=(1,))
        for format_name in formats:
            try:
                export_decoder(spec, format_name, root / f"{model_name}-{format_name}")
            except FormatUnavailable as exc:
                print(f"{model_name}-{format_name} not served: {exc}", flush=True)
                continue
            served.append(f"{model_name}-{format_name}")
        eager = EagerDecoder(model, "eager")
        for row in range(len(prompts)):
            wanted[(model_name, row)] = generate(eager, prompts[row:row + 1].numpy(), NEW).tokens[0].tolist()
    server = subprocess.Popen([sys.executable, "-m", "deploycheck.cli", "serve", str(root), "--port", str(PORT),
                               "--log-level", "warning", "--drain", "0"])
    try:
        while True:
            try:
                if urllib.request.urlopen(f"http://127.0.0.1:{PORT}/v2/health/ready").status == 200:
                    break
            except OSError:
                time.sleep(0.2)
        rows = []
        for name in served:
            model_name, format_name = name.split("-")
            jobs = [(c, g % len(prompts)) for c in range(args.clients) for g in range(c, c + args.generations)]

            def client(index: int, name: str = name, jobs: list[tuple[int, int]] = jobs
                       ) -> list[tuple[int, list[int], float, list[float]]]:
                return [(row, *stream(name, prompts[row].tolist())) for c, row in jobs if c == index]

            started = time.perf_counter()
            with ThreadPoolExecutor(args.clients) as pool:
                results = [r for chunk in pool.map(client, range(args.clients)) for r in chunk]
            wall = time.perf_counter() - started
            complete = sum(len(tokens) == NEW for _, tokens, _, _ in results)
            equal = sum(tokens == wanted[(model_name, row)] for row, tokens, _, _ in results)
            ttft = np.array([t for _, _, t, _ in results]) * 1e3
            gaps = np.concatenate([g for _, _, _, g in results]) * 1e3
            tpot = np.array([np.mean(g) for _, _, _, g in results]) * 1e3
            text = urllib.request.urlopen(f"http://127.0.0.1:{PORT}/metrics").read().decode()
            counted = [metric(text, f"deploycheck_{m}", model_name, format_name)
                       for m in ("time_to_first_token_seconds_count", "generated_tokens_total")]
            rows.append([name, f"{len(results)}", f"{complete}", f"{equal}", f"{np.median(ttft):.1f}",
                         f"{np.percentile(ttft, 99):.1f}", f"{np.median(tpot):.2f}", f"{np.percentile(gaps, 50):.2f}",
                         f"{np.percentile(gaps, 99):.2f}", f"{len(results) * NEW / wall:.0f}",
                         *(f"{count:.0f}" for count in counted)])
        print(f"{args.clients} concurrent clients x {args.generations} streamed generations per decoder, prompt "
              f"{PROMPT}, {NEW} new tokens, one server process (one thread per runtime)")
        print(format_table(["served as", "streams", "complete", "= in-process", "TTFT p50 ms", "TTFT p99 ms",
                            "TPOT p50 ms", "ITL p50 ms", "ITL p99 ms", "tokens/s", "/metrics TTFT count",
                            "/metrics tokens"], rows))
    finally:
        server.terminate()
        server.wait(30)


if __name__ == "__main__":
    main()
