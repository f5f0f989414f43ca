"""`aot_inductor`, the opt-in format: compiled once on a small model with two inputs and two outputs (a C++
compilation takes tens of seconds), loaded back from disk, at fp32 parity with eager at several batch sizes,
refused by hash when altered and, as native code, refused unless trusted."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

import deploycheck
from deploycheck.errors import ArtifactError
from deploycheck.formats import default_formats, format_names
from deploycheck.parity import check_parity

pytestmark = pytest.mark.slow


def test_aot_inductor_is_opt_in() -> None:
    assert "aot_inductor" in format_names() and "aot_inductor" not in default_formats()


@pytest.mark.skipif(not any(shutil.which(c) for c in ("g++", "c++", "clang++")), reason="no C++ compiler")
def test_a_compiled_package_runs_at_fp32_parity_and_is_refused_when_altered_or_untrusted(tmp_path: Path) -> None:
    from models import corrupted_copy, two_io_spec

    spec = two_io_spec(formats=["onnx", "aot_inductor"])
    artifact = deploycheck.export(spec, "aot_inductor", tmp_path / "aoti")
    assert artifact.metadata["settings"]["device"] == "cpu" and list(artifact.metadata["files"]) == ["model.pt2"]
    report = check_parity(artifact, spec, batch_sizes=[1, 3, 17])
    assert report.passed and report.max_abs < 1e-4, report
    copy = tmp_path / "copy"
    shutil.copytree(artifact.path, copy)
    sidecar = json.loads((copy / "deploycheck.json").read_text())
    (copy / "deploycheck.json").write_text(json.dumps({**sidecar, "created": "elsewhere"}))
    with pytest.raises(ArtifactError, match="compiled shared library"):
        deploycheck.load_artifact(copy)  # not this process's own export: native code needs trust
    assert deploycheck.load_artifact(copy, trust_code=True).run(spec.sample_inputs(2))[0].shape == (2, 5)
    corrupted = corrupted_copy(copy, "model.pt2", tmp_path / "corrupted")
    with pytest.raises(ArtifactError, match="does not match its recorded sha256"):
        deploycheck.load_artifact(corrupted, trust_code=True)
