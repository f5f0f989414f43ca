"""Every format on real exports: metadata, reloading from disk, integrity, the export cache, failures."""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import shutil
import stat
import subprocess
import sys
import textwrap

import numpy as np
import onnx
import pytest
import torch
from models import corrupted_copy, installed_formats

import deploycheck
from deploycheck.accuracy import check_accuracy
from deploycheck.digits import load_split
from deploycheck.errors import ArtifactError, ExportError, FormatUnavailable
from deploycheck.formats import default_formats
from deploycheck.parity import check_parity
from deploycheck.server.repository import discover

ALL_FORMATS = ["eager", "state_dict", "torchscript", "torch_export", "onnx", "onnx_int8_dynamic",
               "onnx_int8_static", "torch_int8_dynamic", "openvino", "openvino_int8", "executorch", "executorch_int8"]
INSTALLED = [name for name in ALL_FORMATS if name in installed_formats()]


def test_export_all_gives_every_format_with_a_complete_sidecar(digits_artifacts) -> None:
    assert default_formats() == ALL_FORMATS and list(digits_artifacts) == INSTALLED
    for name, artifact in digits_artifacts.items():
        meta = json.loads((artifact.path / "deploycheck.json").read_text())
        assert meta["format"] == name and meta["model"] == "digits_cnn"
        assert meta["size_bytes"] == artifact.size_bytes > 0
        assert meta["versions"]["torch"] and meta["versions"]["numpy"]
        assert ("onnxruntime" in meta["versions"]) == name.startswith("onnx")  # each format records its own runtime
        assert meta["inputs"] == [{"name": "image", "shape": [None, 1, 8, 8], "dtype": "float32",
                                   "dynamic_axes": [0], "axis_names": ["batch", None, None, None]}], \
            "pixels index no table: no value range, no axis limit"
        assert meta["outputs"][0]["name"] == "logits" and meta["outputs"][0]["shape"] == [None, 10]
        for file, recorded in meta["files"].items():
            assert (artifact.path / file).stat().st_size == recorded["size"]
            assert len(recorded["sha256"]) == 64
    static = digits_artifacts["onnx_int8_static"].metadata
    assert static["quantization"]["quant_format"] == "QDQ" and static["quantization"]["per_channel"] is True
    assert static["quantization"]["calibrate_method"] == "MinMax" and static["opset"] >= 13
    assert digits_artifacts["torch_int8_dynamic"].metadata["quantization"]["backend"] in ("torchao",
                                                                                          "torch.ao.quantization")
    assert digits_artifacts["onnx_int8_dynamic"].size_bytes < digits_artifacts["onnx"].size_bytes / 2


def test_every_export_records_what_its_graph_costs(digits_spec, digits_artifacts, tmp_path) -> None:
    """FLOPs are the model's (2 x multiply-accumulates of two convolutions and two Linear layers on an 8x8 image,
    whatever the format); weights in bytes are the fp32 parameters (and a graph's few shape constants) for the
    float formats and fewer for int8;
    every matrix product and convolution of the fp32 graphs computes in float, none of a fully quantized one's,
    and one excluded from quantization is counted back in float."""
    flops = 2 * (16 * 1 * 9 * 64 + 32 * 16 * 9 * 64 + 512 * 64 + 64 * 10)
    fp32_bytes = sum(p.numel() * 4 for p in digits_spec.model.parameters())
    counters = {name: artifact.metadata["counters"] for name, artifact in digits_artifacts.items()}
    assert {name: c["flops_per_sample"] for name, c in counters.items()} == dict.fromkeys(counters, flops)
    for name in ("eager", "state_dict", "torchscript", "torch_export", "onnx"):
        assert fp32_bytes <= counters[name]["weight_bytes"] <= fp32_bytes + 256, name  # + a graph's shape constants
    for name in ("torchscript", "torch_export"):
        ops = counters[name]["ops"]
        assert ops["aten.linear"] == 2 and sum(n for op, n in ops.items() if "conv" in op) == 2, name
    assert counters["onnx"]["float_compute_nodes"] == 4 and counters["onnx_int8_static"]["float_compute_nodes"] == 0
    assert counters["onnx_int8_static"]["ops"]["QuantizeLinear"] > 0
    for name in ("onnx_int8_dynamic", "onnx_int8_static", "torch_int8_dynamic", "openvino_int8"):
        if name in counters:
            assert counters[name]["weight_bytes"] < fp32_bytes / 2, name
    if "openvino" in counters:
        assert counters["openvino"]["float_compute_nodes"] == 4
        assert counters["openvino_int8"]["float_compute_nodes"] == 0
    if "executorch" in counters:  # the convolutions and Linear layers run inside XNNPACK, not on the fallback
        ops = counters["executorch"]["ops"]
        assert ops["executorch_call_delegate"] >= 1 and not any("conv" in op or "linear" in op for op in ops)
        assert counters["executorch"]["fallback_nodes"] < sum(ops.values())
    graph = onnx.load(str(digits_artifacts["onnx"].path / "model.onnx"), load_external_data=False).graph
    first = next(node.name for node in graph.node if node.op_type == "Conv")
    excluding = dataclasses.replace(digits_spec, format_options={"onnx_int8_static": {"nodes_to_exclude": [first]}})
    partly = deploycheck.export(excluding, "onnx_int8_static", tmp_path / "partly")
    assert partly.metadata["counters"]["float_compute_nodes"] == 1


@pytest.mark.parametrize("format_name", ["onnx_int8_dynamic", "onnx_int8_static", "torch_int8_dynamic"])
def test_int8_formats_agree_with_eager_on_97_percent_of_the_test_split(format_name, digits_spec,
                                                                     digits_artifacts) -> None:
    _, _, x_test, _ = load_split()
    with torch.no_grad():
        reference = digits_spec.model(x_test).argmax(1).numpy()
    obtained = digits_artifacts[format_name].run(x_test.numpy())[0].argmax(1)
    assert np.mean(reference == obtained) >= 0.97
    assert check_parity(digits_artifacts[format_name]).passed


@pytest.mark.parametrize(("format_name", "fp32"), [("openvino_int8", "openvino"), ("executorch_int8", "executorch")])
def test_every_calibrated_int8_runtime_uses_onnx_runtimes_calibration_data_and_keeps_accuracy(
        format_name: str, fp32: str, digits_artifacts, digits_spec) -> None:
    if format_name not in INSTALLED:
        pytest.skip(f"{format_name}: its extra is not installed")
    artifact = digits_artifacts[format_name]
    quantization = artifact.metadata["quantization"]
    static = digits_artifacts["onnx_int8_static"].metadata["quantization"]
    assert (quantization["calibration_batches"], quantization["calibration_samples"]) == (
        static["calibration_batches"], static["calibration_samples"]), "the same calibration data as ONNX Runtime's"
    assert quantization["int8_weight_fraction"] > 0.9
    assert artifact.size_bytes < 0.5 * digits_artifacts[fp32].size_bytes
    accuracy = check_accuracy(artifact, digits_spec)
    assert accuracy.passed and accuracy.drop <= 0.01, accuracy


@pytest.mark.parametrize(("format_name", "file_name"), [("openvino", "model.bin"), ("openvino_int8", "model.xml"),
                                                        ("executorch", "model.pte"), ("executorch_int8", "model.pte")])
def test_an_optional_runtimes_corrupted_file_is_refused_by_hash_and_a_good_one_is_served(
        format_name: str, file_name: str, digits_artifacts, tmp_path) -> None:
    if format_name not in INSTALLED:
        pytest.skip(f"{format_name}: its extra is not installed")
    assert discover(digits_artifacts[format_name].path).artifacts["digits_cnn"].format == format_name
    copy = corrupted_copy(digits_artifacts[format_name].path, file_name, tmp_path / format_name)
    with pytest.raises(ArtifactError, match=rf"{file_name} does not match its recorded sha256"):
        deploycheck.load_artifact(copy)


@pytest.mark.slow  # every format exported and run: among the end-to-end modules, not the short ones the run ends on
def test_two_inputs_two_outputs_in_every_format(two_io_spec, tmp_path) -> None:
    artifacts = deploycheck.export_all(two_io_spec, tmp_path)
    assert set(artifacts) == set(INSTALLED)
    for name, artifact in artifacts.items():
        assert [t.name for t in artifact.inputs] == ["image", "vector"]
        assert [t.name for t in artifact.outputs] == ["classes", "value"]
        report = check_parity(artifact)
        assert report.passed, f"{name}\n{report}"
        assert {o.name.split(" @")[0] for o in report.outputs} == {"classes", "value"}


def test_state_dict_is_unavailable_without_factory_and_others_still_export(tmp_path) -> None:
    spec = deploycheck.ModelSpec(name="lin", model=torch.nn.Linear(4, 3), example_inputs=torch.randn(4, 4),
                                 formats=["state_dict", "onnx"])
    with pytest.raises(FormatUnavailable, match="lin/state_dict: no factory given"):
        deploycheck.export(spec, "state_dict", tmp_path / "sd")
    assert list(deploycheck.export_all(spec, tmp_path)) == ["onnx"]


def test_state_dict_with_a_factory_that_cannot_be_imported_again(tmp_path) -> None:
    """A partial (or lambda) factory works with the spec at hand; reopened alone, the artifact says what it needs."""
    factory = functools.partial(torch.nn.Linear, 4, 3)
    spec = deploycheck.ModelSpec(name="lin", model=factory(), factory=factory, example_inputs=torch.randn(4, 4),
                                 formats=["state_dict"])
    artifact = deploycheck.export(spec, "state_dict", tmp_path / "sd")
    assert artifact.metadata["factory"] is None and check_parity(artifact).passed
    with pytest.raises(ArtifactError, match="needs its model class; pass spec= to load_artifact"):
        deploycheck.load_artifact(tmp_path / "sd")


SUBPROCESS_RUN = textwrap.dedent("""
    import sys, numpy as np, deploycheck
    artifact = deploycheck.load_artifact(sys.argv[1], trust_code=True)  # our own export, moved
    np.save(sys.argv[3], artifact.run(np.load(sys.argv[2]))[0])
    leaked = [m for m in ("models", "deploycheck.digits", "sklearn") if m in sys.modules]
    assert not leaked, leaked
""")


@pytest.mark.parametrize("format_name", ["onnx", "torchscript", "torch_export"])
def test_relocated_artifact_runs_in_a_process_without_the_model_code(format_name, digits_artifacts,
                                                                     tmp_path) -> None:
    moved = tmp_path / "elsewhere"
    shutil.copytree(digits_artifacts[format_name].path, moved)
    inputs = load_split()[2][:20].numpy()
    np.save(tmp_path / "in.npy", inputs)
    subprocess.run([sys.executable, "-c", SUBPROCESS_RUN, str(moved), str(tmp_path / "in.npy"),
                    str(tmp_path / "out.npy")], check=True, cwd=tmp_path)
    expected = digits_artifacts[format_name].run(inputs)[0]
    np.testing.assert_array_equal(np.load(tmp_path / "out.npy"), expected)


@pytest.mark.parametrize("format_name", ["onnx", "torchscript", "torch_export", "state_dict"])
def test_one_flipped_byte_is_refused_naming_the_file(format_name, digits_artifacts, tmp_path) -> None:
    copy = tmp_path / format_name
    shutil.copytree(digits_artifacts[format_name].path, copy)
    victim = max((p for p in copy.iterdir() if p.name != "deploycheck.json"), key=lambda p: p.stat().st_size)
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0x01
    victim.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match=rf"file {victim} does not match its recorded sha256"):
        deploycheck.load_artifact(copy)
    victim.write_bytes(bytes(data[:-10]))
    with pytest.raises(ArtifactError, match="truncated or replaced"):
        deploycheck.load_artifact(copy)


def test_second_export_reuses_the_cache_and_a_changed_model_does_not(tmp_path) -> None:
    spec = deploycheck.ModelSpec(name="lin", model=torch.nn.Linear(4, 3), factory=lambda: torch.nn.Linear(4, 3),
                                 example_inputs=torch.randn(4, 4), formats=["torchscript", "onnx"])
    first = deploycheck.export_all(spec, tmp_path)
    assert not any(a.reused for a in first.values())
    second = deploycheck.export_all(spec, tmp_path)
    assert all(a.reused for a in second.values())
    with torch.no_grad():
        spec.model.weight.add_(1.0)
    third = deploycheck.export_all(spec, tmp_path)
    assert not any(a.reused for a in third.values())
    assert check_parity(third["onnx"]).passed


def test_a_failing_export_names_the_format_and_keeps_the_good_artifact(tmp_path) -> None:
    class Flaky(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.linear = torch.nn.Linear(4, 3)
            self.broken = False

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if self.broken and not torch.jit.is_tracing():
                return self.linear(x)
            if self.broken:
                raise RuntimeError("unsupported operator aten::frobnicate")
            return self.linear(x)

    spec = deploycheck.ModelSpec(name="flaky", model=Flaky(), example_inputs=torch.randn(4, 4),
                                 formats=["torchscript"])
    good = deploycheck.export(spec, "torchscript", tmp_path / "ts")
    before = {p.name: p.read_bytes() for p in good.path.iterdir()}
    spec.model.broken = True
    with torch.no_grad():
        spec.model.linear.weight.add_(1.0)
    with pytest.raises(ExportError, match=r"flaky/torchscript: export failed: RuntimeError: unsupported operator"):
        deploycheck.export(spec, "torchscript", tmp_path / "ts")
    assert {p.name: p.read_bytes() for p in (tmp_path / "ts").iterdir()} == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "staging directories are cleaned up"


def test_run_checks_inputs(digits_artifacts) -> None:
    onnx = digits_artifacts["onnx"]
    with pytest.raises(deploycheck.DeployCheckError, match=r"digits_cnn/onnx: input 'image' has shape \[2, 8, 8\]"):
        onnx.run(np.zeros((2, 8, 8), np.float32))
    with pytest.raises(deploycheck.DeployCheckError, match="expected 1 input"):
        onnx.run((np.zeros((2, 1, 8, 8), np.float32), np.zeros(2)))
    with pytest.raises(deploycheck.DeployCheckError, match="has dtype complex64, expected float32"):
        onnx.run(np.zeros((2, 1, 8, 8), np.complex64))
    out64 = onnx.run(np.zeros((2, 1, 8, 8), np.float64))
    out_t = onnx.run(torch.zeros(2, 1, 8, 8))
    np.testing.assert_array_equal(out64[0], out_t[0])


def test_eager_artifact_needs_its_spec(digits_artifacts) -> None:
    with pytest.raises(ArtifactError, match="pass spec= to load it"):
        deploycheck.load_artifact(digits_artifacts["eager"].path)


def test_export_never_deletes_what_it_did_not_write(digits_spec, tmp_path) -> None:
    """An export replaces its directory whole, so it refuses a directory holding anything but an earlier export
    of the same model and format; what it writes follows the umask like any other output."""
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(ExportError, match=r"refusing to export into .*mine: it holds 1 entries that deploycheck"):
        deploycheck.export(digits_spec, "onnx", foreign)
    assert (foreign / "notes.txt").read_text() == "keep me"
    onnx = deploycheck.export(digits_spec, "onnx", tmp_path / "shared")
    with pytest.raises(ExportError, match="it holds a deploycheck artifact of digits_cnn/onnx"):
        deploycheck.export(digits_spec, "torchscript", tmp_path / "shared")
    assert deploycheck.export(digits_spec, "onnx", tmp_path / "shared").path == onnx.path
    mask = os.umask(0o022)
    os.umask(mask)
    assert stat.S_IMODE(onnx.path.stat().st_mode) == 0o777 & ~mask
    assert stat.S_IMODE((onnx.path / "deploycheck.json").stat().st_mode) == 0o666 & ~mask


def test_a_file_the_sidecar_does_not_list_is_refused(digits_artifacts, tmp_path) -> None:
    """Only what the sidecar records (and verifies by hash) may be in an artifact: an added file is refused, and
    so is an emptied file list (which would otherwise serve altered weights unchecked)."""
    added = tmp_path / "added"
    shutil.copytree(digits_artifacts["onnx"].path, added)
    (added / "extra.onnx").write_bytes(b"not listed")
    with pytest.raises(ArtifactError, match=r"holds \['extra.onnx'\], which its deploycheck.json does not list"):
        deploycheck.load_artifact(added)
    emptied = tmp_path / "emptied"
    shutil.copytree(digits_artifacts["onnx"].path, emptied)
    sidecar = json.loads((emptied / "deploycheck.json").read_text())
    (emptied / "deploycheck.json").write_text(json.dumps({**sidecar, "files": {}}))
    with pytest.raises(ArtifactError, match=r"holds \['model.onnx'.*\], which its deploycheck.json does not list"):
        deploycheck.load_artifact(emptied)


def test_onnx_runtime_takes_omp_num_threads_unless_given_a_count(digits_artifacts, monkeypatch) -> None:
    """ONNX Runtime ignores OMP_NUM_THREADS; its loader passes it on, so that one variable shares a CI job's cores
    (pytest-xdist workers) for every runtime. An explicit count still wins, and without either ONNX Runtime
    chooses (0)."""
    from deploycheck.formats.onnx import MODEL_FILE, create_session

    model = digits_artifacts["onnx"].path / MODEL_FILE
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert create_session(model).get_session_options().intra_op_num_threads == 1
    assert create_session(model, intra_op_threads=2).get_session_options().intra_op_num_threads == 2
    monkeypatch.setenv("OMP_NUM_THREADS", "many")  # not a count: ignored, as by torch's own default
    assert create_session(model).get_session_options().intra_op_num_threads == 0
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert create_session(model).get_session_options().intra_op_num_threads == 0


def test_executorch_takes_omp_num_threads_unless_given_a_count(digits_artifacts, monkeypatch) -> None:
    """ExecuTorch's thread pool is process-wide: sized at each load, to the count asked for, else to
    OMP_NUM_THREADS; without either it is left as it is."""
    pytest.importorskip("executorch", reason="pip install 'deploycheck[executorch]'")
    from executorch.extension.pybindings import portable_lib

    from deploycheck.artifact import read_metadata
    from deploycheck.formats.executorch import load_pte, set_threads

    path = digits_artifacts["executorch"].path
    before = portable_lib._threadpool_get_thread_count()
    try:
        set_threads(1)
        monkeypatch.setenv("OMP_NUM_THREADS", "2")
        load_pte(path, read_metadata(path))
        assert portable_lib._threadpool_get_thread_count() == 2
        load_pte(path, read_metadata(path), intra_op_threads=1)
        assert portable_lib._threadpool_get_thread_count() == 1
        monkeypatch.delenv("OMP_NUM_THREADS")
        load_pte(path, read_metadata(path))
        assert portable_lib._threadpool_get_thread_count() == 1
    finally:
        set_threads(before)


def test_openvino_takes_omp_num_threads_unless_given_a_count(digits_artifacts, monkeypatch) -> None:
    pytest.importorskip("openvino", reason="pip install 'deploycheck[openvino]'")
    from deploycheck.artifact import read_metadata
    from deploycheck.formats.openvino import compile_ir

    path = digits_artifacts["openvino"].path
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert compile_ir(path, read_metadata(path)).get_property("INFERENCE_NUM_THREADS") == 1
    assert compile_ir(path, read_metadata(path), intra_op_threads=2).get_property("INFERENCE_NUM_THREADS") == 2
