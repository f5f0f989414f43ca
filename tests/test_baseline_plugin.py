"""The baseline lifecycle as users run it: real pytest runs through `pytester`, without and with pytest-xdist."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

CONFTEST = '''
import os

import torch
import deploycheck


@deploycheck.model
def tiny():
    torch.manual_seed(0)
    x = torch.randn(512, 12)
    hidden = int(os.environ.get("TINY_HIDDEN", "24"))
    model = torch.nn.Sequential(torch.nn.Linear(12, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 3)).eval()
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


def test_baseline_lifecycle(pytester: pytest.Pytester, run_in_process, monkeypatch: pytest.MonkeyPatch,
                            tmp_path: Path) -> None:
    """Missing, recorded, unchanged, regressed, re-accepted and stale, alternating between one process and
    pytest-xdist workers (where the controller alone writes and relays the workers' failures)."""
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_gate=TESTS)
    common = ["-p", "no:cacheprovider", f"--deploycheck-artifacts={tmp_path / 'artifacts'}",
              "--deploycheck-formats=eager,onnx"]
    workers = ["-n", "2"]
    baselines = pytester.path / "baselines"

    first = pytester.runpytest_subprocess(*common, *workers)
    assert first.ret == pytest.ExitCode.TESTS_FAILED
    first.assert_outcomes()
    first.stdout.fnmatch_lines([f"*deploycheck: 2 baseline(s) missing under {baselines}:",
                                "  tiny/ eager.json, onnx.json",
                                "Record them with `pytest --deploycheck-update-new`*"])
    assert "Traceback" not in first.stdout.str() and len(first.stdout.lines) < 15
    assert not baselines.exists() and not (tmp_path / "artifacts").exists(), "nothing exported, nothing written"

    run_in_process(*common, "--deploycheck-update").assert_outcomes(passed=4)
    stored = json.loads((baselines / "tiny" / "onnx.json").read_text())
    assert {"accuracy", "parity", "size", "environment", "git_commit", "counters"} <= set(stored)
    assert stored["counters"]["flops_per_sample"] == 2 * (12 * 24 + 24 * 3) and stored["counters"]["ops"]
    assert sorted((baselines / "tiny").iterdir()) == [baselines / "tiny" / "eager.json",
                                                      baselines / "tiny" / "onnx.json"]
    run_in_process(*common).assert_outcomes(passed=4)

    monkeypatch.setenv("TINY_WEIGHT_NOISE", "0.6")
    regressed = pytester.runpytest_subprocess(*common, *workers, "-rf")
    regressed.assert_outcomes(passed=2, failed=2)
    regressed.stdout.fnmatch_lines(["*AssertionError: tiny/onnx against its baseline *onnx.json: regressed",
                                    "*metric*baseline*obtained*change*limit*status*",
                                    "*accuracy*100.00%*REGRESSED*", "*run with --deploycheck-update*"])
    regressed.stdout.fnmatch_lines(["FAILED test_gate.py::test_accuracy?tiny/eager?*",
                                    "FAILED test_gate.py::test_accuracy?tiny/onnx?*"])
    assert stored == json.loads((baselines / "tiny" / "onnx.json").read_text()), "a failing run changes nothing"

    pytester.runpytest_subprocess(*common, *workers, "--deploycheck-update").assert_outcomes(passed=4)
    assert json.loads((baselines / "tiny" / "onnx.json").read_text())["accuracy"] != stored["accuracy"], \
        "the controller wrote the workers' new figures"

    (baselines / "retired").mkdir()
    (baselines / "retired" / "onnx.json").write_text(json.dumps({"model": "retired", "format": "onnx"}))
    stale = run_in_process(*common)
    stale.assert_outcomes(passed=4)
    stale.stdout.fnmatch_lines(["*1 stale baseline(s)*", f"*{baselines / 'retired' / 'onnx.json'}"])


def test_a_size_regression_fails_test_size_not_test_parity(pytester: pytest.Pytester, run_in_process,
                                                           monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A CI listing names a size regression as one; a gate without test_size is told its size is not held."""
    pytester.makeconftest(CONFTEST)
    size_test = "\n\ndef test_size(artifact, deploycheck):\n    deploycheck.assert_size(artifact)\n"
    pytester.makepyfile(test_gate=TESTS + size_test)
    common = ["-p", "no:cacheprovider", f"--deploycheck-artifacts={tmp_path / 'artifacts'}",
              "--deploycheck-formats=onnx", "-rf"]
    run_in_process(*common, "--deploycheck-update").assert_outcomes(passed=3)
    monkeypatch.setenv("TINY_HIDDEN", "48")
    grown = run_in_process(*common)
    grown.assert_outcomes(passed=2, failed=1)
    grown.stdout.fnmatch_lines(["FAILED test_gate.py::test_size?tiny/onnx?*"])
    assert any("size" in line and "REGRESSED" in line for line in grown.stdout.lines)
    pytester.makepyfile(test_gate=TESTS)
    unheld = run_in_process(*common)
    unheld.assert_outcomes(passed=2)
    unheld.stdout.fnmatch_lines(["deploycheck: no test called assert_size for tiny/onnx: their size is held to no "
                                 "baseline (add `def test_size(artifact, deploycheck): *"])


def test_update_new_only_creates_missing_and_broken_files_are_named(pytester: pytest.Pytester, run_in_process,
                                                                    tmp_path: Path) -> None:
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_gate=TESTS)
    common = ["-p", "no:cacheprovider", f"--deploycheck-artifacts={tmp_path / 'artifacts'}",
              "--deploycheck-formats=eager,onnx"]
    baselines = pytester.path / "baselines"
    quiet = run_in_process(*common, "--deploycheck-update-new", "-k", "eager", "-p", "no:terminal")
    assert quiet.ret == 0 and not quiet.stdout.lines, "baselines are saved at session finish, not by the terminal"
    eager = (baselines / "tiny" / "eager.json").read_text()
    result = run_in_process(*common, "--deploycheck-update-new")
    result.assert_outcomes(passed=4)
    result.stdout.fnmatch_lines(["*1 baseline(s) written*", f"*{baselines / 'tiny' / 'onnx.json'}"])
    assert (baselines / "tiny" / "eager.json").read_text() == eager

    (baselines / "tiny" / "onnx.json").write_text('{"model": "tiny", "format": "onnx", "parity": [')
    broken = run_in_process(*common)
    broken.assert_outcomes(passed=2, failed=2)
    broken.stdout.fnmatch_lines([f"*baseline {baselines / 'tiny' / 'onnx.json'}: not valid JSON*"])

    assert run_in_process(*common, "--deploycheck-update", "--deploycheck-update-new").ret == 4


def test_rules_from_pyproject_and_reports(pytester: pytest.Pytester, run_in_process, tmp_path: Path) -> None:
    """A looser accuracy rule in [tool.deploycheck.rules] lets the same regression pass; the Markdown and HTML
    reports are written."""
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_gate=TESTS)
    common = ["-p", "no:cacheprovider", f"--deploycheck-artifacts={tmp_path / 'artifacts'}",
              "--deploycheck-formats=onnx", "--deploycheck-baselines=store"]
    coloured = run_in_process(*common, "--deploycheck-update", "--color=yes")
    assert coloured.ret == 0 and (pytester.path / "store" / "tiny" / "onnx.json").is_file()
    row = next(line for line in coloured.stdout.lines if line.lstrip("\x1b[0123456789;m").startswith("tiny "))
    assert row.startswith("\x1b[32m") and row.rstrip().endswith("ok\x1b[0m"), "a status coloured on a terminal"
    pytester.makepyprojecttoml("[tool.deploycheck.rules]\naccuracy_drop = 0.5\n")
    result = run_in_process(
        *common, f"--deploycheck-markdown={tmp_path / 'r.md'}", f"--deploycheck-html={tmp_path / 'r.html'}")
    result.assert_outcomes(passed=2)
    assert "\x1b[" not in result.stdout.str(), "plain when piped"
    assert "| tiny | onnx |" in (tmp_path / "r.md").read_text()
    plots, trends = (tmp_path / "r.html").read_text().split("Over the history")
    assert plots.count("<svg") == 1, "no latency figures, so only the trade-off plot"
    assert trends.count("<svg") == 1, "and the model x format's trend over its two runs in the history"


SPEED_TESTS = '''
def test_speed(artifact, deploycheck):
    deploycheck.bench(artifact, batch_sizes=(1, 8))
'''


def _latency_notes(report: Path) -> list[str]:
    rows = [result["measurements"] for result in json.loads(report.read_text())["results"]]
    return [finding["note"] for row in rows for finding in row["baseline"]["latency"]["findings"]]


def test_latency_is_timed_side_by_side_with_the_accepted_artifact_or_another_revision(
        pytester: pytest.Pytester, run_in_process, tmp_path: Path) -> None:
    """`--deploycheck-update` puts the artifact into the accepted store by content; a later run times it side by
    side with the new one. `--deploycheck-against REF` exports REF's models from a git worktree and times those."""
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_gate=SPEED_TESTS)
    pytester.makepyprojecttoml('[tool.deploycheck.rules]\nlatency = ["p50:200%"]\nthroughput_drop = 0.9\n')
    common = ["--deploycheck-formats=onnx", "--deploycheck-bench-time=0.05", "--deploycheck-accepted=accepted"]
    run_in_process(*common, "--deploycheck-update").assert_outcomes(passed=1)
    digest = json.loads((pytester.path / "baselines" / "tiny" / "onnx.json").read_text())["accepted_artifact"]
    assert (pytester.path / "accepted" / digest / "deploycheck.json").is_file()

    report = tmp_path / "report.json"
    run_in_process(*common, f"--deploycheck-report={report}").assert_outcomes(passed=1)
    assert all(note == "side by side with the accepted artifact" for note in _latency_notes(report))

    for command in (["init", "-q"], ["add", "-A"],
                    ["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "the accepted model"]):
        subprocess.run(["git", *command], cwd=pytester.path, check=True)
    against = run_in_process(*common, "--deploycheck-against=HEAD",
                             f"--deploycheck-report={report}")
    against.assert_outcomes(passed=1)
    against.stdout.fnmatch_lines(["*exporting the models of HEAD (*) to time them side by side*"])
    assert all(note.startswith("side by side with HEAD (") for note in _latency_notes(report))

    unknown = run_in_process(*common, "--deploycheck-against=no-such-branch")
    assert unknown.ret == pytest.ExitCode.USAGE_ERROR
    unknown.stderr.fnmatch_lines(["*--deploycheck-against no-such-branch: no commit of that name in*"])
