"""Fast unit tests of pure logic with fakes in place of runtimes: the batcher, the gate's row, the summary's
columns. (The end-to-end tests run the same code on real exports; these say which piece broke, in milliseconds.)"""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from deploycheck.artifact import Artifact
from deploycheck.gate import Gate
from deploycheck.report.summary import summary_table
from deploycheck.rows import Row
from deploycheck.run_result import RunResult
from deploycheck.server.batcher import Batcher


def test_the_batcher_merges_concurrent_requests_and_returns_each_caller_its_own_rows() -> None:
    batches: list[int] = []
    lock = threading.Lock()

    def double(inputs: list[np.ndarray]) -> list[np.ndarray]:
        with lock:
            batches.append(len(inputs[0]))
        return [inputs[0] * 2]

    async def scenario() -> list[list[np.ndarray]]:
        with ThreadPoolExecutor(1) as executor:
            batcher = Batcher(double, max_batch_size=8, max_delay_s=0.05, executor=executor)
            batcher.start()
            requests = [np.full((rows, 3), float(i), np.float32) for i, rows in enumerate([1, 2, 3, 4, 5, 1])]
            results = await asyncio.gather(*(batcher.submit([r]) for r in requests))
            await batcher.stop()
            return results

    results = asyncio.run(scenario())
    for i, (rows, result) in enumerate(zip([1, 2, 3, 4, 5, 1], results)):
        np.testing.assert_array_equal(result[0], np.full((rows, 3), 2.0 * i, np.float32))
    assert sum(batches) == 16 and max(batches) <= 8 and len(batches) < 6  # merged, never over the limit


def test_the_batcher_keeps_requests_of_different_shapes_apart() -> None:
    seen: list[tuple[int, ...]] = []

    def shapes(inputs: list[np.ndarray]) -> list[np.ndarray]:
        seen.append(inputs[0].shape)
        return [inputs[0].sum(axis=1)]

    async def scenario() -> list[list[np.ndarray]]:
        with ThreadPoolExecutor(1) as executor:
            batcher = Batcher(shapes, max_batch_size=32, max_delay_s=0.05, executor=executor)
            batcher.start()
            results = await asyncio.gather(batcher.submit([np.ones((2, 3))]), batcher.submit([np.ones((2, 5))]))
            await batcher.stop()
            return results

    short, long = asyncio.run(scenario())
    assert short[0].tolist() == [3, 3] and long[0].tolist() == [5, 5] and sorted(seen) == [(2, 3), (2, 5)]


def _fake_artifact(format_name: str = "onnx_int8_static") -> Artifact:
    metadata = {"format": format_name, "model": "fake", "size_bytes": 1234,
                "inputs": [{"name": "x", "shape": [None, 3], "dtype": "float32"}],
                "outputs": [{"name": "y", "shape": [None, 3], "dtype": "float32"}],
                "quantization": {"int8_weight_fraction": 0.75}}
    return Artifact(format_name, Path("/nowhere/fake"), metadata, lambda inputs: inputs)


def test_the_gate_records_one_row_per_measurement_with_the_artifacts_facts() -> None:
    rows: list[Row] = []
    gate = Gate(rows.append)
    gate.record(_fake_artifact(), parity={"max_abs": 0.5, "top1_agreement": 0.99, "passed": True})
    assert rows == [{"model": "fake", "format": "onnx_int8_static", "size_bytes": 1234,
                     "artifact_path": "/nowhere/fake", "int8_weight_fraction": 0.75,
                     "parity": {"max_abs": 0.5, "top1_agreement": 0.99, "passed": True}}]


def test_the_summary_shows_each_rows_real_status_in_its_columns() -> None:
    rows: list[Row] = [
        {"model": "m", "format": "onnx", "size_bytes": 2048,
         "parity": {"max_abs": 1e-6, "top1_agreement": 1.0, "passed": True}},
        {"model": "m", "format": "torchscript", "size_bytes": 4096, "failed_tests": ["test_parity"]},
        {"model": "m", "format": "state_dict", "skipped": "no factory"},
    ]
    lines = summary_table(RunResult.from_rows(rows).results).splitlines()
    header = lines[0].split()
    assert header[:2] == ["model", "format"] and "status" in header
    status = {line.split()[1]: line.split()[-1] for line in lines[2:]}
    assert status == {"onnx": "ok", "torchscript": "FAIL", "state_dict": "skipped"}
    assert "2.0 KiB" in lines[2] and "4.0 KiB" in lines[3]


def test_the_best_format_is_the_fastest_that_passed_every_gate() -> None:
    from deploycheck.report.summary import best_formats

    def row(fmt: str, p50: float, passed: bool = True) -> Row:
        return {"model": "m", "format": fmt, "parity": {"max_abs": 0.0, "top1_agreement": 1.0, "passed": passed},
                "accuracy": {"drop": 0.001, "passed": True}, "speedup": {"vs_eager": {"ratio": 2.0, "low": 1.9,
                                                                                      "high": 2.1}},
                "latency": {"1": {"p50_ms": p50}, "8": {"p50_ms": p50 * 4}}}

    rows = [row("eager", 0.5), row("onnx", 0.1), row("onnx_int8_static", 0.05, passed=False), row("openvino", 0.2)]
    assert best_formats(RunResult.from_rows(rows).results) == [
        "deploycheck: best format for m: onnx (p50 0.100 ms, 2.00x eager, accuracy drop 0.10%, every gate passed)"]


def test_the_run_ends_with_one_verdict_line_saying_what_to_do() -> None:
    from deploycheck.report.summary import verdict

    ok: Row = {"model": "m", "format": "onnx", "parity": {"max_abs": 0.0, "top1_agreement": 1.0, "passed": True}}
    behind: Row = {"model": "m", "format": "onnx_int8_static",
                   "baseline": {"accuracy": {"passed": False, "status": "FAIL", "change": "-0.74 pt"}}}
    assert verdict(RunResult.from_rows([ok])) == "deploycheck: 1 of 1 model x format(s) passed"
    assert verdict(RunResult.from_rows([ok, behind])) == (
        "deploycheck: 1 of 2 model x format(s) FAILED (m/onnx_int8_static); 1 fell behind its baseline\n  if that "
        "is intended, accept the new figures with: pytest --deploycheck-update")


def test_inputs_of_different_batch_sizes_are_refused_also_for_a_sidecar_without_axis_names() -> None:
    """The shared batch axis is one check, in `check_inputs` (the server's own batch-size check went): a sidecar
    written before axes were named reads its dynamic first axis as the batch."""
    import pytest

    from deploycheck.artifact import TensorSpec, check_inputs
    from deploycheck.errors import InputError

    old = [TensorSpec.from_dict({"name": name, "shape": [None, 3], "dtype": "float32"}) for name in ("a", "b")]
    assert old[0].axis_names == ("batch", None)
    with pytest.raises(InputError, match=r"m/onnx: input 'b' has 1 on axis 0 \(batch\) where 'a' has 2"):
        check_inputs("m/onnx", old, [np.zeros((2, 3), np.float32), np.zeros((1, 3), np.float32)])
    fixed = TensorSpec.from_dict({"name": "x", "shape": [4, 3], "dtype": "float32"})
    assert fixed.axis_names == (None, None)


def test_every_speed_verdict_is_one_interval_rule() -> None:
    """Regressed only when the whole interval clears the limit; inconclusive (said, not failed) when it straddles
    it: for single-pass latency and throughput side by side and for a decoder's rounds alike."""
    import numpy as np

    from deploycheck.baseline.compare import latency_side_by_side, throughput_side_by_side
    from deploycheck.baseline.rules import LatencyLimit
    from deploycheck.stats import interval_verdict

    assert [interval_verdict(*case, 1.25) for case in ((1.3, 1.5), (1.1, 1.4), (0.9, 1.2), (1.25, 1.25))] == [
        "REGRESSED", "inconclusive", "ok", "ok"]
    rng = np.random.default_rng(0)
    old = 1e-3 * (1 + 0.01 * rng.standard_normal(200))
    limit = LatencyLimit("p50", 0.10)
    clear, straddling = old * 1.5, old * rng.choice([1.0, 1.25], 200)  # half the calls 25% slower: a noisy +12%
    assert latency_side_by_side(clear, old, limit, 1, 0.95, "the accepted artifact").status == "REGRESSED"
    assert latency_side_by_side(old * 1.02, old, limit, 1, 0.95, "the accepted artifact").status == "ok"
    found = latency_side_by_side(straddling, old, limit, 1, 0.95, "the accepted artifact")
    assert found.interval is not None and found.interval[0] < 0.10 < found.interval[1]
    assert found.status == "inconclusive", found
    assert throughput_side_by_side(clear, old, 0.10, 8, 0.95, "the accepted artifact").status == "REGRESSED"
    assert throughput_side_by_side(old, old * 1.02, 0.10, 8, 0.95, "the accepted artifact").status == "ok"
