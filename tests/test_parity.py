"""compare_outputs statistics on hand-built arrays, and property-based parity of real exports (hypothesis)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings

import deploycheck
from deploycheck.parity import check_parity
from deploycheck.strategies import model_inputs
from deploycheck.tolerance import INT8_TOLERANCE, Tolerance


def test_statistics_and_worst_element() -> None:
    reference = np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], np.float32)
    candidate = reference.copy()
    candidate[1, 2] = 6.5
    report = deploycheck.compare_outputs([reference], [candidate], Tolerance(atol=0.1, rtol=0.01), ["logits"])
    out = report.outputs[0]
    assert out.max_abs == pytest.approx(0.5) and out.worst_index == (1, 2)
    assert out.worst_expected == 6.0 and out.worst_obtained == 6.5
    assert out.mismatched == 1 and not report.passed
    assert out.top1_agreement == 1.0
    assert 0.99 < out.cosine < 1.0 and out.sqnr_db == pytest.approx(10 * math.log10(91 / 0.25))
    text = str(report)
    assert "logits" in text and "[1, 2]: 6 -> 6.5" in text and "FAIL" in text


def test_element_fails_only_when_both_absolute_and_relative_error_exceed() -> None:
    reference = np.array([1000.0, 0.001], np.float32)
    candidate = np.array([1000.05, 0.0011], np.float32)
    loose_rel = deploycheck.compare_outputs([reference], [candidate], Tolerance(atol=0.01, rtol=0.2))
    assert loose_rel.passed, "abs error 0.05 > atol, but rel error 5e-5 <= rtol: passes"
    tight = deploycheck.compare_outputs([reference], [candidate], Tolerance(atol=1e-5, rtol=1e-5))
    assert tight.outputs[0].mismatched == 2


def test_nan_mismatch_always_fails_and_matching_nan_does_not() -> None:
    reference = np.array([1.0, np.nan, np.inf], np.float32)
    same = deploycheck.compare_outputs([reference], [reference.copy()], Tolerance(atol=1.0, rtol=1.0))
    assert same.passed
    candidate = np.array([1.0, 2.0, np.inf], np.float32)
    report = deploycheck.compare_outputs([reference], [candidate], Tolerance(atol=1e9, rtol=1e9))
    assert not report.passed and "NaN/Inf mismatch" in str(report)


def test_shape_and_count_mismatches_are_reported_not_raised() -> None:
    report = deploycheck.compare_outputs([np.zeros((2, 3)), np.zeros(2)], [np.zeros((3, 3))], None, ["a", "b"])
    assert not report.passed
    assert any("expected shape (2, 3), obtained (3, 3)" in p for p in report.problems)
    assert any("reference has 2 outputs, the candidate 1" in p for p in report.problems)


def test_int8_tolerance_judges_agreement_not_elements() -> None:
    reference = np.eye(10, dtype=np.float32) * 5
    candidate = reference + 0.3
    assert deploycheck.compare_outputs([reference], [candidate], INT8_TOLERANCE).passed
    candidate[0] = [0, 9, 0, 0, 0, 0, 0, 0, 0, 0]
    candidate[1] = [9, 0, 0, 0, 0, 0, 0, 0, 0, 0]
    report = deploycheck.compare_outputs([reference], [candidate], INT8_TOLERANCE)
    assert not report.passed and "top-1 agreement 80.00% is below 90.00%" in str(report)


@pytest.mark.parametrize("format_name", ["onnx", "torchscript", "torch_export"])
def test_fp32_parity_holds_for_any_batch_and_values(format_name, digits_spec, digits_artifacts) -> None:
    artifact = digits_artifacts[format_name]

    @settings(max_examples=25, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
    @given(inputs=model_inputs(digits_spec, max_batch=64, min_value=0.0, max_value=1.0))
    def check(inputs: tuple[np.ndarray, ...]) -> None:
        with torch.no_grad():
            reference = digits_spec.model(*(torch.from_numpy(a) for a in inputs)).numpy()
        report = deploycheck.compare_outputs([reference], artifact.run(inputs), Tolerance(atol=1e-4, rtol=1e-4))
        assert report.passed, str(report)

    check()


@pytest.mark.parametrize("format_name", ["eager", "state_dict", "torchscript", "torch_export", "onnx"])
def test_digits_fp32_formats_within_1e4_at_batches_1_8_64(format_name, digits_artifacts) -> None:
    report = check_parity(digits_artifacts[format_name], batch_sizes=[1, 8, 64], tolerance=Tolerance(atol=1e-4, rtol=0))
    assert report.passed, str(report)
    assert report.max_abs < 1e-4
    assert len(report.outputs) == 3


def test_parity_failure_reports_the_table(digits_spec, digits_artifacts) -> None:
    report = check_parity(digits_artifacts["onnx_int8_static"], tolerance=Tolerance(atol=1e-6, rtol=1e-6))
    assert not report.passed
    assert "logits @ batch 64" in str(report) and "exceed both atol=1e-06" in str(report)
