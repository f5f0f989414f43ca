"""`deploycheck bisect` on a real git history: each probed commit exported by its own gate in a worktree and
timed interleaved with both ends."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

CONFTEST = '''
import pathlib

import torch
import deploycheck


@deploycheck.model
def mlp():
    torch.manual_seed(0)
    depth = int((pathlib.Path(__file__).parent / "depth.txt").read_text())
    layers = [torch.nn.Linear(256, 256) for _ in range(depth)]
    return deploycheck.ModelSpec(name="mlp", model=torch.nn.Sequential(*layers).eval(),
                                 example_inputs=torch.randn(2, 256), formats=["torch_export"])
'''

TESTS = '''
def test_parity(artifact, deploycheck):
    deploycheck.assert_parity(artifact)
'''


def _git(repo: Path, *args: str) -> str:
    command = ["git", "-c", "user.name=t", "-c", "user.email=t@t", *args]
    return subprocess.run(command, cwd=repo, check=True, capture_output=True, text=True).stdout.strip()


def _bisect(repo: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "deploycheck.cli", "bisect", *args, "--model", "mlp",
                           "--format", "torch_export", "--time", "0.3"], cwd=repo, capture_output=True, text=True,
                          timeout=600)


def test_bisect_names_the_commit_where_latency_stepped_and_what_changed(tmp_path: Path) -> None:
    """Four commits after GOOD; the third makes the model four times deeper (the rest touch a README). Bisect
    finds that commit in two probes, says its graph gained three linear layers, and refuses a range where nothing
    stepped or whose ends are not in order."""
    repo = tmp_path / "project"
    repo.mkdir()
    (repo / "conftest.py").write_text(CONFTEST)
    (repo / "test_gate.py").write_text(TESTS)
    (repo / "depth.txt").write_text("1")
    _git(repo, "init", "-q")
    commits = []
    for index in range(5):
        if index == 3:
            (repo / "depth.txt").write_text("4")
        (repo / "README").write_text(f"version {index}")
        _git(repo, "add", "-A")
        _git(repo, "commit", "-qm", f"change {index}" + (" makes the model deeper" if index == 3 else ""))
        commits.append(_git(repo, "rev-parse", "HEAD"))

    found = _bisect(repo, commits[0], commits[-1])
    assert found.returncode == 0, found.stdout + found.stderr
    lines = found.stdout.splitlines()
    assert any(line.startswith("p50: BAD / GOOD = x") for line in lines), found.stdout
    assert sum(" of GOOD, x" in line for line in lines) == 2, found.stdout
    conclusion = next(line for line in lines if line.startswith("first bad commit: "))
    assert conclusion.startswith(f"first bad commit: {commits[3]} change 3 makes the model deeper"), found.stdout
    assert f"last good: {commits[2][:10]}" in conclusion
    assert "cost counters moved (the exported graph changed): +3 aten.linear" in found.stdout
    assert "+300% FLOPs" in found.stdout

    flat = _bisect(repo, commits[3], commits[-1], "--metric", "size")  # exact: the size did not change either
    assert flat.returncode == 2 and "no step to find: size of" in flat.stderr and "x1.000" in flat.stderr, flat.stderr
    backwards = _bisect(repo, commits[-1], commits[0])
    assert backwards.returncode == 2 and "is not an ancestor of" in backwards.stderr, backwards.stderr
