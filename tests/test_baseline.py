"""The baseline store and its rules, on real files and on latency samples with known differences."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from deploycheck.baseline import (
    INCONCLUSIVE,
    MISSING,
    OK,
    REGRESSED,
    BaselineStore,
    LatencyLimit,
    Rules,
    compare_records,
    load_records,
    merge_records,
    pyproject_settings,
    record_from_row,
    resolve_rules,
)
from deploycheck.errors import BaselineError
from deploycheck.latency import compact_quantiles


def latency_section(scale: float, reference_ms: float = 0.1, seed: int = 0, calls: int = 3000,
                    sigma: float = 0.1) -> dict:
    """A latency section as `bench` stores it, from log-normal samples scaled by `scale`."""
    rng = np.random.default_rng(seed)
    samples = np.exp(rng.normal(np.log(0.5), sigma, calls)) * scale
    reference = np.exp(rng.normal(np.log(reference_ms), 0.05, 800))
    return {"1": {"batch_size": 1, "calls": calls, "p50_ms": float(np.median(samples)),
                  "p99_ms": float(np.percentile(samples, 99)), "throughput_per_s": 1e3 / float(np.mean(samples)),
                  "quantiles_ms": compact_quantiles(samples), "reference_p50_ms": float(np.median(reference)),
                  "reference_calls": 800, "reference_quantiles_ms": compact_quantiles(reference)}}


def record(**sections: object) -> dict:
    return {"schema": 1, "model": "m", "format": "onnx", **sections}


def statuses(comparison) -> dict[str, str]:
    return {f.metric: f.status for f in comparison.findings}


def test_latency_limits_parse_and_reject_nonsense() -> None:
    assert LatencyLimit.parse("p50:10%") == LatencyLimit("p50", 0.10)
    assert LatencyLimit.parse(" p99 : 0.25 ") == LatencyLimit("p99", 0.25)
    with pytest.raises(BaselineError, match="p50:10%"):
        LatencyLimit.parse("median<10")


def test_rules_layer_over_defaults_with_per_format_overrides() -> None:
    rules = resolve_rules("onnx_int8_static",
                          ("pyproject", {"latency": "p50:15%", "onnx_int8_static": {"accuracy_drop": 0.01}}),
                          ("spec", {"size_growth": 0.2}))
    assert rules.latency == (LatencyLimit("p50", 0.15),) and rules.accuracy_drop == 0.01
    assert rules.size_growth == 0.2 and resolve_rules("onnx", ("pyproject", {"onnx_int8_static": {}})) == Rules()
    with pytest.raises(BaselineError, match=r"pyproject: unknown baseline rule.*'acuracy_drop'"):
        resolve_rules("onnx", ("pyproject", {"acuracy_drop": 0.01}))
    with pytest.raises(BaselineError, match="must be a non-negative number"):
        resolve_rules("onnx", ("spec", {"size_growth": "5%"}))


def test_pyproject_tool_table_is_read(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text('[tool.deploycheck]\nbaselines = "gate"\n'
                                            '[tool.deploycheck.rules]\nlatency = ["p50:20%"]\n')
    assert pyproject_settings(tmp_path) == {"baselines": "gate", "rules": {"latency": ["p50:20%"]}}
    (tmp_path / "pyproject.toml").write_text("[tool.deploycheck\n")
    with pytest.raises(BaselineError, match="not valid TOML"):
        pyproject_settings(tmp_path)


def test_store_writes_sorted_json_atomically_and_names_broken_files(tmp_path: Path) -> None:
    store = BaselineStore(tmp_path)
    path = store.write(record(accuracy={"value": 0.9}, size={"bytes": 100}))
    assert path == tmp_path / "m" / "onnx.json"
    text = path.read_text()
    assert list(json.loads(text)) == sorted(json.loads(text)) and text.endswith("}\n")
    assert [p.name for p in (tmp_path / "m").iterdir()] == ["onnx.json"], "no temporary file left behind"
    assert store.read("m", "onnx")["accuracy"]["value"] == 0.9 and store.read("m", "eager") is None
    path.write_text(text[:-10])
    with pytest.raises(BaselineError, match=rf"baseline {path}: not valid JSON.*--deploycheck-update"):
        store.read("m", "onnx")
    path.write_text('{"model": "m", "format": "onnx", "accuracy": 0.9}')
    with pytest.raises(BaselineError, match="'accuracy' must be an object"):
        store.read("m", "onnx")
    path.write_text("[]")
    with pytest.raises(BaselineError, match="expected an object with 'model' and 'format'"):
        store.read("m", "onnx")
    path.write_text('{"model": "m", "format": "onnx", "schema": "one"}')
    with pytest.raises(BaselineError, match="'schema' must be an integer"):
        store.read("m", "onnx")
    path.write_text('{"model": "m", "format": "onnx", "accuracy": {"value": "high"}}')
    with pytest.raises(BaselineError, match=r"its 'accuracy' figures are malformed .*--deploycheck-update"):
        compare_records(store.read("m", "onnx"), record(accuracy={"value": 0.9}), Rules(), str(path))


def test_failed_sections_are_not_recorded_and_update_new_keeps_what_exists() -> None:
    row = {"model": "m", "format": "onnx", "size_bytes": 10, "parity": {"max_abs": 1.0, "passed": False},
           "accuracy": {"value": 0.9, "passed": True}}
    assert set(record_from_row(row)) == {"schema", "model", "format", "size", "accuracy"}
    old = record(accuracy={"value": 0.8})
    merged = merge_records(old, record_from_row(row), only_missing=True)
    assert merged["accuracy"] == {"value": 0.8} and merged["size"] == {"bytes": 10, "parameters": None}
    assert merge_records(old, record(accuracy={"value": 0.9}), only_missing=False)["accuracy"] == {"value": 0.9}
    assert merge_records(old, record(accuracy={"value": 0.9}), only_missing=True) == old


def test_accuracy_parity_and_size_rules() -> None:
    old = record(size={"bytes": 1000}, parity={"max_abs": 1e-3, "top1_agreement": 1.0},
                 accuracy={"value": 0.95})
    same = compare_records(old, old, Rules(), "b.json")
    assert same.passed and set(statuses(same).values()) == {OK}
    worse = record(size={"bytes": 1100}, parity={"max_abs": 3e-3, "top1_agreement": 0.98},
                   accuracy={"value": 0.94})
    comparison = compare_records(old, worse, Rules(), "b.json")
    assert statuses(comparison) == {"size": REGRESSED, "max abs error": REGRESSED, "top-1 agreement": REGRESSED,
                                    "accuracy": REGRESSED}
    text = str(comparison)
    assert "m/onnx against its baseline b.json: regressed" in text and "--deploycheck-update" in text
    assert "accuracy" in text and "95.00%" in text and "94.00%" in text and "-1.00 pt" in text
    tiny = compare_records(record(parity={"max_abs": 1e-7}), record(parity={"max_abs": 5e-6}), Rules(), "b")
    assert tiny.passed, "errors below the floor are float noise, not growth"
    missing = compare_records(record(), record(accuracy={"value": 0.9}), Rules(), "b")
    assert statuses(missing) == {"accuracy": MISSING} and not missing.passed


def test_latency_regression_needs_both_effect_size_and_significance() -> None:
    old = record(latency=latency_section(1.0))
    assert compare_records(old, record(latency=latency_section(1.02, seed=1)), Rules(), "b").passed
    slower = compare_records(old, record(latency=latency_section(1.25, seed=2)), Rules(), "b")
    assert statuses(slower)["p50 @ batch 1"] == REGRESSED and not slower.passed
    assert statuses(slower)["throughput @ batch 1"] == REGRESSED
    assert "normalised by the reference workload" in str(slower)


def test_a_throughput_drop_must_be_significant_too() -> None:
    """A 22% drop in samples/s measured from 40 widely spread calls a side is within their noise (judged on the
    figures alone it failed); 15% slower calls measured 3000 times are a regression."""
    noisy = compare_records(record(latency=latency_section(1.0, calls=40, sigma=0.8)),
                            record(latency=latency_section(1.15, seed=8, calls=40, sigma=0.8)), Rules(), "b")
    assert statuses(noisy)["throughput @ batch 1"] == "ok", str(noisy)
    many = compare_records(record(latency=latency_section(1.0)), record(latency=latency_section(1.15, seed=7)),
                           Rules(), "b")
    assert statuses(many)["throughput @ batch 1"] == REGRESSED, str(many)


def test_latency_is_normalised_by_the_reference_workload() -> None:
    """A machine 1.5x slower across the board (model and reference alike) is not a regression; a 1.3x slower
    model on a machine that got 1.3x faster is."""
    old = record(latency=latency_section(1.0, reference_ms=0.1))
    slower_machine = record(latency=latency_section(1.5, reference_ms=0.15, seed=3))
    assert compare_records(old, slower_machine, Rules(), "b").passed
    hidden = record(latency=latency_section(1.0, reference_ms=0.1 / 1.3, seed=4))
    assert statuses(compare_records(old, hidden, Rules(), "b"))["p50 @ batch 1"] == REGRESSED


def test_stalls_in_the_reference_tail_do_not_move_the_model_tail() -> None:
    """A busy neighbour process made the scheduler stall a few percent of the reference's (longer) calls when
    the baseline was recorded: the model's unchanged p99 must read as unchanged today, so statistics are divided
    by the reference's median only."""
    stalled = latency_section(1.0, reference_ms=0.1)
    reference = np.exp(np.random.default_rng(6).normal(np.log(0.1), 0.05, 800))
    reference[::25] = 2.0
    stalled["1"]["reference_quantiles_ms"] = compact_quantiles(reference)
    comparison = compare_records(record(latency=stalled), record(latency=latency_section(1.0, seed=6)), Rules(),
                                 "b")
    assert comparison.passed and statuses(comparison)["p99 @ batch 1"] == "ok", str(comparison)


def test_a_machine_too_different_is_inconclusive_not_a_pass() -> None:
    old = record(latency=latency_section(1.0, reference_ms=0.1))
    other = record(latency=latency_section(3.0, reference_ms=0.3, seed=5))
    comparison = compare_records(old, other, Rules(), "b")
    assert comparison.status == INCONCLUSIVE and comparison.inconclusive
    assert "machines differ too much to judge" in comparison.inconclusive[0].note
    flags = compare_records({**old, "environment": {"cpu_flags": ["avx2", "avx512_vnni"]}},
                            {**old, "environment": {"cpu_flags": ["avx2"]}}, Rules(), "b")
    assert "lost ['avx512_vnni']" in flags.inconclusive[0].note


def test_load_records_reads_reports_directories_and_files(tmp_path: Path) -> None:
    store = BaselineStore(tmp_path / "baselines")
    store.write(record(accuracy={"value": 0.9}))
    report = tmp_path / "report.json"
    report.write_text(json.dumps({"results": [{"model": "m", "format": "onnx", "size_bytes": 5,
                                               "accuracy": {"value": 0.9, "passed": True}}]}))
    assert set(load_records(tmp_path / "baselines")) == {("m", "onnx")}
    assert load_records(report)[("m", "onnx")]["size"]["bytes"] == 5
    assert load_records(store.path("m", "onnx"))[("m", "onnx")]["accuracy"]["value"] == 0.9
    report.write_text('{"results": [{"model": 3}]}')
    with pytest.raises(BaselineError, match=r"results\[0\] has no 'model' and 'format'"):
        load_records(report)


def test_markdown_report_is_a_github_table_and_html_has_both_plots() -> None:
    from markdown_it import MarkdownIt

    from deploycheck.report import html_report, markdown_report

    rows = [{"model": "m", "format": fmt, "size_bytes": size, "accuracy": {"value": acc, "drop": 0.0, "passed": True},
             "latency": latency_section(scale), "baseline": {"accuracy": {"passed": fmt != "onnx_int8_static",
                                                                          "status": "FAIL", "change": "x | y",
                                                                          "findings": [{"metric": "accuracy",
                                                                                        "status": "REGRESSED"}]}}}
            for fmt, size, acc, scale in (("onnx", 1000, 0.99, 1.0), ("onnx_int8_static", 300, 0.98, 0.6))]
    markdown = markdown_report(rows)
    rendered = MarkdownIt("commonmark").enable("table").render(markdown)
    assert rendered.count("<table>") == 2 and rendered.count("<tr>") == 3 + 3
    assert "x \\| y" in markdown, "a pipe inside a cell is escaped"
    page = html_report(rows)
    assert page.count("<svg") == 2 and 'aria-label="latency distribution per format"' in page
    assert "m/onnx_int8_static (batch 1)" in page and '<td class="bad">FAIL</td>' in page
