"""The OpenVINO formats on the digits CNN: fp32 exactly (no fp16 weights, no bf16 inference) and NNCF int8
recorded. Calibration, corruption and serving, with the other optional runtimes: test_formats.py."""

from __future__ import annotations

import pytest

from deploycheck.parity import check_parity

pytest.importorskip("openvino", reason="pip install 'deploycheck[openvino]'")


def test_the_openvino_ir_is_fp32_exactly_and_matches_eager_at_fp32_tolerance(digits_artifacts, digits_spec) -> None:
    import openvino as ov

    artifact = digits_artifacts["openvino"]
    assert set(artifact.metadata["files"]) == {"model.xml", "model.bin"}
    assert artifact.metadata["settings"] == {"source": "onnx"}
    assert artifact.metadata["precision"] == {"weights": "f32 (compress_to_fp16=False)", "compute": "f32",
                                              "INFERENCE_PRECISION_HINT": "f32"}
    assert artifact.metadata["versions"]["openvino"]
    model = ov.Core().read_model(str(artifact.path / "model.xml"))
    kinds = {op.get_output_element_type(0).get_type_name() for op in model.get_ops()
             if op.get_type_name() == "Constant"}
    assert "f16" not in kinds and "bf16" not in kinds
    report = check_parity(artifact, digits_spec)
    assert report.passed and report.max_abs < 1e-4, report


def test_nncf_int8_records_its_tool_and_version(digits_artifacts) -> None:
    artifact = digits_artifacts["openvino_int8"]  # calibration and accuracy: test_formats.py, for every int8 runtime
    assert artifact.metadata["quantization"]["tool"] == "nncf.quantize" and artifact.metadata["versions"]["nncf"]



@pytest.mark.slow
def test_nncf_smoothquant_moves_an_outlier_activation_into_the_weights(tmp_path) -> None:
    """The outlier MLP (one hidden unit two orders of magnitude above the rest): NNCF's plain int8 loses most of
    its accuracy; SmoothQuant (model_type "transformer", a smoothing alpha) gives most of it back. The alpha is
    recorded; one that NNCF would ignore (no transformer model type) is refused by name."""
    import dataclasses

    from models import outlier_spec

    import deploycheck
    from deploycheck.accuracy import check_accuracy
    from deploycheck.errors import ExportError

    pytest.importorskip("nncf")
    spec = outlier_spec(formats=["onnx", "openvino", "openvino_int8"])
    plain = check_accuracy(deploycheck.export(spec, "openvino_int8", tmp_path / "plain"), spec, explain=False)
    smoothed_spec = dataclasses.replace(spec, format_options={"openvino_int8": {"smooth_quant_alpha": 0.75}})
    artifact = deploycheck.export(smoothed_spec, "openvino_int8", tmp_path / "smoothed")
    smoothed = check_accuracy(artifact, smoothed_spec, explain=False)
    assert plain.drop > 0.5 and smoothed.drop < plain.drop / 4, (plain.drop, smoothed.drop)
    assert artifact.metadata["quantization"]["smooth_quant_alpha"] == 0.75
    assert artifact.metadata["quantization"]["model_type"] == "transformer"
    refused = dataclasses.replace(spec, format_options={"openvino_int8": {"smooth_quant_alpha": 0.5,
                                                                          "model_type": None}})
    with pytest.raises(ExportError, match=r"smooth_quant_alpha 0\.5 needs model_type 'transformer'"):
        deploycheck.export(refused, "openvino_int8", tmp_path / "refused")
