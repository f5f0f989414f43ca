"""The generative gate as users run it in pytest: `@deploycheck.generative_model` and `assert_generation` through
real `pytester` runs, a missing baseline failing visibly, `--deploycheck-update` writing it from the controller
under pytest-xdist, the generation table in the summary and the JSON report, and a quality regression failing."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

pytest.importorskip("transformers")
from models import llama_decoder, prompts

from deploycheck.generation.artifact import SIDECAR
from deploycheck.generation.gate import TIMING_ROUNDS
from deploycheck.generation.spec import GenerativeSpec

pytestmark = pytest.mark.slow

CONFTEST = '''
import sys

import deploycheck

sys.path.insert(0, {tests!r})
from models import llama_decoder, prompts


@deploycheck.generative_model
def llama_tiny():
    return deploycheck.GenerativeSpec("llama_tiny", llama_decoder(), prompts(), new_tokens=6, batch_sizes=(2,),
                                      formats=("eager", "onnx", "onnx_int8_weight"))
'''

TESTS = '''
def test_generation(generative, deploycheck):
    deploycheck.assert_generation(generative)
'''


def test_generation_lifecycle(pytester: pytest.Pytester, run_in_process, tmp_path: Path,
                              shared_decoder_exports) -> None:
    """The fp32 ONNX export is restored into the artifacts directory, as a CI cache step restores it (the export
    cache finds it); the gate exports the int8 form itself."""
    pytester.makeconftest(CONFTEST.format(tests=str(Path(__file__).parent)))
    pytester.makepyfile(test_decoder=TESTS)
    spec = GenerativeSpec("llama_tiny", llama_decoder(), prompts(), new_tokens=6, batch_sizes=(2,))
    restored = tmp_path / "artifacts" / "generative" / "llama_tiny" / "onnx"
    shutil.copytree(shared_decoder_exports(spec, ("onnx",))["onnx"], restored)
    restored_at = (restored / SIDECAR).stat().st_mtime_ns
    common = ["-p", "no:cacheprovider", f"--deploycheck-artifacts={tmp_path / 'artifacts'}",
              f"--deploycheck-accepted={tmp_path / 'accepted'}"]
    baseline = pytester.path / "baselines" / "llama_tiny" / "generative.json"

    missing = run_in_process(*common)
    missing.assert_outcomes(failed=1)
    assert (restored / SIDECAR).stat().st_mtime_ns == restored_at, "the restored export is reused, not redone"
    missing.stdout.fnmatch_lines([f"*llama_tiny: no generation baseline at {baseline}; record it with `pytest "
                                  "--deploycheck-update-new`*"])

    update = pytester.runpytest_subprocess(*common, "-n", "2", "--deploycheck-update")
    update.assert_outcomes(passed=1)
    update.stdout.fnmatch_lines(["*generative decoders against eager*", "*llama_tiny*onnx_int8_weight*2*ok",
                                 "*best format for llama_tiny at batch 2:*",
                                 f"*generation baseline written to {baseline}", "*3 of 3 model x format(s) passed"])
    stored = json.loads(baseline.read_text())
    assert {(row["format"], row["batch_size"]) for row in stored["rows"]} == {
        ("eager", 2), ("onnx", 2), ("onnx_int8_weight", 2)}
    assert all(len(row["rounds"]["tpot_ms"]) == TIMING_ROUNDS for row in stored["rows"])
    assert sorted(stored["accepted_artifacts"]) == ["onnx", "onnx_int8_weight"], "speed is judged beside these"
    assert all((tmp_path / "accepted" / digest).is_dir() for digest in stored["accepted_artifacts"].values())
    unchanged = run_in_process(*common)  # the same model against its own baseline: no false alarm
    unchanged.assert_outcomes(passed=1)

    for row in stored["rows"]:  # a baseline whose int8 weights were ten times closer to eager's
        if row["format"] == "onnx_int8_weight":
            row["mean_kl"] /= 10
    baseline.write_text(json.dumps(stored))
    report = tmp_path / "report.json"
    regressed = run_in_process(*common, f"--deploycheck-report={report}")
    regressed.assert_outcomes(failed=1)
    regressed.stdout.fnmatch_lines(["*llama_tiny failed the generative gate:",
                                    "*llama_tiny/onnx_int8_weight at batch 2: mean KL divergence from eager * nats, "
                                    "baseline * (at most *)", "*pytest --deploycheck-update*"])
    results = {r["format"]: r for r in json.loads(report.read_text())["results"] if r["kind"] == "generative"}
    assert sorted(results) == ["eager", "onnx", "onnx_int8_weight"]
    int8 = results["onnx_int8_weight"]
    failing = ("FAIL", "REGRESSED", "missing")  # a speed check may be inconclusive on a busy machine: said, not failed
    assert [(c["metric"], c.get("against")) for c in int8["checks"] if c["status"] in failing] == [
        ("mean_kl", "baseline")], "every format passed its own checks: the baseline is what failed"
    assert int8["status"] == "FAIL" and results["onnx"]["status"] in ("ok", "inconclusive")
    for name in ("onnx", "onnx_int8_weight"):  # timed beside the accepted artifact, its interval over the rounds
        speed = next(c for c in results[name]["checks"]
                     if c["metric"] == "itl_p50_ms" and c.get("against") == "accepted")
        assert speed["limit"] == 1.25 and speed["interval"][0] <= speed["value"] <= speed["interval"][1]
    regressed.stdout.fnmatch_lines(["deploycheck: 1 of 3 model x format(s) FAILED (llama_tiny/onnx_int8_weight); 1 "
                                    "fell behind its baseline"])
