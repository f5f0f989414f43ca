"""The ExecuTorch formats: the digits CNN lowered through XNNPACK at fp32 parity, PT2E int8 recorded, batches
above the planned capacity run in chunks, the thread setting applied (earlier loads still run), an input larger
than the program was planned for refused by name. Calibration, corruption and serving: test_formats.py."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import deploycheck
from deploycheck.accuracy import check_accuracy
from deploycheck.errors import InputError
from deploycheck.formats import get_format
from deploycheck.parity import check_parity

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


@pytest.mark.slow
def test_gpt2_with_a_dynamic_sequence_lowers_or_is_unavailable_with_the_cause(tmp_path: Path) -> None:
    """ExecuTorch 1.5's passes cannot re-trace GPT-2's SDPA attention with symbolic shapes ("Cannot view a tensor
    with shape [s21, s41, 64] ..."), which was an export error of the user's test; now the format is skipped with
    that cause, or, with an ExecuTorch that lowers it, runs at parity. torch_export exports the same model."""
    pytest.importorskip("transformers")
    from models import gpt2_spec

    from deploycheck.errors import FormatUnavailable

    spec = gpt2_spec(formats=["torch_export", "executorch"])
    try:
        artifact = deploycheck.export(spec, "executorch", tmp_path / "executorch")
    except FormatUnavailable as exc:
        assert "gpt2_tiny/executorch: ExecuTorch cannot lower this model's torch.export program (" in str(exc)
    else:
        assert check_parity(artifact).passed
    assert set(deploycheck.export_all(spec, tmp_path / "all")) >= {"torch_export"}


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


def test_xnnpack_int8_records_its_quantizer_and_precision(digits_artifacts) -> None:
    artifact = digits_artifacts["executorch_int8"]  # calibration and accuracy: test_formats.py, every int8 runtime
    quantization = artifact.metadata["quantization"]
    assert quantization["tool"] == "XNNPACKQuantizer (PT2E)" and quantization["per_channel"] is True
    assert artifact.metadata["precision"]["weights"] == "int8" and artifact.metadata["versions"]["torchao"]

