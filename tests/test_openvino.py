"""The OpenVINO formats on the digits CNN: fp32 exactly (no fp16 weights, no bf16 inference), NNCF int8
calibrated on the spec's data, refused by hash when corrupted, and served."""

from __future__ import annotations

from pathlib import Path

import pytest

import deploycheck
from deploycheck.accuracy import check_accuracy
from deploycheck.errors import ArtifactError
from deploycheck.parity import check_parity
from deploycheck.server.repository import discover

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


def test_nncf_int8_is_calibrated_on_the_specs_data_and_keeps_accuracy(digits_artifacts, digits_spec) -> None:
    artifact = digits_artifacts["openvino_int8"]
    quantization = artifact.metadata["quantization"]
    static = digits_artifacts["onnx_int8_static"].metadata["quantization"]
    assert quantization["tool"] == "nncf.quantize"
    assert (quantization["calibration_batches"], quantization["calibration_samples"]) == (
        static["calibration_batches"], static["calibration_samples"]), "the same calibration data as ONNX Runtime's"
    assert quantization["int8_weight_fraction"] > 0.9 and artifact.metadata["versions"]["nncf"]
    assert artifact.size_bytes < 0.5 * digits_artifacts["openvino"].size_bytes
    accuracy = check_accuracy(artifact, digits_spec)
    assert accuracy.passed and accuracy.drop <= 0.01, accuracy


def test_a_corrupted_ir_is_refused_by_hash_and_a_good_one_is_served(digits_artifacts, tmp_path: Path) -> None:
    import shutil

    served = discover(digits_artifacts["openvino"].path)
    assert served["digits_cnn"].format == "openvino"
    copy = tmp_path / "openvino"
    shutil.copytree(digits_artifacts["openvino"].path, copy)
    data = bytearray((copy / "model.bin").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (copy / "model.bin").write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match=r"model\.bin does not match its recorded sha256"):
        deploycheck.load_artifact(copy)
