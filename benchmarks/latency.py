"""Latency figures for the digits CNN (run on demand; prints, asserts nothing):

1. ten consecutive one-second `bench` runs of ONNX at batch 1, and the spread of their p50 (max/min);
2. `bench` p50 against a plain `timeit` of `session.run` with the same thread settings;
3. `compare_speed(eager, onnx)` and `compare_speed(onnx, onnx)` 20 times each: how often the interval excludes /
   contains 1;
4. p50 / p99 / throughput at batch 1, 8, 32 for every format, and the speedup of each against eager.

    python benchmarks/latency.py [--quick]
"""

from __future__ import annotations

import sys
import tempfile
import time
import timeit

import numpy as np

import deploycheck
from deploycheck.digits import digits_spec
from deploycheck.formats.onnx import create_session
from deploycheck.table import format_table


def main() -> None:
    quick = "--quick" in sys.argv
    spec = digits_spec()
    artifacts = deploycheck.export_all(spec, tempfile.mkdtemp(prefix="deploycheck-bench-"))
    onnx = artifacts["onnx"]

    runs = []
    for _ in range(3 if quick else 10):
        started = time.perf_counter()
        runs.append((deploycheck.bench(onnx, batch_sizes=(1,), max_time_s=1.0, min_time_s=1.0).stats[1],
                     time.perf_counter() - started))
    p50s = [stats.p50_ms for stats, _ in runs]
    print("1. ONNX batch 1, ten 1-second runs, p50 ms:", " ".join(f"{v:.4f}" for v in p50s))
    print(f"   spread max/min = {max(p50s) / min(p50s):.3f}; disturbed windows left out / wall s per run:",
          " ".join(f"{'all' if s.all_disturbed else s.disturbed_rounds}/{wall:.1f}" for s, wall in runs))

    session = create_session(onnx.path / "model.onnx", intra_op_threads=1, inter_op_threads=1)
    feed = {"image": spec.sample_inputs(1)[0].numpy()}
    plain = np.median(timeit.repeat(lambda: session.run(None, feed), number=1, repeat=20000)) * 1e3
    ours = deploycheck.bench(onnx, batch_sizes=(1,), max_time_s=1.0).stats[1].p50_ms
    print(f"2. bench p50 {ours:.4f} ms vs timeit(session.run) median {plain:.4f} ms: ratio {ours / plain:.3f}")

    runs = 5 if quick else 20
    different = [deploycheck.compare_speed(artifacts["eager"], onnx, max_time_s=0.5) for _ in range(runs)]
    same = [deploycheck.compare_speed(onnx, onnx, max_time_s=0.5) for _ in range(runs)]
    print(f"3. compare_speed(eager, onnx): interval excludes 1 in {sum(r.excludes_one() for r in different)}/{runs}"
          f" (ratios {min(r.ratio for r in different):.2f}..{max(r.ratio for r in different):.2f}); "
          f"compare_speed(onnx, onnx): contains 1 in {sum(r.low <= 1 <= r.high for r in same)}/{runs}")

    rows = []
    for name, artifact in artifacts.items():
        result = deploycheck.bench(artifact, batch_sizes=(1, 8, 32), max_time_s=0.5 if quick else 1.0)
        speedup = deploycheck.compare_speed(artifacts["eager"], artifact, max_time_s=0.5 if quick else 1.0)
        cells = [name]
        for batch in (1, 8, 32):
            s = result.stats[batch]
            cells += [f"{s.p50_ms:.3f}", f"{s.p99_ms:.3f}", f"{s.throughput_per_s:.0f}"]
        cells.append(f"{speedup.ratio:.2f} [{speedup.low:.2f}, {speedup.high:.2f}]")
        rows.append(cells)
    header = ["format"] + [f"{k} b{b}" for b in (1, 8, 32) for k in ("p50 ms", "p99 ms", "samples/s")]
    print("4. every format, 1 intra-op thread:")
    print(format_table([*header, "speedup vs eager (b1)"], rows))


if __name__ == "__main__":
    main()
