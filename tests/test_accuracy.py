"""Accuracy on real data through real runtimes, the drop gate, its failure message, the per-layer explanation
and the accuracy-aware int8 search."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
import torch

import deploycheck
from deploycheck.accuracy import check_accuracy, evaluate
from deploycheck.errors import DeployCheckError, SpecError
from deploycheck.gate import Gate
from deploycheck.quantize import search_quantization


@pytest.fixture(scope="module")
def outlier(tmp_path_factory):
    from models import outlier_spec

    spec = outlier_spec()
    return spec, deploycheck.export_all(spec, tmp_path_factory.mktemp("outlier"))


def test_every_format_is_within_two_points_on_digits(digits_artifacts) -> None:
    reports = {name: check_accuracy(artifact) for name, artifact in digits_artifacts.items()}
    reference = reports["eager"].reference
    assert reference > 0.95, "the demo CNN learns the digits"
    for name, report in reports.items():
        assert report.samples == 597 and report.reference == reference
        assert report.max_drop == 0.02 and report.passed, str(report)
        assert report.obtained == pytest.approx(deploycheck.measure_accuracy(digits_artifacts[name]))
    for fp32 in ("state_dict", "torchscript", "torch_export", "onnx"):
        assert reports[fp32].drop == 0.0


def test_gate_fails_with_the_table_when_the_real_int8_drop_exceeds_the_budget(outlier) -> None:
    # the outlier MLP loses accuracy in static int8 by construction (the digits CNN may lose none, depending on
    # the ONNX Runtime release)
    spec, artifacts = outlier
    static = artifacts["onnx_int8_static"]
    drop = check_accuracy(static).drop
    assert drop > 0, "static int8 really loses accuracy on the outlier MLP"
    strict = dataclasses.replace(spec, max_accuracy_drop=drop / 2)
    report = check_accuracy(static, strict)
    assert not report.passed
    text = str(report)
    assert f"{report.reference:.2%}" in text and f"{report.obtained:.2%}" in text
    assert f"accuracy drop {drop:.2%} exceeds the budget of {drop / 2:.2%}" in text
    assert "worst classes" in text and "where the error comes from" in text
    overridden = dataclasses.replace(spec, max_accuracy_drop=drop / 2,
                                     accuracy_overrides={"onnx_int8_static": {"max_accuracy_drop": 1.0}})
    assert check_accuracy(static, overridden).passed


def test_assert_accuracy_records_and_explains(digits_artifacts) -> None:
    recorded: list[dict] = []
    report = Gate(recorded.append).assert_accuracy(digits_artifacts["onnx"])
    assert report.passed and recorded[0]["accuracy"]["value"] == report.obtained
    assert recorded[0]["parameters"] == sum(p.numel() for p in digits_artifacts["onnx"].spec.model.parameters())


def test_custom_metric_and_lower_is_better(digits_spec, digits_artifacts) -> None:
    def mean_squared_error(outputs: list[np.ndarray], labels: np.ndarray) -> float:
        one_hot = np.eye(10)[labels]
        return float(np.mean((outputs[0] - one_hot) ** 2))

    value = deploycheck.measure_accuracy(digits_artifacts["onnx"], metric=mean_squared_error)
    assert 0 < value < math.inf
    spec = dataclasses.replace(digits_spec, metric=mean_squared_error, higher_is_better=False,
                               max_relative_drop=0.5, max_accuracy_drop=None)
    report = check_accuracy(digits_artifacts["onnx_int8_static"], spec)
    assert report.drop == pytest.approx(report.obtained - report.reference) and report.agreement is None


def test_bad_evaluation_data_names_the_model(digits_artifacts) -> None:
    onnx = digits_artifacts["onnx"]
    images = torch.rand(4, 1, 8, 8)
    with pytest.raises(SpecError, match=r"digits_cnn/onnx: a batch has 4 output rows but labels of shape \[3\]"):
        evaluate(onnx, [(images, torch.zeros(3, dtype=torch.int64))])
    with pytest.raises(SpecError, match="digits_cnn/onnx: eval_data is empty"):
        evaluate(onnx, [])
    with pytest.raises(SpecError, match=r"labels must be class indices in \[0, 9\]"):
        evaluate(onnx, [(images, torch.full((4,), 12))])
    with pytest.raises(SpecError, match="the metric returned 'high'; it must return a finite number"):
        evaluate(onnx, [(images, torch.zeros(4, dtype=torch.int64))], metric=lambda outputs, labels: "high")


def test_outlier_model_fails_static_int8_and_the_explanation_names_the_layer(outlier) -> None:
    _, artifacts = outlier
    listings = {name: sorted(p.name for p in artifact.path.iterdir()) for name, artifact in artifacts.items()}
    report = check_accuracy(artifacts["onnx_int8_static"])
    assert not report.passed and report.drop > 0.5
    explanation = deploycheck.explain_quantization(artifacts["onnx_int8_static"])
    assert explanation.layers[0].tensor == "relu", "the hidden layer whose outliers set the scale comes first"
    assert explanation.layers[0].node == "node_linear"
    assert "node_linear" in report.explanation
    assert {name: sorted(p.name for p in artifact.path.iterdir()) for name, artifact in artifacts.items()} == \
        listings, "explaining writes nothing into an artifact (or the fp32 one it compares with)"


def test_torch_explanation_uses_hooks(digits_artifacts) -> None:
    explanation = deploycheck.explain_quantization(digits_artifacts["torch_int8_dynamic"])
    names = [layer.node for layer in explanation.layers]
    assert set(names) == {"conv1", "conv2", "fc1", "fc2"}
    assert all(math.isinf(layer.activation_sqnr_db) for layer in explanation.layers if layer.node.startswith("conv"))


def test_search_finds_a_configuration_within_budget(outlier, tmp_path: Path) -> None:
    spec, _ = outlier
    result = search_quantization(spec, 0.01, tmp_path / "int8")
    assert result.winner is not None and result.winner.drop <= 0.01
    assert result.trials[0].drop > 0.5, "plain MinMax fails"
    written = deploycheck.load_artifact(tmp_path / "int8", spec=spec)
    assert written.metadata["quantization"]["calibrate_method"] == result.winner.settings["calibrate_method"]
    assert check_accuracy(written, spec).passed
    assert "<- chosen" in str(result)
    with pytest.raises(DeployCheckError, match="no int8 configuration within the budget; the closest: "):
        search_quantization(spec, -1.0, tmp_path / "never", max_excluded=1)


def test_without_labels_the_gate_is_agreement_with_the_reference(outlier) -> None:
    """The outlier model's static int8 form disagrees with fp32 on some inputs: without labels, min_agreement
    catches it, and a missing min_agreement is a failure that says what to set."""
    spec, artifacts = outlier
    unlabelled = [(inputs, None) for inputs, _ in spec.eval_data]
    gated = dataclasses.replace(spec, eval_data=unlabelled, max_accuracy_drop=None, min_agreement=0.99)
    fp32 = check_accuracy(artifacts["onnx"], gated)
    assert fp32.passed and fp32.agreement == 1.0 and not fp32.labelled
    assert fp32.to_dict()["value"] is None and "unlabelled samples" in str(fp32)
    int8 = check_accuracy(artifacts["onnx_int8_static"], gated, explain=False)
    assert not int8.passed and int8.agreement < 0.99
    assert "agreement with the reference's predictions" in str(int8) and "below 99.00%" in str(int8)
    ungated = check_accuracy(artifacts["onnx"], dataclasses.replace(gated, min_agreement=None))
    assert not ungated.passed and "set ModelSpec(min_agreement=...)" in str(ungated)
    with pytest.raises(SpecError, match="has no labels, so there is no accuracy"):
        deploycheck.measure_accuracy(artifacts["onnx"], unlabelled)
    with pytest.raises(SpecError, match="label all of them, or none"):
        evaluate(artifacts["onnx"], [unlabelled[0], spec.eval_data[1]])


def test_a_reference_that_ignores_its_input_is_warned_about(tmp_path: Path) -> None:
    """An untrained network whose logits are the same for every input passes every gate trivially; say so."""
    model = torch.nn.Linear(6, 3)
    with torch.no_grad():
        model.weight.mul_(1e-9)
        model.bias.copy_(torch.tensor([0.0, 1.0, 0.0]))
    x = torch.randn(32, 6)
    spec = deploycheck.ModelSpec(name="constant", model=model, example_inputs=x[:4], formats=["onnx"],
                                 eval_data=[(x, torch.ones(32, dtype=torch.int64))])
    onnx = deploycheck.export(spec, "onnx", tmp_path / "onnx")
    with pytest.warns(UserWarning, match="predicts class 1 for every one of the 32 evaluated samples"):
        assert check_accuracy(onnx).passed


def test_a_relu_folded_into_the_quantization_range_is_not_counted_as_error(digits_artifacts) -> None:
    """ONNX Runtime folds a ReLU after a convolution into its quantization range, so the tensor before
    `QuantizeLinear` is the raw convolution output; its negative part is the activation's doing, not the
    quantizer's. A layer's own error cannot then be far larger than all the error accumulated up to it."""
    explanation = deploycheck.explain_quantization(digits_artifacts["onnx_int8_static"])
    for layer in explanation.layers:
        if layer.versus_float_sqnr_db is not None and math.isfinite(layer.activation_sqnr_db):
            assert layer.activation_sqnr_db > layer.versus_float_sqnr_db - 6, str(explanation)
