"""The baseline store and its rules, on real files and on latency samples with known differences."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from deploycheck.accuracy import AccuracyReport
from deploycheck.baseline.compare import (
    INCONCLUSIVE,
    MISSING,
    OK,
    REGRESSED,
    REPORTED,
    Comparison,
    Finding,
    compare_records,
    confirmed,
)
from deploycheck.baseline.rules import LatencyLimit, Rules, resolve_rules
from deploycheck.baseline.store import BaselineStore, load_records, merge_records, record_from_row
from deploycheck.errors import BaselineError
from deploycheck.project_settings import pyproject_settings
from deploycheck.stats import compact_quantiles


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
    return {f.label: f.status for f in comparison.findings}


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


def test_the_vs_baseline_cell_keeps_the_figure_that_matters_whole() -> None:
    """Four regressions in two sections: the cell shows the first whole and counts the rest (the cell joined
    them all and was cut at 44 characters, inside the second figure)."""
    from deploycheck.report.summary import CELL_WIDTH, summary_table
    from deploycheck.run_result import RunResult

    old = record(size={"bytes": 1000}, parity={"max_abs": 1e-3, "top1_agreement": 1.0}, accuracy={"value": 0.95})
    worse = record(size={"bytes": 1100}, parity={"max_abs": 3e-3, "top1_agreement": 0.98}, accuracy={"value": 0.94})
    size_and_parity = compare_records(old, worse, Rules(), "b.json", sections=("size", "parity"))
    accuracy = compare_records(old, worse, Rules(), "b.json", sections=("accuracy",))
    assert size_and_parity.short() == "size +10.0% REGRESSED (+2 more)"
    row = {"model": "m", "format": "onnx", "size_bytes": 1100,
           "baseline": {"size+parity": size_and_parity.to_dict(), "accuracy": accuracy.to_dict()}}
    table = summary_table(RunResult.from_rows([row]).results)
    assert "size +10.0% REGRESSED (+3 more)" in table and "…" not in table
    assert len("size +10.0% REGRESSED (+3 more)") < CELL_WIDTH


def test_latency_regression_needs_both_effect_size_and_significance() -> None:
    old = record(latency=latency_section(1.0))
    assert compare_records(old, record(latency=latency_section(1.02, seed=1)), Rules(), "b").passed
    slower = compare_records(old, record(latency=latency_section(1.25, seed=2)), Rules(), "b")
    assert statuses(slower)["p50 @ batch 1"] == REGRESSED and not slower.passed
    few = compare_records(record(latency=latency_section(1.0, calls=40, sigma=0.8)),
                          record(latency=latency_section(1.25, seed=8, calls=40, sigma=0.8)), Rules(), "b")
    assert statuses(few)["p50 @ batch 1"] != REGRESSED, "40 widely spread calls cannot show 25%: " + str(few)


def test_the_tail_and_throughput_are_reported_not_judged_from_stored_figures() -> None:
    """A p99 and a throughput from another process are the scheduler's, not the model's: shown, never failed."""
    stalled = latency_section(1.0, seed=6)
    samples = np.exp(np.random.default_rng(6).normal(np.log(0.5), 0.1, 3000))
    samples[::40] = 15.0
    stalled["1"]["quantiles_ms"] = compact_quantiles(samples)
    stalled["1"]["throughput_per_s"] /= 2
    comparison = compare_records(record(latency=latency_section(1.0)), record(latency=stalled), Rules(), "b")
    assert statuses(comparison) == {"p50 @ batch 1": OK, "p99 @ batch 1": REPORTED,
                                    "throughput @ batch 1": REPORTED}, str(comparison)
    assert comparison.passed and "judged side by side only" in str(comparison)


def test_a_change_within_the_measured_noise_is_inconclusive_not_a_verdict() -> None:
    """+14% against a 10% limit fails when the windows agreed within 1%, and is inconclusive when they moved by
    8% from one window to the next (now or when the baseline was recorded); +2% passes only when quiet."""
    def section(scale: float, spread: float, seed: int) -> dict:
        data = latency_section(scale, seed=seed)
        data["1"]["window_spread"] = spread
        return data

    old = record(latency=section(1.0, 0.01, 0))
    assert statuses(compare_records(old, record(latency=section(1.14, 0.01, 1)), Rules(), "b"))[
        "p50 @ batch 1"] == REGRESSED
    noisy = compare_records(old, record(latency=section(1.14, 0.08, 1)), Rules(), "b")
    assert statuses(noisy)["p50 @ batch 1"] == INCONCLUSIVE and noisy.passed
    assert "within this run's noise (±8.0% between windows)" in str(noisy)
    noisy_then = record(latency=section(1.0, 0.08, 0))
    assert statuses(compare_records(noisy_then, record(latency=section(1.14, 0.01, 1)), Rules(), "b"))[
        "p50 @ batch 1"] == INCONCLUSIVE
    assert statuses(compare_records(old, record(latency=section(1.02, 0.01, 2)), Rules(), "b"))[
        "p50 @ batch 1"] == OK
    assert statuses(compare_records(old, record(latency=section(1.02, 0.09, 2)), Rules(), "b"))[
        "p50 @ batch 1"] == INCONCLUSIVE


def test_a_changed_machine_reads_both_ways_and_never_hides_a_slowdown() -> None:
    """The reference ran 1.5x slower and so did the model: not a regression, but not "ok" either (the truth is
    between +0% and +50%). A 2x slower model on a machine that got 1.3x faster is a regression both ways. An
    unchanged model on a machine 1.3x faster cannot be told from a 30% slowdown: inconclusive, never ok."""
    old = record(latency=latency_section(1.0, reference_ms=0.1))
    slower_machine = compare_records(old, record(latency=latency_section(1.5, reference_ms=0.15, seed=3)),
                                     Rules(), "b")
    assert statuses(slower_machine)["p50 @ batch 1"] == INCONCLUSIVE and slower_machine.passed
    assert "machine 1.49x slower than when recorded" in str(slower_machine), str(slower_machine)
    faster = record(latency=latency_section(2.0, reference_ms=0.1 / 1.3, seed=4))
    assert statuses(compare_records(old, faster, Rules(), "b"))["p50 @ batch 1"] == REGRESSED
    hidden = record(latency=latency_section(1.0, reference_ms=0.1 / 1.3, seed=4))
    assert statuses(compare_records(old, hidden, Rules(), "b"))["p50 @ batch 1"] == INCONCLUSIVE
    same_machine = record(latency=latency_section(1.0, reference_ms=0.107, seed=4))
    assert statuses(compare_records(old, same_machine, Rules(), "b"))["p50 @ batch 1"] == OK, \
        "a reference 7% off is the reference's own noise, not another machine"


def test_a_re_measure_that_disagrees_makes_the_verdict_inconclusive() -> None:
    def comparison(*status: str) -> Comparison:
        return Comparison("m", "onnx", "b", [Finding(f"p{50 + i}", "", "", "+1.0%", "", s, batch_size=1)
                                             for i, s in enumerate(status)])

    merged = confirmed(comparison(OK, REGRESSED, REGRESSED, INCONCLUSIVE),
                       comparison(REGRESSED, REGRESSED, OK, OK))
    assert [f.status for f in merged.findings] == [INCONCLUSIVE, REGRESSED, INCONCLUSIVE, INCONCLUSIVE]
    assert "the re-measure disagreed" in merged.findings[0].note and not merged.passed


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

    from deploycheck.report.files import html_report, markdown_report
    from deploycheck.run_result import RunResult

    rows = [{"model": "m", "format": fmt, "size_bytes": size, "accuracy": {"value": acc, "drop": 0.0, "passed": True},
             "latency": latency_section(scale), "baseline": {"accuracy": {"passed": fmt != "onnx_int8_static",
                                                                          "status": "FAIL", "change": "x | y",
                                                                          "findings": [{"metric": "accuracy",
                                                                                        "status": "REGRESSED"
                                                                                        if fmt == "onnx_int8_static"
                                                                                        else "ok"}]}}}
            for fmt, size, acc, scale in (("onnx", 1000, 0.99, 1.0), ("onnx_int8_static", 300, 0.98, 0.6))]
    markdown = markdown_report(RunResult.from_rows(rows))
    rendered = MarkdownIt("commonmark").enable("table").render(markdown)
    assert rendered.count("<table>") == 2 and rendered.count("<tr>") == 3 + 2
    assert "x \\| y" in markdown, "a pipe inside a cell is escaped"
    assert markdown.startswith("## deploycheck: FAILED\n")
    assert markdown.rstrip().endswith("**Verdict: FAILED** (1 of 2 passed). If the changes are intended, accept "
                                      "them with `pytest --deploycheck-update`."), markdown
    page = html_report(RunResult.from_rows(rows))
    assert page.count("<svg") == 2 and 'aria-label="latency distribution per format"' in page
    assert "m/onnx_int8_static (batch 1)" in page and '<td class="bad">FAIL</td>' in page


@pytest.mark.parametrize("path, value", [("accuracy.value", float("nan")), ("parity.max_abs", float("inf")),
                                         ("size.bytes", -5), ("latency.1.p50_ms", float("nan"))])
def test_an_impossible_figure_in_a_baseline_is_refused_by_name(tmp_path: Path, path: str, value: float) -> None:
    """NaN compares false with everything, so a NaN baseline figure silently turned its rule off."""
    data = record(size={"bytes": 100}, parity={"max_abs": 1e-6}, accuracy={"value": 0.9},
                  latency=latency_section(1.0))
    target = data
    *parents, leaf = path.split(".")
    for key in parents:
        target = target[key]
    target[leaf] = value
    store = BaselineStore(tmp_path)
    store.path("m", "onnx").parent.mkdir(parents=True)
    store.path("m", "onnx").write_text(json.dumps(data))
    with pytest.raises(BaselineError, match=rf"{re.escape(path)} is (nan|inf|negative)"):
        store.read("m", "onnx")


def test_a_lower_is_better_metric_is_judged_in_its_own_direction() -> None:
    """An error metric that rises has regressed; the report stores the direction so the baseline knows it."""
    def accuracy(value: float) -> dict:
        report = AccuracyReport("m", "onnx", reference=0.1, obtained=value, samples=10, agreement=None,
                                max_drop=None, max_relative_drop=None, min_agreement=None, higher_is_better=False)
        return record(accuracy=report.to_dict())

    worse = compare_records(accuracy(0.10), accuracy(0.20), Rules(), "b")
    assert statuses(worse) == {"accuracy": REGRESSED}
    assert "0.1  " in str(worse) and "0.2  " in str(worse) and "lower is better" in str(worse)
    assert statuses(compare_records(accuracy(0.10), accuracy(0.05), Rules(), "b")) == {"accuracy": OK}


def test_recording_on_a_noisy_machine_is_warned_about() -> None:
    from deploycheck.baseline.update import noisy_recording

    def row(spread: float, disturbed: int, rounds: int) -> dict:
        section = latency_section(1.0)
        section["1"].update(window_spread=spread, disturbed_rounds=disturbed, rounds=rounds)
        return {"model": "m", "format": "onnx", "latency": section}

    assert noisy_recording(row(0.01, 2, 10)) == []
    assert "recorded on a noisy machine (±8.0% between windows, 2 of 12" in noisy_recording(row(0.08, 2, 10))[0]
    assert noisy_recording(row(0.01, 30, 10)), "most windows disturbed"


def test_strict_latency_fails_an_inconclusive_verdict() -> None:
    """Inconclusive is a warning and a pass by default; --deploycheck-strict-latency makes it a failure."""
    from types import SimpleNamespace

    from deploycheck.gate import BaselineCheck, Gate

    artifact = SimpleNamespace(model_name="m", format="onnx", spec=None, size_bytes=1, path=Path("m"), metadata={})
    unsure = Comparison("m", "onnx", "b", [Finding("p50", "", "", "+9%", "", INCONCLUSIVE, "noisy", 1)])
    for strict in (False, True):
        gate = Gate(baselines=BaselineCheck(BaselineStore(Path("unused")), strict_latency=strict))
        if strict:
            with pytest.raises(AssertionError, match="--deploycheck-strict-latency fails inconclusive"):
                gate._judge(artifact, unsure, "latency")
        else:
            with pytest.warns(UserWarning, match="inconclusive: noisy"):
                gate._judge(artifact, unsure, "latency")


def test_latency_triage_says_whether_the_graph_or_the_machine_moved(tmp_path: Path) -> None:
    """Counters from real ONNX exports: the same graph 25% slower points at the machine or the runtime; a graph
    with one more Linear layer names the new node and its FLOPs; a baseline recorded before counters existed
    gets no triage line rather than a wrong one."""
    import torch

    import deploycheck

    def counters(layers: int) -> dict:
        torch.manual_seed(0)
        model = torch.nn.Sequential(*[torch.nn.Linear(16, 16) for _ in range(layers)]).eval()
        spec = deploycheck.ModelSpec(name=f"mlp{layers}", model=model, example_inputs=torch.randn(4, 16))
        return deploycheck.export(spec, "onnx", tmp_path / str(layers)).metadata["counters"]

    two, three = counters(2), counters(3)
    old = record(latency=latency_section(1.0), counters=two)
    machine = compare_records(old, record(latency=latency_section(1.25, seed=2), counters=two), Rules(), "b")
    assert machine.costs == "cost counters unchanged: the machine or the runtime, not the model"
    assert f"Latency triage: {machine.costs}." in str(machine) and machine.to_dict()["costs"] == machine.costs
    model = compare_records(old, record(latency=latency_section(1.25, seed=2), counters=three), Rules(), "b")
    moved_op = next(op for op in three["ops"] if three["ops"][op] != two["ops"].get(op))
    assert model.costs.startswith("cost counters moved (the exported graph changed): +1 " + moved_op)
    assert "+50% FLOPs" in model.costs and "+1 compute node(s) in float" in model.costs
    assert "Latency triage: cost counters moved" in str(model)
    unknown = compare_records(record(latency=latency_section(1.0)), record(latency=latency_section(1.25, seed=2),
                                                                           counters=three), Rules(), "b")
    assert unknown.costs == "" and "triage" not in str(unknown)
    assert compare_records(old, record(latency=latency_section(1.0, seed=3), counters=two), Rules(), "b").passed


def test_reports_carry_the_latency_triage_in_the_finding_note() -> None:
    from deploycheck.report.files import markdown_report
    from deploycheck.report.summary import baseline_findings
    from deploycheck.run_result import RunResult

    costs = {"ops": {"Gemm": 2}, "flops_per_sample": 100}
    comparison = compare_records(record(latency=latency_section(1.0), counters=costs),
                                 record(latency=latency_section(1.3, seed=2), counters=costs), Rules(), "b")
    row = {"model": "m", "format": "onnx", "baseline": {"latency": comparison.to_dict()}}
    (name, finding), = baseline_findings([row], only_problems=True)
    assert name == "m/onnx" and finding["label"] == "p50 @ batch 1" and finding["status"] == REGRESSED
    assert (finding["metric"], finding["batch_size"]) == ("p50", 1) and finding["interval"][0] > 0
    assert finding["note"].endswith("cost counters unchanged: the machine or the runtime, not the model")
    assert "the machine or the runtime, not the model" in markdown_report(RunResult.from_rows([row]))


def test_a_models_generative_baseline_is_not_taken_for_a_format_record(tmp_path: Path) -> None:
    """`baselines/<model>/generative.json` (the generative gate's) sits beside the formats' records: it is never
    listed as a (model, format) record, so it is neither called stale nor read by `deploycheck compare`."""
    from deploycheck.baseline.store import stale_entries
    from deploycheck.generation.regression import baseline_path, write_generation_baseline

    store = BaselineStore(tmp_path)
    store.write({"model": "llm", "format": "onnx", "size": {"bytes": 10}})
    write_generation_baseline(tmp_path, {"model": "llm", "rows": [{"format": "onnx", "batch_size": 1,
                                                                   "mean_kl": 0.0, "top1_agreement": 1.0}]})
    assert baseline_path(tmp_path, "llm").is_file()
    assert store.entries() == [("llm", "onnx")]
    assert stale_entries(store, ["llm"], ["onnx"]) == []
    assert list(load_records(tmp_path)) == [("llm", "onnx")]


def _generation_rows(itl: dict[str, list[float]], accepted: dict[str, list[float]] | None = None,
                     tpot: dict[str, list[float]] | None = None) -> dict:
    """A generative report (or baseline) of eager and onnx at batch 1 with these rounds of median ITL, in ms (and
    of TPOT, the same unless given)."""
    def rounds(itl_ms: list[float], tpot_ms: list[float] | None) -> dict[str, list[float]]:
        return {"itl_p50_ms": itl_ms, "tpot_ms": tpot_ms or itl_ms, "ttft_ms": [1.0] * len(itl_ms)}

    rows = [{"format": name, "batch_size": 1, "mean_kl": 0.0, "top1_agreement": 1.0,
             "rounds": rounds(values, (tpot or {}).get(name)),
             "accepted_rounds": rounds(accepted[name], None) if accepted and name in accepted else None}
            for name, values in itl.items()]
    return {"model": "llm", "rows": rows}


def test_generation_speed_fails_only_beside_the_accepted_artifact() -> None:
    """The median ITL is failed only on rounds timed beside the accepted artifact, when every round is slower; TPOT,
    the mean step, is only said: one preempted step moved an unchanged decoder's to 5.6x its accepted copy's in
    every round. The ratio to eager's (the fallback without the accepted artifact) moved 0.14x -> 0.23x between
    two runs of one unchanged artifact on a busy runner, so it is only ever said."""
    from deploycheck.generation.regression import compare_generation

    stored = _generation_rows({"eager": [0.60, 0.62, 0.61], "onnx": [0.084, 0.087, 0.085]})
    slower = compare_generation(_generation_rows({"eager": [0.6] * 3, "onnx": [0.30, 0.31, 0.29]},
                                                 {"onnx": [0.10, 0.10, 0.11]}), stored, "b.json")
    assert slower.regressions == ["llm/onnx at batch 1: median ITL 3.00x the accepted artifact's, side by side in "
                                  "this run's rounds (rounds from 2.64 to 3.10; allowed 1.25x)"]
    judged, tpot = (next(c for c in slower.checks["onnx"] if c.metric == metric and c.against == "accepted")
                    for metric in ("itl_p50_ms", "tpot_ms"))
    assert (judged.status, judged.limit, judged.bound) == ("REGRESSED", 1.25, "max")
    assert judged.interval == pytest.approx((2.636, 3.1), abs=1e-3) and judged.value == pytest.approx(3.0)
    assert tpot.status == "reported" and tpot.value == pytest.approx(3.0) and not slower.inconclusive, \
        "TPOT is reported, never judged"
    preempted = compare_generation(_generation_rows({"eager": [0.6] * 3, "onnx": [0.13, 0.13, 0.12]},
                                                    {"onnx": [0.13, 0.12, 0.13]},
                                                    tpot={"onnx": [2.0, 2.0, 1.2]}), stored, "b.json")
    assert preempted.passed and not preempted.inconclusive
    assert [round(c.value or 0, 2) for c in preempted.checks["onnx"] if c.metric == "tpot_ms"] == [15.38]
    burst = compare_generation(_generation_rows({"eager": [0.6] * 3, "onnx": [0.30, 0.31, 0.11]},
                                                {"onnx": [0.10, 0.10, 0.11]}), stored, "b.json")
    assert burst.passed and burst.inconclusive[0].endswith("not every round is slower")
    level = compare_generation(_generation_rows({"eager": [0.6] * 3, "onnx": [0.1] * 3}, {"onnx": [0.1] * 3}),
                               stored, "b.json")
    assert level.passed and not level.inconclusive
    busy = compare_generation(_generation_rows({"eager": [0.60, 0.61, 0.59], "onnx": [0.13, 0.14, 0.15]}), stored,
                              "b.json")
    assert busy.passed and len(busy.inconclusive) == 1
    assert "0.23x eager's" in busy.inconclusive[0] and "the accepted artifact was not at hand" in busy.inconclusive[0]
