"""Schema-driven fuzzing of `deploycheck serve`: Schemathesis generates requests from the server's /openapi.json
(valid and invalid), 1,000 of each kind per POST endpoint (GET endpoints take no input: each is called once),
against the digits CNN and an integer-input model served on loopback. Prints the requests sent per endpoint,
the status codes seen and every 5xx or non-JSON refusal (there should be none).

    python benchmarks/fuzz_server.py [--examples 1000]
"""

from __future__ import annotations

import argparse
import collections
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import schemathesis
import torch
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from served import free_port, wait_ready

import deploycheck
from deploycheck.digits import digits_spec


class Lookup(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.table = torch.nn.Embedding(10, 4)

    def forward(self, index: torch.Tensor) -> torch.Tensor:
        return self.table(index).sum(dim=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=1000)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="deploycheck-fuzz-"))
    deploycheck.export(digits_spec(), "onnx", root / "digits_cnn" / "onnx")
    lookup = deploycheck.ModelSpec(name="lookup", model=Lookup(), example_inputs=torch.randint(0, 10, (4, 3)),
                                   formats=["onnx"])
    deploycheck.export(lookup, "onnx", root / "lookup" / "onnx")
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "deploycheck.cli", "serve", str(root), "--port", str(port),
                               "--log-level", "warning"])
    base_url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(port, "/v2/health/ready", server)
        schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json")
        sent: collections.Counter[str] = collections.Counter()
        statuses: collections.Counter[int] = collections.Counter()
        problems: list[tuple[str, int, str]] = []
        started = time.perf_counter()
        for result in schema.get_all_operations():
            operation = result.ok()
            post = operation.method.upper() == "POST"
            for mode in [GenerationMode.POSITIVE, GenerationMode.NEGATIVE] if post else [GenerationMode.POSITIVE]:
                @given(case=operation.as_strategy(generation_mode=mode))
                @settings(max_examples=args.examples, deadline=None, suppress_health_check=list(HealthCheck),
                          database=None)
                def check(case) -> None:
                    label = case.operation.label
                    response = case.call(base_url=base_url)
                    sent[label] += 1
                    statuses[response.status_code] += 1
                    if response.status_code >= 500 or (
                            response.status_code >= 400 and "error" not in json.loads(response.content)):
                        problems.append((label, response.status_code, response.text[:200]))

                check()
        print(f"{sum(sent.values())} requests in {time.perf_counter() - started:.1f} s")
        for label, count in sent.items():
            print(f"  {label:32} {count:6}")
        print("status codes:", dict(sorted(statuses.items())))
        print(f"5xx or non-JSON refusals: {len(problems)}")
        for problem in problems[:20]:
            print("  ", problem)
    finally:
        server.terminate()
        server.wait(60)


if __name__ == "__main__":
    main()
