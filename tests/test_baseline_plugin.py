"""The baseline lifecycle as users run it: real pytest runs through `pytester`, without and with pytest-xdist."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

CONFTEST = '''
import os

import torch
import deploycheck


@deploycheck.model
def tiny():
    torch.manual_seed(0)
    x = torch.randn(512, 12)
    model = torch.nn.Sequential(torch.nn.Linear(12, 24), torch.nn.ReLU(), torch.nn.Linear(24, 3)).eval()
    labels = model(x).argmax(1)
    noise = float(os.environ.get("TINY_WEIGHT_NOISE", "0"))
    if noise:
        with torch.no_grad():
            model[2].weight.add_(noise * torch.randn_like(model[2].weight))
    return deploycheck.ModelSpec(name="tiny", model=model, example_inputs=x[:8], formats=["eager", "onnx"],
                                 eval_data=[(x[i:i + 128], labels[i:i + 128]) for i in range(0, 512, 128)],
                                 max_accuracy_drop=0.02)
'''

TESTS = '''
def test_parity(artifact, deploycheck):
    deploycheck.assert_parity(artifact)


def test_accuracy(artifact, deploycheck):
    deploycheck.assert_accuracy(artifact)
'''


@pytest.mark.parametrize("workers", ["0", "2"])
def test_baseline_lifecycle(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                            workers: str) -> None:
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_gate=TESTS)
    common = ["-n", workers, "-p", "no:cacheprovider", f"--deploycheck-artifacts={tmp_path / 'artifacts'}",
              "--deploycheck-formats=eager,onnx"]
    baselines = pytester.path / "baselines"

    first = pytester.runpytest_subprocess(*common)
    first.assert_outcomes(failed=4)
    first.stdout.fnmatch_lines([f"*no baseline for tiny/onnx: {baselines / 'tiny' / 'onnx.json'} does not exist; "
                                "run with --deploycheck-update-new*"])
    assert not baselines.exists(), "a run without an update flag writes nothing"

    pytester.runpytest_subprocess(*common, "--deploycheck-update").assert_outcomes(passed=4)
    stored = json.loads((baselines / "tiny" / "onnx.json").read_text())
    assert {"accuracy", "parity", "size", "environment", "git_commit"} <= set(stored)
    assert sorted((baselines / "tiny").iterdir()) == [baselines / "tiny" / "eager.json",
                                                      baselines / "tiny" / "onnx.json"]

    pytester.runpytest_subprocess(*common).assert_outcomes(passed=4)

    monkeypatch.setenv("TINY_WEIGHT_NOISE", "0.6")
    regressed = pytester.runpytest_subprocess(*common, "-rf")
    regressed.assert_outcomes(passed=2, failed=2)
    regressed.stdout.fnmatch_lines(["*AssertionError: tiny/onnx against its baseline *onnx.json: regressed",
                                    "*metric*baseline*obtained*change*limit*status*",
                                    "*accuracy*100.00%*REGRESSED*", "*run with --deploycheck-update*"])
    regressed.stdout.fnmatch_lines(["FAILED test_gate.py::test_accuracy?tiny/eager?*",
                                    "FAILED test_gate.py::test_accuracy?tiny/onnx?*"])
    assert stored == json.loads((baselines / "tiny" / "onnx.json").read_text()), "a failing run changes nothing"

    pytester.runpytest_subprocess(*common, "--deploycheck-update").assert_outcomes(passed=4)

    (baselines / "retired").mkdir()
    (baselines / "retired" / "onnx.json").write_text(json.dumps({"model": "retired", "format": "onnx"}))
    stale = pytester.runpytest_subprocess(*common)
    stale.assert_outcomes(passed=4)
    stale.stdout.fnmatch_lines(["*1 stale baseline(s)*", f"*{baselines / 'retired' / 'onnx.json'}"])


def test_update_new_only_creates_missing_and_broken_files_are_named(pytester: pytest.Pytester,
                                                                    tmp_path: Path) -> None:
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_gate=TESTS)
    common = ["-p", "no:cacheprovider", f"--deploycheck-artifacts={tmp_path / 'artifacts'}",
              "--deploycheck-formats=eager,onnx"]
    baselines = pytester.path / "baselines"
    pytester.runpytest_subprocess(*common, "--deploycheck-update-new", "-k", "eager").assert_outcomes(passed=2)
    eager = (baselines / "tiny" / "eager.json").read_text()
    result = pytester.runpytest_subprocess(*common, "--deploycheck-update-new")
    result.assert_outcomes(passed=4)
    result.stdout.fnmatch_lines(["*1 baseline(s) written*", f"*{baselines / 'tiny' / 'onnx.json'}"])
    assert (baselines / "tiny" / "eager.json").read_text() == eager

    (baselines / "tiny" / "onnx.json").write_text('{"model": "tiny", "format": "onnx", "parity": [')
    broken = pytester.runpytest_subprocess(*common)
    broken.assert_outcomes(passed=2, failed=2)
    broken.stdout.fnmatch_lines([f"*baseline {baselines / 'tiny' / 'onnx.json'}: not valid JSON*"])

    assert pytester.runpytest_subprocess(*common, "--deploycheck-update", "--deploycheck-update-new").ret == 4


def test_rules_from_pyproject_and_reports(pytester: pytest.Pytester, tmp_path: Path) -> None:
    """A looser accuracy rule in [tool.deploycheck.rules] lets the same regression pass; the Markdown and HTML
    reports are written."""
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_gate=TESTS)
    common = ["-p", "no:cacheprovider", f"--deploycheck-artifacts={tmp_path / 'artifacts'}",
              "--deploycheck-formats=onnx", "--deploycheck-baselines=store"]
    pytester.runpytest_subprocess(*common, "--deploycheck-update").assert_outcomes(passed=2)
    assert (pytester.path / "store" / "tiny" / "onnx.json").is_file()
    pytester.makepyprojecttoml("[tool.deploycheck.rules]\naccuracy_drop = 0.5\n")
    result = pytester.runpytest_subprocess(
        *common, f"--deploycheck-markdown={tmp_path / 'r.md'}", f"--deploycheck-html={tmp_path / 'r.html'}")
    result.assert_outcomes(passed=2)
    assert "| tiny | onnx |" in (tmp_path / "r.md").read_text()
    assert (tmp_path / "r.html").read_text().count("<svg") == 1, "no latency figures, so only the trade-off plot"
