"""The ExecuTorch formats: the digits CNN lowered through XNNPACK at fp32 parity, PT2E int8 calibrated on the
spec's data, batches above the planned capacity run in chunks, the thread setting applied, an input larger than
the program was planned for refused by name, a corrupted `.pte` refused by hash, and a good one served."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import deploycheck
from deploycheck.accuracy import check_accuracy
from deploycheck.errors import ArtifactError, InputError
from deploycheck.formats import get_format
from deploycheck.parity import check_parity
from deploycheck.server.repository import discover

pytest.importorskip("executorch", reason="pip install 'deploycheck[executorch]'")


def test_the_pte_matches_eager_at_fp32_tolerance_and_records_its_plan(digits_artifacts, digits_spec) -> None:
    artifact = digits_artifacts["executorch"]
    assert list(artifact.metadata["files"]) == ["model.pte"] and artifact.metadata["versions"]["executorch"]
    settings = artifact.metadata["settings"]
    assert settings["delegate"] == "xnnpack" and settings["max_batch"] == 32 and settings["planned_batch"] == 32
    assert settings["planned_input_shapes"] == [[32, 1, 8, 8]]
    assert artifact.metadata["precision"]["weights"] == "as the model"
    assert get_format("executorch").executes_code is None  # operators by name and XNNPACK's graph: data only
    report = check_parity(artifact, digits_spec)
    assert report.passed and report.max_abs < 1e-4, report
    accuracy = check_accuracy(artifact, digits_spec)
    assert accuracy.passed and accuracy.drop == 0, accuracy


def test_batches_above_the_planned_capacity_run_in_chunks_with_the_same_results(tmp_path: Path) -> None:
    from models import two_io_spec

    spec = two_io_spec(format_options={"executorch": {"max_batch": 4}})
    artifact = deploycheck.export(spec, "executorch", tmp_path / "executorch")
    assert artifact.metadata["settings"]["planned_batch"] <= 4
    inputs = [t.numpy() for t in spec.sample_inputs(11)]
    expected = deploycheck.export(spec, "eager", tmp_path / "eager").run(inputs)
    obtained = artifact.run(inputs)
    assert [o.shape for o in obtained] == [e.shape for e in expected] == [(11, 5), (11, 2)]
    for got, want in zip(obtained, expected):
        np.testing.assert_allclose(got, want, atol=1e-5)
    with pytest.raises(deploycheck.ExportError, match="max_batch must be a positive integer, got 0"):
        deploycheck.export(two_io_spec(format_options={"executorch": {"max_batch": 0}}), "executorch",
                           tmp_path / "bad")


class MeanPool(torch.nn.Module):
    """Token embeddings averaged over a sequence axis of any length."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(50, 4)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.embed(tokens).mean(dim=1)


def test_a_sequence_longer_than_the_program_planned_is_refused_by_name(tmp_path: Path) -> None:
    torch.manual_seed(0)
    spec = deploycheck.ModelSpec(name="pool", model=MeanPool().eval(), example_inputs=torch.randint(0, 50, (2, 6)),
                                 input_names=["tokens"], dynamic_axes={"tokens": {1: "seq"}})
    artifact = deploycheck.export(spec, "executorch", tmp_path / "executorch")
    assert artifact.metadata["settings"]["planned_input_shapes"] == [[32, 6]]
    shorter = np.random.default_rng(0).integers(0, 50, (3, 4))
    np.testing.assert_allclose(artifact.run([shorter])[0], spec.model(torch.from_numpy(shorter)).detach().numpy(),
                               atol=1e-6)
    with pytest.raises(InputError, match=r"pool/executorch: input 0 has 9 on axis 1; this program was planned for "
                                         r"at most 6 \(shape \[32, 6\]\)"):
        artifact.run([np.zeros((2, 9), dtype=np.int64)])


def test_loading_with_a_thread_count_sets_executorchs_pool_and_earlier_loads_still_run(
        digits_artifacts, digits_spec) -> None:
    from executorch.extension.pybindings import portable_lib

    inputs = [t.numpy() for t in digits_spec.sample_inputs(40)]
    before = {name: digits_artifacts[name].run(inputs) for name in ("executorch", "executorch_int8")}
    for threads in (2, 1, 2):
        deploycheck.load_artifact(digits_artifacts["executorch"].path, intra_op_threads=threads)
        assert portable_lib._threadpool_get_thread_count() == threads
        for name, outputs in before.items():  # loaded before the resize: reloaded, not hung or aborted
            np.testing.assert_array_equal(digits_artifacts[name].run(inputs)[0], outputs[0])


def test_xnnpack_int8_is_calibrated_on_the_specs_data_and_keeps_accuracy(digits_artifacts, digits_spec) -> None:
    artifact = digits_artifacts["executorch_int8"]
    quantization = artifact.metadata["quantization"]
    static = digits_artifacts["onnx_int8_static"].metadata["quantization"]
    assert quantization["tool"] == "XNNPACKQuantizer (PT2E)" and quantization["per_channel"] is True
    assert (quantization["calibration_batches"], quantization["calibration_samples"]) == (
        static["calibration_batches"], static["calibration_samples"]), "the same calibration data as ONNX Runtime's"
    assert quantization["int8_weight_fraction"] > 0.9
    assert artifact.size_bytes < 0.5 * digits_artifacts["executorch"].size_bytes
    assert artifact.metadata["precision"]["weights"] == "int8"
    accuracy = check_accuracy(artifact, digits_spec)
    assert accuracy.passed and accuracy.drop <= 0.01, accuracy


def test_a_corrupted_pte_is_refused_by_hash_and_a_good_one_is_served(digits_artifacts, tmp_path: Path) -> None:
    served = discover(digits_artifacts["executorch"].path)
    assert served["digits_cnn"].format == "executorch"
    copy = tmp_path / "executorch"
    shutil.copytree(digits_artifacts["executorch"].path, copy)
    data = bytearray((copy / "model.pte").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (copy / "model.pte").write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match=r"model\.pte does not match its recorded sha256"):
        deploycheck.load_artifact(copy)
