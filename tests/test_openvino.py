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

