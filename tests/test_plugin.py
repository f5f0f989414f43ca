"""The plugin as users run it: real pytest runs through `pytester`, in-process and with pytest-xdist."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import pytest
from models import installed_formats

from deploycheck.formats import default_formats
from deploycheck.machine import share_cores

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]

CONFTEST = '''
import torch
import deploycheck


class Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = torch.nn.Linear(12, 24)
        self.fc2 = torch.nn.Linear(24, 3)
        self.activation = lambda x: torch.relu(x)

    def forward(self, x):
        return self.fc2(self.activation(self.fc1(x)))


@deploycheck.model
def tiny():
    torch.manual_seed(0)
    x = torch.randn(256, 12)
    model = Tiny().eval()
    labels = model(x).argmax(1)
    return deploycheck.ModelSpec(
        name="tiny", model=model, factory=Tiny, example_inputs=x[:8],
        eval_data=[(x[i:i + 64], labels[i:i + 64]) for i in range(0, 256, 64)],
        format_options={"torchscript": {"method": "script"}},  # scripting a lambda attribute fails
        tolerances=TOLERANCES,
    )
'''

TEST = '''
def test_parity(artifact, deploycheck):
    deploycheck.assert_parity(artifact)
'''


def make_project(pytester: pytest.Pytester, tolerances: str = "None") -> None:
    """The tiny project, with baselines off (their lifecycle is tested in test_baseline_plugin.py)."""
    pytester.makeconftest(CONFTEST.replace("TOLERANCES", tolerances))
    pytester.makepyfile(test_gate=TEST)
    pytester.makeini("[pytest]\ndeploycheck_no_baselines = true\n")


def test_every_format_is_a_test_and_a_failing_export_fails_only_its_own(pytester: pytest.Pytester, run_in_process,
                                                                      tmp_path: Path) -> None:
    make_project(pytester)
    result = run_in_process("-v", "-p", "no:cacheprovider", f"--deploycheck-artifacts={tmp_path}")
    missing = len(default_formats()) - len(installed_formats())  # an extra not installed: its formats skip
    result.assert_outcomes(passed=len(installed_formats()) - 1, errors=1, skipped=missing)
    result.stdout.fnmatch_lines([
        "*test_parity?tiny/eager? PASSED*",
        "*test_parity?tiny/torchscript? ERROR*",
        "*test_parity?tiny/onnx_int8_static? PASSED*",
        "*tiny/torchscript: export failed: *",
        "*= deploycheck =*",
        "model*format*size*max abs err*status*",
        "tiny*onnx_int8_dynamic*ok*",
    ])
    assert "tiny  torchscript" not in result.stdout.str(), "a format that never ran has no row"


def test_parity_failure_shows_the_per_output_table(pytester: pytest.Pytester, run_in_process, tmp_path: Path) -> None:
    make_project(pytester, tolerances='{"onnx_int8_dynamic": {"atol": 1e-9, "rtol": 1e-9}}')
    result = run_in_process("--deploycheck-formats=onnx,onnx_int8_dynamic",
                            f"--deploycheck-artifacts={tmp_path}")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines([
        "*parity of tiny/onnx_int8_dynamic against eager*",
        "*output*shape*max abs*worst (index: expected -> obtained)*tolerance*status*",
        "*output @ batch 64*atol=1e-09 rtol=1e-09*FAIL*",
        "*elements exceed both atol=1e-09*",
        "*ModelSpec(tolerances={'onnx_int8_dynamic': Tolerance(...)})*",
    ])


def test_formats_option_and_ini_key_and_json_report(pytester: pytest.Pytester, run_in_process, tmp_path: Path) -> None:
    make_project(pytester)
    pytester.makeini(f"[pytest]\ndeploycheck_formats = onnx\ndeploycheck_artifacts = {tmp_path}\n"
                     "deploycheck_no_baselines = true\n")
    report = tmp_path / "report.json"
    result = run_in_process(f"--deploycheck-report={report}")
    result.assert_outcomes(passed=1)
    results = json.loads(report.read_text())["results"]
    assert [(r["model"], r["format"], r["kind"], r["status"]) for r in results] == [
        ("tiny", "onnx", "single-pass", "ok")]
    parity = results[0]["measurements"]["parity"]
    assert parity["passed"] is True and parity["max_abs"] < 1e-5
    assert results[0]["checks"] == [{"metric": "parity.max_abs", "status": "ok", "value": parity["max_abs"],
                                     "against": "eager"}]
    result = run_in_process("--deploycheck-formats=onnx,nope")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "unknown format(s) ['nope']; valid: eager, state_dict" in result.stderr.str()


def test_a_run_without_xdist_does_not_warn_of_the_xdist_group_mark(pytester: pytest.Pytester, run_in_process,
                                                                    tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Every run without pytest-xdist printed `PytestUnknownMarkWarning: Unknown pytest.mark.xdist_group`."""
    make_project(pytester)
    monkeypatch.setenv("PYTEST_PLUGINS", "deploycheck.plugin")  # deploycheck alone: no xdist to register the mark
    result = run_in_process("--deploycheck-formats=eager", f"--deploycheck-artifacts={tmp_path}",
                            "-W", "error::pytest.PytestUnknownMarkWarning")
    result.assert_outcomes(passed=1)
    assert "PytestUnknownMarkWarning" not in result.stdout.str() + result.stderr.str()


def test_xdist_workers_share_the_cores_when_no_thread_count_is_set(pytester: pytest.Pytester) -> None:
    """Without OMP_NUM_THREADS, each of two workers takes half the usable cores, at least one, in torch and in the
    variable every runtime's untimed load follows (so their sessions do not each take every core)."""
    pytester.makepyfile(test_threads='''
import os

import pytest
import torch


@pytest.mark.parametrize("copy", [0, 1])  # two tests: one for each worker, as xdist usually hands them out
def test_threads(deploycheck, copy):
    share = max(1, len(os.sched_getaffinity(0)) // 2)
    assert (os.environ["OMP_NUM_THREADS"], torch.get_num_threads()) == (str(share), share)
''')
    pytester._monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    pytester.runpytest_subprocess("-n", "2", "-p", "no:cacheprovider").assert_outcomes(passed=2)


def test_a_thread_count_the_caller_set_is_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert share_cores(2) is None and os.environ["OMP_NUM_THREADS"] == "3"
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert share_cores(1) is None and "OMP_NUM_THREADS" not in os.environ, "one process: its runtimes choose"


def test_the_model_is_also_a_fixture(pytester: pytest.Pytester, run_in_process) -> None:
    make_project(pytester)
    pytester.makepyfile(test_fixture="def test_spec(tiny):\n    assert tiny.name == 'tiny' and tiny.batch_size == 8\n")
    run_in_process("test_fixture.py").assert_outcomes(passed=1)


def test_digits_example_project(pytester: pytest.Pytester, tmp_path_factory, cache_env,
                                digits_gate_artifacts: Path) -> None:
    """The example as CI runs it, with xdist workers (the single-process gate is what every other plugin test
    runs), its exports restored from a cache as a CI cache step does."""
    shutil.copytree(ROOT / "examples" / "digits", pytester.path, dirs_exist_ok=True)
    artifacts = digits_gate_artifacts
    for key, value in cache_env.items():
        pytester._monkeypatch.setenv(key, value)
    baselines = tmp_path_factory.mktemp("digits-baselines")
    benchmark_json = baselines / "benchmark.json"
    result = pytester.runpytest_subprocess("-n", "2", f"--deploycheck-artifacts={artifacts}",
                                           "--deploycheck-bench-time=0.1", "--deploycheck-update",
                                           f"--deploycheck-baselines={baselines}", "--deploycheck-models=digits_cnn",
                                           f"--deploycheck-benchmark-json={benchmark_json}")
    formats, missing = len(installed_formats()), len(default_formats()) - len(installed_formats())
    result.assert_outcomes(passed=4 * formats, skipped=formats + 5 * missing)  # 5 tests a format
    result.stdout.fnmatch_lines(["*= deploycheck =*",
                                 "model*format*size*max abs err*agree (eval)*accuracy*drop*p50 ms*x eager*status",
                                 "digits_cnn*eager*ok", "digits_cnn*torch_int8_dynamic*ok",
                                 "details:", "model*format*size/onnx*params*int8 weights*p99 ms*samples/s",
                                 f"deploycheck: {formats} baseline(s) written under*"])
    assert result.stdout.str().count("digits_cnn  ") == 2 * (formats + missing), \
        "each format (a skipped one too) in the main and the detail table"
    section = result.stdout.str().split("= deploycheck =")[1].split("deploycheck: ")[0].splitlines()
    assert max(len(line) for line in section[1:]) <= 120, "the summary tables fit 120 columns"
    stored = json.loads((baselines / "digits_cnn" / "onnx_int8_static.json").read_text())
    assert {"size", "parity", "accuracy", "latency", "speedup", "environment"} <= set(stored)
    assert set(stored["latency"]) == {"1", "8", "32"} and len(stored["latency"]["1"]["quantiles_ms"]) == 50
    compare = pytester.run(str(Path(sys.executable).parent / "pytest-benchmark"), "compare", str(benchmark_json))
    assert compare.ret == 0, "pytest-benchmark's own tooling reads the file"
    compare.stdout.fnmatch_lines([f"*benchmark 'digits_cnn': {3 * formats} tests*", "*digits_cnn/onnx?batch=1?*"])


def test_no_bench_skips_benchmarks(pytester: pytest.Pytester, run_in_process, cache_env,
                                   digits_gate_artifacts: Path) -> None:
    shutil.copytree(ROOT / "examples" / "digits", pytester.path, dirs_exist_ok=True)
    for key, value in cache_env.items():
        pytester._monkeypatch.setenv(key, value)
    artifacts = digits_gate_artifacts
    result = run_in_process("--deploycheck-no-bench", "--deploycheck-formats=onnx",
                            "--deploycheck-no-baselines", "--deploycheck-models=digits_cnn",
                            f"--deploycheck-artifacts={artifacts}", "-rs")
    result.assert_outcomes(passed=2, skipped=3)
    result.stdout.fnmatch_lines(["*benchmarks are off (--deploycheck-no-bench)*"])
    result.stdout.fnmatch_lines(["SKIPPED * tests/test_deploy.py:*: baselines are off: the size is held to no "
                                 "baseline", "SKIPPED * tests/test_deploy.py:*: digits_cnn has no original to compare "
                                 "with*"]), "each skip is reported at the test that called the check"


def test_quantized_artifact_from_the_search_passes_the_gate(pytester: pytest.Pytester, run_in_process,
                                                            tmp_path: Path, cache_env) -> None:
    """`deploycheck quantize` on a model built to quantize badly, then the written artifact through the plugin."""
    shutil.copy(ROOT / "tests" / "models.py", pytester.path / "models.py")
    out = tmp_path / "int8"
    quantize = pytester.run(sys.executable, "-m", "deploycheck.cli", "quantize", "models:outlier_spec",
                            "--max-accuracy-drop", "0.01", "--out", str(out), "--no-latency")
    assert quantize.ret == 0, quantize.stderr.str()
    quantize.stdout.fnmatch_lines(["*MinMax, per-channel*",
                                   "*<- chosen*", "*to gate this configuration*"])
    pytester.makepyfile(test_written=f"""
import deploycheck
from models import outlier_spec


def test_written_artifact(deploycheck):
    spec = outlier_spec()
    artifact = deploycheck_load(spec)
    deploycheck.assert_accuracy(artifact)


def test_plain_static_int8_fails(deploycheck, tmp_path):
    spec = outlier_spec()
    deploycheck.assert_accuracy(deploycheck_export(spec, tmp_path))


def deploycheck_load(spec):
    import deploycheck as dc
    return dc.load_artifact({str(out)!r}, spec=spec)


def deploycheck_export(spec, tmp_path):
    import deploycheck as dc
    return dc.export(spec, "onnx_int8_static", tmp_path / "plain")
""")
    result = run_in_process("-p", "no:cacheprovider", "--deploycheck-no-baselines")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*accuracy drop * exceeds the budget of 1.00%*", "*worst classes*",
                                 "*where the error comes from*", "*node_linear*relu*"])
