"""Compressed models against their original: facts, compatibility errors, and the gate through the plugin."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

import deploycheck
from deploycheck.compression import OriginalReport, compression_facts
from deploycheck.errors import SpecError
from deploycheck.latency import SpeedRatio
from deploycheck.spec import original_spec

ROOT = Path(__file__).resolve().parents[1]


def test_compression_facts_count_zeros() -> None:
    layer = torch.nn.Linear(10, 10)
    with torch.no_grad():
        layer.weight[:5] = 0
    facts = compression_facts(layer)
    assert facts == {"parameters": 110, "nonzero_parameters": 60, "sparsity": pytest.approx(50 / 110)}


def test_an_incompatible_original_is_named_with_the_compressed_model() -> None:
    x = torch.randn(8, 6)
    small = deploycheck.ModelSpec(name="small", model=torch.nn.Linear(6, 3), example_inputs=x)
    for original, message in ((torch.nn.Linear(6, 4), r"original 'small.original' produces outputs of shapes "
                                                      r"\[\[8, 4\]\] where 'small' produces \[\[8, 3\]\]"),
                              (torch.nn.Linear(5, 3), r"original 'small.original' cannot run the inputs of 'small' "
                                                      r"\(\[\[8, 6\]\]\)")):
        small.original = original
        with pytest.raises(SpecError, match=message):
            original_spec(small)
    named = deploycheck.ModelSpec(name="small", model=torch.nn.Linear(6, 3), example_inputs=x, original="big")
    with pytest.raises(SpecError, match="outside pytest pass the original module or its ModelSpec"):
        original_spec(named)


def statement(sparsity: float, ratio: float, low: float, high: float) -> str:
    speed = SpeedRatio("cnn/onnx", "cnn_pruned/onnx", ratio, low, high, 0.99, ratio, 1.0, 2000)
    return OriginalReport("cnn_pruned", "onnx", "cnn", None, None, None, 0.0, 1000, 1000, sparsity,
                          speed).speed_statement()


def test_a_speedup_is_claimed_only_beyond_what_separates_two_runs() -> None:
    assert statement(0.0, 1.10, 1.06, 1.14) == "faster than the original in onnx: 1.10x [1.06, 1.14]"
    # 1.02x [1.02, 1.02]: how far the digits CNN and its equally costly unstructured-pruned twin once measured apart
    assert statement(0.0, 1.024, 1.021, 1.026) == "not measurably faster than the original in onnx: 1.02x [1.02, 1.03]"
    assert statement(0.0, 1.06, 1.04, 1.08).startswith("not measurably faster")
    assert statement(0.0, 0.90, 0.88, 0.92) == "slower than the original in onnx: 0.90x [0.88, 0.92]"
    assert statement(0.0, 0.96, 0.955, 0.965).startswith("not measurably faster")


def test_a_sparse_model_that_is_not_faster_is_told_why() -> None:
    why = "; its 50% sparsity does not speed it up here (the zeros are stored and computed densely)"
    assert statement(0.5, 1.0, 0.99, 1.01) == ("not measurably faster than the original in onnx: 1.00x [0.99, 1.01]"
                                               + why)
    assert statement(0.5, 0.9, 0.88, 0.92).endswith(why)
    assert statement(0.5, 1.3, 1.2, 1.4) == "faster than the original in onnx: 1.30x [1.20, 1.40]"
    assert ";" not in statement(0.1, 1.0, 0.99, 1.01)


def copy_example(pytester: pytest.Pytester, cache_env: dict[str, str]) -> None:
    shutil.copytree(ROOT / "examples" / "digits", pytester.path, dirs_exist_ok=True)
    for key, value in cache_env.items():
        pytester._monkeypatch.setenv(key, value)


@pytest.mark.slow
def test_pruned_models_against_the_original_in_the_summary(pytester: pytest.Pytester, run_in_process,
                                                           digits_gate_artifacts: Path,
                                                           cache_env: dict[str, str]) -> None:
    copy_example(pytester, cache_env)
    result = run_in_process(
        "-k", "original", "--deploycheck-models=digits_pruned_channels,digits_pruned_unstructured",
        "--deploycheck-formats=onnx", "--deploycheck-no-baselines", "--deploycheck-bench-time=0.5",
        f"--deploycheck-artifacts={digits_gate_artifacts}")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines([
        "digits_pruned_channels*onnx*ok",
        "details:",
        "model*format*sparsity*drop vs orig*agree vs orig*size/orig*speedup vs orig*",
        "digits_pruned_channels*onnx*0.5? *[[]*]",
        "digits_pruned_unstructured*onnx*4?.??%*1.00 *",
        "deploycheck: speed against the original, as measured:",
    ])
    # which verdict is the machine's to give (test_a_speedup_is_claimed_only_...); that it is given, with its
    # interval, and that a sparse model not found faster is told why, are the plugin's
    interval = r"\d+\.\d\dx \[\d+\.\d\d, \d+\.\d\d\]"
    result.stdout.re_match_lines([
        rf"  digits_pruned_channels/onnx: (faster|not measurably faster|slower) than the original in onnx: {interval}$",
        rf"  digits_pruned_unstructured/onnx: (faster than the original in onnx: {interval}|(not measurably faster"
        rf"|slower) than the original in onnx: {interval}; its 50% sparsity does not speed it up here \(.*\))$",
    ])


@pytest.mark.slow
def test_a_drop_beyond_the_budget_against_the_original_fails_with_the_table(pytester: pytest.Pytester, run_in_process,
                                                                            digits_gate_artifacts: Path,
                                                                            cache_env: dict[str, str]) -> None:
    copy_example(pytester, cache_env)
    pytester.makeconftest('''
import deploycheck
from deploycheck.digits import compressed_spec, digits_spec


@deploycheck.model
def digits_cnn():
    return digits_spec()


@deploycheck.model
def digits_student():
    return compressed_spec("student", original="digits_cnn", max_accuracy_drop_vs_original=0.001)
''')
    result = run_in_process("-k", "original", "--deploycheck-formats=onnx", "--deploycheck-no-bench",
                            "--deploycheck-no-baselines", "-rs",
                            f"--deploycheck-artifacts={digits_gate_artifacts}")
    result.assert_outcomes(failed=1, skipped=1)
    result.stdout.fnmatch_lines([
        "*digits_student/onnx against its original digits_cnn",
        "*original accuracy*accuracy*drop*agreement*budget*status*",
        "*99.16%*FAIL*",
        "*accuracy drop against the original *% exceeds 0.10%",
        "SKIPPED *digits_cnn has no original to compare with (it is not a compressed model*",
    ])


def test_original_budgets_and_shapes_are_checked_when_the_spec_is_built() -> None:
    x = torch.randn(8, 6)
    with pytest.raises(SpecError, match=r"min_speedup_vs_original=\{'onnx': -1\}; expected a non-negative number"):
        deploycheck.ModelSpec(name="small", model=torch.nn.Linear(6, 3), example_inputs=x,
                              original=torch.nn.Linear(6, 3), min_speedup_vs_original={"onnx": -1})
    with pytest.raises(SpecError, match=r"names unknown format\(s\) \['onx'\]"):
        deploycheck.ModelSpec(name="small", model=torch.nn.Linear(6, 3), example_inputs=x,
                              original=torch.nn.Linear(6, 3), min_speedup_vs_original={"onx": 1.1})
    with pytest.raises(SpecError, match="is set but there is no original"):
        deploycheck.ModelSpec(name="small", model=torch.nn.Linear(6, 3), example_inputs=x,
                              max_accuracy_drop_vs_original=0.01)
    with pytest.raises(SpecError, match=r"original 'small.original' produces outputs of shapes \[\[8, 4\]\]"):
        deploycheck.ModelSpec(name="small", model=torch.nn.Linear(6, 3), example_inputs=x,
                              original=torch.nn.Linear(6, 4))


def test_a_budget_against_the_original_that_no_test_checked_is_listed() -> None:
    from deploycheck.report.summary import unchecked_budgets

    rows = [{"model": "student", "format": "onnx", "budgets_vs_original": ["max_accuracy_drop_vs_original"]},
            {"model": "pruned", "format": "onnx", "budgets_vs_original": ["min_speedup_vs_original"],
             "original": {"passed": True}},
            {"model": "cnn", "format": "onnx"}]
    assert unchecked_budgets(rows) == ["deploycheck: student sets max_accuracy_drop_vs_original but no test called "
                                       "assert_original: set but not checked"]
