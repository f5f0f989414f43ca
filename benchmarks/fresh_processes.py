"""How far a format's batch-1 p50 moves from one fresh process to the next (run on demand; prints, asserts nothing).

A stored baseline compares figures from two processes, so a latency that is bimodal across processes (one
process fast, the next 2x slower, from thread pools, allocator or CPU placement) would make every stored verdict
a coin toss. A 1-D conv + GRU model, the kind the issue measured, is exported once to the torch formats and ONNX;
then `--processes` fresh processes each `bench` every format at batch 1 (the plugin's defaults: one thread, 1 s)
and report the p50 and the reference workload's median. Printed per format: min, median and max p50 over the
processes, and the largest deviation from the median.

    python benchmarks/fresh_processes.py [--processes 10] [--formats eager,torchscript,torch_export,onnx]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np


def spec() -> object:
    import torch

    import deploycheck

    class ConvGRU(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv1d(8, 32, 5, padding=2)
            self.gru = torch.nn.GRU(32, 64, batch_first=True)
            self.head = torch.nn.Linear(64, 5)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            hidden, _ = self.gru(torch.relu(self.conv(x)).transpose(1, 2))
            return self.head(hidden[:, -1])

    torch.manual_seed(0)
    return deploycheck.ModelSpec(name="conv_gru", model=ConvGRU().eval(), example_inputs=torch.randn(8, 8, 50))


def one_process(workdir: Path, formats: list[str]) -> dict[str, list[float]]:
    import deploycheck

    figures = {}
    for name in formats:
        artifact = deploycheck.export(spec(), name, workdir / name)  # reused from the export cache after the first
        stats = deploycheck.bench(artifact, batch_sizes=(1,)).stats[1]
        figures[name] = [stats.p50_ms, stats.reference_p50_ms or 0.0]
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=10)
    parser.add_argument("--formats", default="eager,torchscript,torch_export,onnx")
    parser.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    formats = args.formats.split(",")
    if args.workdir:
        print(json.dumps(one_process(args.workdir, formats)))
        return
    workdir = Path(tempfile.mkdtemp(prefix="deploycheck-fresh-"))
    runs = []
    for index in range(args.processes):
        done = subprocess.run([sys.executable, __file__, "--workdir", str(workdir), "--formats", args.formats],
                              capture_output=True, text=True, check=True)
        runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(f"process {index + 1:2d}: " + "  ".join(f"{name} {runs[-1][name][0]:.3f} ms" for name in formats),
              flush=True)
    for name in [*formats, "reference"]:
        values = np.array([run[name][0] for run in runs]) if name != "reference" else \
            np.array([run[formats[0]][1] for run in runs])
        centre = float(np.median(values))
        print(f"{name:14s} p50 min {values.min():.4f}  median {centre:.4f}  max {values.max():.4f} ms;  largest "
              f"deviation from the median {np.abs(values / centre - 1).max():.1%}")


if __name__ == "__main__":
    main()
