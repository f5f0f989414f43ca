"""The history, the CI outputs and the shard merge as users run them: real pytest runs through `pytester`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from deploycheck.history.store import HistoryStore

pytestmark = pytest.mark.slow

CONFTEST = '''
import os

import torch
import deploycheck


def _spec(name, width):
    torch.manual_seed(0)
    x = torch.randn(256, 12)
    model = torch.nn.Sequential(torch.nn.Linear(12, width), torch.nn.ReLU(), torch.nn.Linear(width, 3)).eval()
    labels = model(x).argmax(1)
    noise = float(os.environ.get("TINY_WEIGHT_NOISE", "0"))
    if noise and name == "tiny":
        with torch.no_grad():
            model[2].weight.add_(noise * torch.randn_like(model[2].weight))
    return deploycheck.ModelSpec(name=name, model=model, example_inputs=x[:8], formats=["eager", "onnx"],
                                 eval_data=[(x[i:i + 128], labels[i:i + 128]) for i in range(0, 256, 128)],
                                 max_accuracy_drop=0.02)


@deploycheck.model
def tiny():
    return _spec("tiny", 24)


@deploycheck.model
def wide():
    return _spec("wide", 48)


@deploycheck.model
def deep():
    return _spec("deep", 16)
'''

TESTS = '''
def test_parity(artifact, deploycheck):
    deploycheck.assert_parity(artifact)


def test_accuracy(artifact, deploycheck):
    deploycheck.assert_accuracy(artifact)
'''


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "deploycheck.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300)


def test_every_run_is_kept_and_ci_gets_its_summary_annotations_and_merged_shards(
        pytester: pytest.Pytester, run_in_process, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_gate=TESTS)
    common = ["-p", "no:cacheprovider", f"--deploycheck-artifacts={tmp_path / 'artifacts'}",
              "--deploycheck-formats=eager,onnx"]
    history = pytester.path / ".deploycheck" / "history.sqlite"

    run_in_process(*common, "--deploycheck-update").assert_outcomes(passed=12)
    pytester.runpytest_subprocess(*common, "-n", "2", f"--deploycheck-report={tmp_path / 'single.json'}") \
        .assert_outcomes(passed=12)
    records = HistoryStore(history).records()
    assert len(records) == 12 and len({r.key for r in records}) == 12
    assert {r.run.mode for r in records} == {"update", "compare"}
    assert all(r.figures["accuracy"] > 0.9 and r.verdict == "ok" for r in records)
    assert all(r.counters["flops_per_sample"] > 0 and r.counters["weight_bytes"] > 0 for r in records)
    assert all(r.counters["ops"] for r in records if r.format == "onnx")

    # two shards of a CI matrix, run at once on one runner, both writing the history: each record there once
    shards = [subprocess.Popen([sys.executable, "-m", "pytest", "-q", *common, f"--deploycheck-models={models}",
                                f"--deploycheck-report={tmp_path / shard}.json"], cwd=pytester.path,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
              for shard, models in (("a", "tiny"), ("b", "wide,deep"))]
    outputs = [shard.communicate(timeout=300)[0] for shard in shards]
    assert [shard.returncode for shard in shards] == [0, 0], outputs
    records = HistoryStore(history).records()
    assert len(records) == 18 and len({r.key for r in records}) == 18 and len({r.run.run_id for r in records}) == 4
    merged = _cli("report", "merge", str(tmp_path / "b.json"), str(tmp_path / "a.json"), "-o",
                  str(tmp_path / "merged.json"), "--markdown", str(tmp_path / "merged.md"), cwd=pytester.path)
    single = _cli("report", "merge", str(tmp_path / "single.json"), "-o", str(tmp_path / "again.json"),
                  cwd=pytester.path)
    assert merged.returncode == single.returncode == 0, merged.stderr
    assert merged.stdout == single.stdout and "6 of 6 model x format(s) passed" in merged.stdout
    twice = _cli("report", "merge", str(tmp_path / "a.json"), str(tmp_path / "single.json"), "-o",
                 str(tmp_path / "x.json"), cwd=pytester.path)
    assert twice.returncode == 2 and "deep/eager is in both" not in twice.stderr
    assert "is in both" in twice.stderr and "tiny/eager" in twice.stderr

    summary = tmp_path / "step_summary.md"
    monkeypatch.setenv("GITHUB_ACTIONS", "true")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    monkeypatch.setenv("TINY_WEIGHT_NOISE", "0.6")
    failed = run_in_process(*common, f"--deploycheck-html={tmp_path / 'report.html'}")
    failed.assert_outcomes(passed=10, failed=2)
    page = (tmp_path / "report.html").read_text()
    trends = page.split("Over the history")[1]
    assert trends.count("<svg") == 6 and 'font-weight="bold">tiny/onnx</text>' in trends, "a trend per model x format"
    failed.stdout.fnmatch_lines(["::error title=deploycheck%3A tiny/eager failed::tiny/eager: test_accuracy failed*",
                                 "::error title=deploycheck%3A tiny/onnx failed::*accuracy*If intended, accept the "
                                 "new figures with: pytest --deploycheck-update"])
    written = summary.read_text()
    assert written.startswith("## deploycheck") and "2 of 6 model x format(s) FAILED" in written
    assert "commit" in written and "machine" in written
    records = HistoryStore(history).records("tiny", "onnx")
    assert [r.verdict for r in records] == ["ok", "ok", "ok", "FAIL"]

    shown = _cli("history", "--model", "tiny", cwd=pytester.path)
    assert shown.returncode == 0, shown.stderr
    assert "the last 4 run(s)" in shown.stdout and "accuracy" in shown.stdout and "size" in shown.stdout
    drawn = _cli("history", "--html", str(tmp_path / "history.html"), cwd=pytester.path)
    assert drawn.returncode == 0 and "history page of 5 run(s)" in drawn.stdout, drawn.stderr
    assert (tmp_path / "history.html").read_text().count('font-weight="bold">') == 6
    missing = _cli("history", "--store", "nowhere.sqlite", cwd=pytester.path)
    assert missing.returncode == 2 and "no history at nowhere.sqlite" in missing.stderr


def test_a_shallow_clone_names_the_fix(tmp_path: Path) -> None:
    from deploycheck.against import resolve
    from deploycheck.errors import DeployCheckError

    origin = tmp_path / "origin"
    origin.mkdir()
    git = ["git", "-c", "user.email=ci@example.com", "-c", "user.name=ci"]
    subprocess.run(["git", "init", "-q", str(origin)], check=True)
    for commit in range(3):
        (origin / "f").write_text(str(commit))
        subprocess.run([*git, "-C", str(origin), "add", "f"], check=True)
        subprocess.run([*git, "-C", str(origin), "commit", "-qm", f"c{commit}"], check=True)
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", "--depth", "1", f"file://{origin}", str(clone)], check=True)
    with pytest.raises(DeployCheckError, match=r"shallow clone.*fetch-depth: 0.*git fetch --unshallow"):
        resolve("HEAD~1", clone)
    assert resolve("HEAD~1", origin).commit


def test_a_pull_request_is_compared_with_its_merge_base(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from deploycheck.against import resolve

    repo = tmp_path / "repo"
    git = ["git", "-c", "user.email=ci@example.com", "-c", "user.name=ci", "-C", str(repo)]
    subprocess.run(["git", "init", "-q", "-b", "main", str(repo)], check=True)

    def commit(message: str) -> str:
        (repo / "f").write_text(message)
        subprocess.run([*git, "add", "f"], check=True)
        subprocess.run([*git, "commit", "-qm", message], check=True)
        return subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()

    forked = commit("base")
    subprocess.run([*git, "checkout", "-q", "-b", "feature"], check=True)
    commit("feature")
    subprocess.run([*git, "checkout", "-q", "main"], check=True)
    tip = commit("main moved on")
    subprocess.run([*git, "checkout", "-q", "feature"], check=True)
    assert resolve("main", repo).commit == tip, "outside a pull request a branch is its tip"
    assert resolve("merge-base:main", repo).commit == forked
    monkeypatch.setenv("GITHUB_BASE_REF", "main")
    assert resolve("main", repo).commit == forked, "in a pull request, its base is the merge-base"
    monkeypatch.delenv("GITHUB_BASE_REF")
    with pytest.raises(Exception, match="not in a pull request"):
        resolve("merge-base", repo)


@pytest.mark.parametrize("history_location", ["postgres"], indirect=True)
def test_two_gate_runs_at_once_keep_every_record_once_in_postgresql(pytester: pytest.Pytester, tmp_path: Path,
                                                                    history_location: str) -> None:
    """Two pytest runs of the gate started together write into one PostgreSQL history: every model x format of
    both runs is there once, under its own run (SQLite: the shards of the test above)."""
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_gate=TESTS)
    runs = [subprocess.Popen([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                              f"--deploycheck-artifacts={tmp_path / f'artifacts{k}'}", "--deploycheck-formats=eager",
                              "--deploycheck-no-baselines", f"--deploycheck-history={history_location}"],
                             cwd=pytester.path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            for k in range(2)]
    outputs = [run.communicate(timeout=300)[0] for run in runs]
    assert [run.returncode for run in runs] == [0, 0], outputs
    records = HistoryStore(history_location).records()
    assert len(records) == 6 and len({r.key for r in records}) == 6
    assert len({r.run.run_id for r in records}) == 2
    assert sorted((r.model, r.format) for r in records) == sorted([(m, "eager") for m in ("deep", "tiny", "wide")] * 2)


def test_a_history_that_cannot_take_the_run_loses_none_of_its_baselines_or_reports(
        pytester: pytest.Pytester, run_in_process, tmp_path: Path) -> None:
    """A hand-edited store (a figure that is not a number) makes the history raise at session finish: the run's
    baselines and report are written all the same, and with --deploycheck-fail-on-change-point the run fails
    (the gate could not look for change points) instead of passing unchecked."""
    import sqlite3

    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_gate=TESTS)
    common = ["-p", "no:cacheprovider", f"--deploycheck-artifacts={tmp_path / 'artifacts'}",
              "--deploycheck-formats=eager", "--deploycheck-models=tiny"]
    run_in_process(*common, "--deploycheck-update").assert_outcomes(passed=2)
    history = pytester.path / ".deploycheck" / "history.sqlite"
    with sqlite3.connect(history) as connection:
        connection.execute("""UPDATE results SET figures = '{"max_abs": "n/a", "accuracy": "high"}'""")
    baseline = pytester.path / "baselines" / "tiny" / "eager.json"
    baseline.unlink()
    report = tmp_path / "report.json"
    gated = run_in_process(*common, "--deploycheck-update", "--deploycheck-fail-on-change-point",
                           f"--deploycheck-report={report}")
    assert gated.ret == 1, "the change points could not be looked for: not a pass"
    gated.stdout.fnmatch_lines([f"deploycheck: the history at {history} could not take this run (*); this run is "
                                "not in the history", "*--deploycheck-fail-on-change-point could not be checked*",
                                "deploycheck: 1 of 1 model x format(s) FAILED (tiny/eager)"])
    assert baseline.is_file() and report.is_file(), "written whatever the history says"
    without_gate = run_in_process(*common, f"--deploycheck-report={report}")  # appending reads no old figure
    assert without_gate.ret == 0 and "1 record(s) of run" in without_gate.stdout.str()
