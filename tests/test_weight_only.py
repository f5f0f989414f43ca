"""The weight-only ONNX formats (MatMulNBits): a transformer's MatMul weights in 4 and 8 bits, one file each,
precision declared, parity judged like the other int8 formats, the fraction of weights in low bits recorded,
and what stays in float (GPT-2's Conv1D exports as Gemm, which MatMulNBits does not take) said."""

from __future__ import annotations

from pathlib import Path

import pytest

import deploycheck
from deploycheck.formats import default_formats
from deploycheck.parity import check_parity
from deploycheck.report import quantization_summary

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
