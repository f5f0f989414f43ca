"""The `deploycheck` command, run as a user runs it (a real subprocess)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from models import installed_formats

from deploycheck.cli import main

pytestmark = pytest.mark.slow

EXE = [sys.executable, "-m", "deploycheck.cli"]


def test_init_writes_a_project_that_passes_the_gate(tmp_path: Path, pytester: pytest.Pytester,
                                                    run_in_process) -> None:
    assert main(["init", str(pytester.path)]) == 0
    assert (pytester.path / "conftest.py").is_file() and (pytester.path / "baselines").is_dir()
    assert main(["init", str(pytester.path)]) == 0, "init again: its own files are recognised, left as they are"
    tests = (pytester.path / "tests" / "test_deploy.py").read_text()
    assert all(f"def test_{name}(artifact, deploycheck)" in tests for name in ("parity", "accuracy", "speed"))
    assert "factory=MyModel" in (pytester.path / "conftest.py").read_text()
    assert "[tool.deploycheck]" in (pytester.path / "pyproject.toml").read_text()
    # an int8 format too: the template's model must keep its top-1 under int8, as the README's sequence runs it
    options = [f"--deploycheck-artifacts={tmp_path}", "--deploycheck-bench-time=0.2",
               "--deploycheck-formats=eager,onnx,state_dict,onnx_int8_static"]
    run_in_process(*options, "--deploycheck-update").assert_outcomes(passed=16)
    run_in_process(*options).assert_outcomes(passed=16)
    assert (pytester.path / "baselines" / "my_model" / "onnx.json").is_file()


def test_init_in_a_project_with_its_own_conftest_loses_nothing(tmp_path: Path, pytester: pytest.Pytester,
                                                                 run_in_process,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """The user's conftest.py (a fixture, a pytest_plugins line) and tests/test_deploy.py stay as they were,
    with one import line added to the conftest; the gate and the user's own test then run together."""
    users_conftest = ('import pytest\n\npytest_plugins = []\n\n\n@pytest.fixture\ndef database():\n'
                      '    return {"rows": 3}\n')
    users_test = "def test_database(database):\n    assert database['rows'] == 3\n"
    (pytester.path / "conftest.py").write_text(users_conftest)
    (pytester.path / "tests").mkdir()
    (pytester.path / "tests" / "test_deploy.py").write_text(users_test)
    assert main(["init", str(pytester.path)]) == 0
    printed = capsys.readouterr().out
    conftest = (pytester.path / "conftest.py").read_text()
    assert conftest.startswith(users_conftest) and conftest.count("from conftest_deploycheck import *") == 1
    assert (pytester.path / "tests" / "test_deploy.py").read_text() == users_test
    assert "left " in printed and "(yours)" in printed and "added to" in printed
    assert main(["init", str(pytester.path)]) == 0 and (pytester.path / "conftest.py").read_text() == conftest, \
        "the line is added once"
    models = pytester.path / "conftest_deploycheck.py"
    models.write_text(models.read_text() + "# edited\n")
    assert main(["init", str(pytester.path)]) == 2, "an edited file of init's is not overwritten silently"
    assert main(["init", str(pytester.path), "--force"]) == 0
    assert (pytester.path / "conftest_deploycheck.py.bak").read_text().endswith("# edited\n"), "kept, not lost"
    options = [f"--deploycheck-artifacts={tmp_path}", "--deploycheck-no-bench", "--deploycheck-formats=eager,onnx"]
    run_in_process(*options, "--deploycheck-update").assert_outcomes(passed=7, skipped=2)


def test_demo_prints_every_installed_format_and_reuses_its_cache(tmp_path: Path, cache_env: dict[str, str],
                                                                 digits_artifacts) -> None:
    """Into a copy of the suite's digits exports less one format: the demo exports that one and reuses the
    others."""
    out = tmp_path / "demo"
    shutil.copytree(digits_artifacts["onnx"].path.parent, out)
    shutil.rmtree(out / "onnx_int8_static")
    run = subprocess.run([*EXE, "demo", "--out", str(out)], capture_output=True, text=True, env=cache_env)
    assert run.returncode == 0, run.stderr
    first = run.stdout
    for name in installed_formats():  # the gate's own table, status words and verdict
        assert re.search(rf"^digits_cnn +{name} .* ok$", first, re.MULTILINE), name
    assert "deploycheck: exported: onnx_int8_static\n" in first
    cached = next(line for line in first.splitlines() if line.startswith("deploycheck: cached: "))
    assert len(cached.split(", ")) == len(installed_formats()) - 1
    assert re.search(r"^deploycheck: best format for digits_cnn: \w+ \(p50 [0-9.]+ ms", first, re.MULTILINE)
    assert f"deploycheck: {len(installed_formats())} of {len(installed_formats())} model x format(s) passed" in first
    assert "int8 formats are\n  judged by top-1 agreement with eager (at least 90%) and SQNR" in first, "a legend"
    assert first.rstrip().splitlines()[-1].startswith("next: `deploycheck init` writes this gate into your project")


def test_export_command_and_bad_reference(tmp_path: Path, cache_env: dict[str, str]) -> None:
    (tmp_path / "specs.py").write_text(
        "import torch, deploycheck\n"
        "def lin():\n"
        "    return deploycheck.ModelSpec(name='lin', model=torch.nn.Linear(3, 2), example_inputs=torch.randn(4, 3),"
        " formats=['onnx', 'state_dict'])\n")
    run = subprocess.run([*EXE, "export", "specs:lin", "--out", "out"], cwd=tmp_path, capture_output=True,
                         text=True, env=cache_env)
    assert run.returncode == 0, run.stderr
    assert (tmp_path / "out" / "onnx" / "model.onnx").is_file()
    assert re.search(r"^lin +state_dict .*skipped$", run.stdout, re.MULTILINE), run.stdout
    assert "deploycheck: lin/state_dict skipped: " in run.stdout and "no factory given" in run.stdout
    assert run.stdout.rstrip().endswith("deploycheck: 1 of 1 model x format(s) passed")
    bad = subprocess.run([*EXE, "export", "specs", "--out", "out"], cwd=tmp_path, capture_output=True, text=True)
    assert bad.returncode == 2 and "'specs' is not MODULE:FUNC" in bad.stderr


def test_compare_exits_non_zero_on_a_regression(tmp_path: Path) -> None:
    from deploycheck.baseline.store import BaselineStore

    old, new = BaselineStore(tmp_path / "old"), BaselineStore(tmp_path / "new")
    for store, accuracy in ((old, 0.95), (new, 0.95)):
        store.write({"model": "m", "format": "onnx", "accuracy": {"value": accuracy}, "size": {"bytes": 100}})
    same = subprocess.run([*EXE, "compare", str(old.root), str(new.root)], capture_output=True, text=True)
    assert same.returncode == 0, same.stdout + same.stderr
    assert "0 of 1 regressed" in same.stdout

    new.write({"model": "m", "format": "onnx", "accuracy": {"value": 0.90}, "size": {"bytes": 100}})
    new.write({"model": "m", "format": "eager", "accuracy": {"value": 0.95}})
    worse = subprocess.run([*EXE, "compare", str(old.root), str(new.root)], capture_output=True, text=True)
    assert worse.returncode == 1
    for expected in ("m/onnx against its baseline", "accuracy  95.00%", "90.00%", "-5.00 pt", "REGRESSED",
                     "only in NEW: m/eager", "1 of 1 regressed"):
        assert expected in worse.stdout, worse.stdout
    loose = subprocess.run([*EXE, "compare", str(old.root), str(new.root), "--rule", "accuracy_drop=0.1"],
                           capture_output=True, text=True)
    assert loose.returncode == 0, loose.stdout

    (tmp_path / "empty").mkdir()
    other = BaselineStore(tmp_path / "other")
    other.write({"model": "x", "format": "onnx", "accuracy": {"value": 0.95}})
    for wrong, hint in (((tmp_path / "empty", new.root), "(is the path right?)"), ((other.root, new.root), "")):
        nothing = subprocess.run([*EXE, "compare", *map(str, wrong)], capture_output=True, text=True)
        assert nothing.returncode == 2, "a wrong path in a CI script must not read as a pass (it exited 0)"
        assert f"nothing in common to compare: {wrong[0]} holds" in nothing.stderr and hint in nothing.stderr

    (new.path("m", "onnx")).write_text("{")
    broken = subprocess.run([*EXE, "compare", str(old.root), str(new.root)], capture_output=True, text=True)
    assert broken.returncode == 2 and f"{new.path('m', 'onnx')}: not valid JSON" in broken.stderr


def test_alerts_writes_prometheus_rules_that_promtool_accepts(tmp_path: Path) -> None:
    import shutil

    from deploycheck.baseline.store import BaselineStore

    store = BaselineStore(tmp_path / "baselines")
    profile = {"image": {"edges": [0.0, 0.5], "fractions": [0.5, 0.3, 0.2]}}
    store.write({"model": "digits_cnn", "format": "onnx", "accuracy": {"value": 0.99, "input_profile": profile},
                 "latency": {"1": {"p95_ms": 0.05}, "32": {"p95_ms": 0.5}}})
    store.write({"model": "digits_cnn", "format": "eager", "accuracy": {"value": 0.99}})
    run = subprocess.run([*EXE, "alerts", "--baselines", str(store.root)], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    rules = run.stdout
    assert rules.count("- alert:") == 5 and "DeploycheckInputDrift" in rules, rules
    assert 'format: "onnx"' in rules
    assert '> 1.5 * max(deploycheck_latency_reference_seconds{model=\\"digits_cnn\\",format=\\"onnx\\"})' in rules, \
        "latency is held to what the server measured for itself, not the in-process release figure"
    assert 'deploycheck_window_accuracy{model=\\"digits_cnn\\",format=\\"onnx\\"} < 0.97' in rules, \
        "the series of the format whose baseline set the threshold"
    missing = subprocess.run([*EXE, "alerts", "--baselines", str(tmp_path)], capture_output=True, text=True)
    assert missing.returncode == 2 and "no baselines found" in missing.stderr
    if shutil.which("promtool") is None:
        pytest.skip("promtool (Debian package prometheus) is not installed")
    (tmp_path / "rules.yml").write_text(rules)
    check = subprocess.run(["promtool", "check", "rules", str(tmp_path / "rules.yml")], capture_output=True,
                           text=True)
    assert check.returncode == 0 and "SUCCESS: 5 rules found" in check.stdout, check.stdout + check.stderr
