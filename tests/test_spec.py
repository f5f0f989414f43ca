"""ModelSpec validation: each mistake is refused with a message naming the model and what was expected."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import deploycheck
from deploycheck.errors import SpecError


def linear() -> torch.nn.Module:
    return torch.nn.Linear(4, 3)


def test_dynamic_batch_of_one_is_refused() -> None:
    with pytest.raises(SpecError, match=r"'m'.*batch of at\s+least 2"):
        deploycheck.ModelSpec(name="m", model=linear(), example_inputs=torch.randn(1, 4))


def test_static_batch_of_one_is_accepted() -> None:
    spec = deploycheck.ModelSpec(name="m", model=linear(), example_inputs=torch.randn(1, 4), dynamic_batch=False)
    assert spec.batch_size == 1 and spec.output_names == ["output"]


def test_non_tensor_inputs_are_refused() -> None:
    with pytest.raises(SpecError, match=r"example_inputs\[0\] is a numpy.ndarray, expected a torch.Tensor"):
        deploycheck.ModelSpec(name="m", model=linear(), example_inputs=np.zeros((4, 4), np.float32))


def test_unknown_format_lists_valid_ones() -> None:
    with pytest.raises(SpecError, match=r"unknown format\(s\) \['onnx_fp8'\]; valid formats: eager, state_dict"):
        deploycheck.ModelSpec(name="m", model=linear(), example_inputs=torch.randn(4, 4), formats=["onnx_fp8"])


def test_model_or_factory_is_required_and_factory_builds_the_model() -> None:
    with pytest.raises(SpecError, match="give `model` or `factory`"):
        deploycheck.ModelSpec(name="m", example_inputs=torch.randn(4, 4))
    spec = deploycheck.ModelSpec(name="m", factory=linear, example_inputs=torch.randn(4, 4))
    assert isinstance(spec.model, torch.nn.Linear) and not spec.model.training


def test_empty_eval_data_and_bad_pairs_are_refused() -> None:
    with pytest.raises(SpecError, match="eval_data is empty"):
        deploycheck.ModelSpec(name="m", model=linear(), example_inputs=torch.randn(4, 4), eval_data=[])
    with pytest.raises(SpecError, match="eval_data item 0 is not an \\(inputs, labels\\) pair"):
        deploycheck.ModelSpec(name="m", model=linear(), example_inputs=torch.randn(4, 4), eval_data=[torch.ones(2)])


def test_calibration_defaults_to_first_eval_batches() -> None:
    batches = [(torch.randn(4, 4), torch.zeros(4, dtype=torch.int64)) for _ in range(10)]
    spec = deploycheck.ModelSpec(name="m", model=linear(), example_inputs=torch.randn(4, 4), eval_data=iter(batches),
                                 calibration_batches=3)
    assert len(spec.calibration_data) == 3
    assert torch.equal(spec.calibration_data[2][0], batches[2][0])
    assert len(spec.eval_data) == 10, "a generator of eval data is read once and kept"


def test_tolerances_resolve_from_most_specific() -> None:
    spec = deploycheck.ModelSpec(
        name="m", model=linear(), example_inputs=torch.randn(4, 4),
        tolerances={"default": {"atol": 1e-3}, "onnx": {"output": deploycheck.Tolerance(atol=1e-6, rtol=0)}})
    fallback = deploycheck.Tolerance(atol=9.0)
    assert spec.tolerance_for("onnx", "output", fallback).atol == 1e-6
    assert spec.tolerance_for("torchscript", "output", fallback).atol == 1e-3
    with pytest.raises(SpecError, match="tolerances for unknown format 'onx'"):
        deploycheck.ModelSpec(name="m", model=linear(), example_inputs=torch.randn(4, 4), tolerances={"onx": {}})


def test_model_returning_a_string_is_refused() -> None:
    class Odd(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> str:
            return "no"

    with pytest.raises(SpecError, match="model 'odd' returned a str"):
        deploycheck.ModelSpec(name="odd", model=Odd(), example_inputs=torch.randn(4, 4))


def test_importing_deploycheck_does_not_import_torch_or_onnxruntime() -> None:
    import subprocess
    import sys

    code = ("import sys, deploycheck, deploycheck.plugin; "
            "print(sorted(m for m in ('torch', 'onnxruntime', 'hypothesis') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
