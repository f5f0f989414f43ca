"""The weight-only ONNX formats (MatMulNBits): a transformer's MatMul weights in 4 and 8 bits, one file each,
precision declared, parity judged like the other int8 formats, the fraction of weights in low bits recorded,
and what stays in float (GPT-2's Conv1D exports as Gemm, which MatMulNBits does not take) said."""

from __future__ import annotations

from pathlib import Path

import pytest

import deploycheck
from deploycheck.formats import default_formats
from deploycheck.parity import check_parity
from deploycheck.report.summary import quantization_summary

pytestmark = pytest.mark.slow
pytest.importorskip("transformers")

WEIGHT_ONLY = ["onnx_int8_weight", "onnx_int4_weight"]


def test_bert_matmul_weights_in_4_and_8_bits_at_parity(tmp_path: Path) -> None:
    from models import distil_clf_spec

    spec = distil_clf_spec(formats=["onnx", *WEIGHT_ONLY], format_options={"onnx_int4_weight": {"block_size": 16}})
    artifacts = deploycheck.export_all(spec, tmp_path)
    assert not set(WEIGHT_ONLY) & set(default_formats()), "opt-in: named in the spec's formats"
    fp32 = artifacts["onnx"].size_bytes
    for name, bits in (("onnx_int8_weight", 8), ("onnx_int4_weight", 4)):
        artifact = artifacts[name]
        assert list(artifact.metadata["files"]) == ["model.onnx"]
        quantization = artifact.metadata["quantization"]
        assert quantization["bits"] == bits and quantization["weights_only"] is True
        assert artifact.metadata["precision"]["activations"] == "fp32 (not quantized)"
        assert artifact.metadata["counters"]["ops"].get("com.microsoft.MatMulNBits", 0) >= 8, "q, k, v, out, ffn"
        assert 0 < quantization["int8_weight_fraction"] < 1, "the embeddings stay fp32"
        report = check_parity(artifact)
        assert report.passed, str(report)
        assert artifact.size_bytes < fp32
    assert artifacts["onnx_int4_weight"].metadata["quantization"]["block_size"] == 16
    assert artifacts["onnx_int4_weight"].size_bytes < artifacts["onnx_int8_weight"].size_bytes


def test_a_gemm_left_in_float_is_said(tmp_path: Path) -> None:
    """GPT-2's Conv1D is `addmm`: exported as Gemm, which MatMulNBits leaves fp32; the summary says so."""
    from models import gpt2_spec

    artifact = deploycheck.export(gpt2_spec(formats=["onnx", "onnx_int4_weight"]), "onnx_int4_weight", tmp_path / "q")
    counters, quantization = artifact.metadata["counters"], artifact.metadata["quantization"]
    row = {"model": "gpt2_tiny", "format": "onnx_int4_weight", "counters": counters,
           "int8_weight_fraction": quantization["int8_weight_fraction"]}
    if counters["float_compute_nodes"]:
        assert any("computes" in line and "in float" in line for line in quantization_summary([row]))
    else:
        assert counters["ops"].get("com.microsoft.MatMulNBits"), "every projection became MatMulNBits"
    assert check_parity(artifact).passed


OPENVINO_WEIGHT_ONLY = ["openvino_int8_weight", "openvino_int4_weight"]


def test_openvino_compresses_gpt2s_conv1d_weights_in_8_and_4_bits_at_parity(tmp_path: Path) -> None:
    """NNCF's compress_weights on the OpenVINO IR: GPT-2's Conv1D (a Gemm in ONNX, which MatMulNBits leaves in
    float) is a MatMul in the IR and is compressed; activations stay f32, and the CPU plugin's on-the-fly
    activation quantization is turned off in the sidecar and at load."""
    pytest.importorskip("nncf", reason="pip install 'deploycheck[openvino]'")
    from models import gpt2_spec

    spec = gpt2_spec(formats=["onnx", "openvino", *OPENVINO_WEIGHT_ONLY],
                     format_options={"openvino_int4_weight": {"group_size": 32}})
    artifacts = deploycheck.export_all(spec, tmp_path)
    assert not set(OPENVINO_WEIGHT_ONLY) & set(default_formats()), "opt-in: named in the spec's formats"
    for name in OPENVINO_WEIGHT_ONLY:
        artifact = artifacts[name]
        quantization, precision = artifact.metadata["quantization"], artifact.metadata["precision"]
        assert quantization["tool"] == "nncf.compress_weights" and quantization["weights_only"] is True
        assert precision["activations"] == "f32 (not quantized)"
        assert precision["DYNAMIC_QUANTIZATION_GROUP_SIZE"] == "0" and precision["INFERENCE_PRECISION_HINT"] == "f32"
        assert artifact.runner.compiled.get_property("DYNAMIC_QUANTIZATION_GROUP_SIZE") == 0
        assert quantization["int8_weight_fraction"] > 0.5, "the Conv1D projections are compressed"
        report = check_parity(artifact)
        assert report.passed, str(report)
    int4 = artifacts["openvino_int4_weight"].metadata["quantization"]
    assert int4["group_size"] == 32 and int4["mode"] == "int4_sym" and 0 < int4["int4_weight_fraction"] < 1
    assert artifacts["openvino_int8_weight"].metadata["quantization"]["int4_weight_fraction"] == 0
    sizes = [artifacts[name].size_bytes for name in ("openvino", "openvino_int8_weight", "openvino_int4_weight")]
    assert sizes == sorted(sizes, reverse=True) and sizes[1] < sizes[0] / 2


def test_openvino_weight_only_settings_are_checked_by_name() -> None:
    pytest.importorskip("nncf", reason="pip install 'deploycheck[openvino]'")
    from models import gpt2_spec

    from deploycheck.errors import ExportError
    from deploycheck.formats import get_format

    for options, message in (({"openvino_int8_weight": {"group_size": 32}}, "unknown setting.*group_size"),
                             ({"openvino_int4_weight": {"mode": "int8_asym"}}, "mode 'int8_asym' is not one of"),
                             ({"openvino_int4_weight": {"ratio": 0}}, "ratio must be in")):
        name = next(iter(options))
        with pytest.raises(ExportError, match=f"gpt2_tiny/{name}: {message}"):
            get_format(name).settings(gpt2_spec(formats=["onnx", "openvino", name], format_options=options))
