"""One gate, one result: a project with a single-pass model and a decoder whose KV cache is off by one position,
run as a user runs it (and on GitHub Actions, and split into two CI shards merged back): every output is made from
the one run document, so the decoder's failure is in the verdict line, the job summary, the annotations and every
report, and the merged shards say what the single job says."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest

pytest.importorskip("transformers")
from models import llama_decoder, prompts
from test_generation import PositionsOffByOne

from deploycheck.generation.artifact import stamp_cache_key
from deploycheck.generation.cache import Decode
from deploycheck.generation.formats import cache_key, export_decoder
from deploycheck.generation.spec import GenerativeSpec
from deploycheck.run_result import SCHEMA_PATH, RunResult

pytestmark = pytest.mark.slow

CONFTEST = '''
import sys

import torch
import deploycheck

sys.path.insert(0, {tests!r})
from models import llama_decoder, prompts


@deploycheck.model
def tiny():
    torch.manual_seed(0)
    x = torch.randn(128, 12)
    model = torch.nn.Sequential(torch.nn.Linear(12, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3)).eval()
    return deploycheck.ModelSpec(name="tiny", model=model, example_inputs=x[:8], formats=["eager", "onnx"])


@deploycheck.generative_model
def llama_tiny():
    return deploycheck.GenerativeSpec("llama_tiny", llama_decoder(), prompts(), new_tokens=6, batch_sizes=(2,),
                                      formats=("eager", "onnx"))
'''

TESTS = '''
def test_parity(artifact, deploycheck):
    deploycheck.assert_parity(artifact)


def test_generation(generative, deploycheck):
    deploycheck.assert_generation(generative)
'''


def _merge(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "deploycheck.cli", "report", "merge", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=120)


def _without_timings(text: str) -> list[list[str]]:
    """The words of each line, every number as `#`: two runs time the decoders differently, and nothing else
    may differ."""
    return [[re.sub(r"^[\d.e+-]+(%|x)?$", "#", word) for word in line.split()] for line in text.splitlines()]


def test_a_decoder_with_a_broken_cache_fails_every_output_of_the_run(
        pytester: pytest.Pytester, run_in_process, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The broken ONNX export sits where the plugin's export cache finds it (as a broken exporter would have left
    it), so the run gates that artifact."""
    pytester.makeconftest(CONFTEST.format(tests=str(Path(__file__).parent)))
    pytester.makepyfile(test_gate=TESTS)
    spec = GenerativeSpec("llama_tiny", llama_decoder(), prompts(), new_tokens=6, batch_sizes=(2,),
                          formats=("eager", "onnx"))
    artifacts = tmp_path / "artifacts"
    broken = export_decoder(spec, "onnx", artifacts / "generative" / "llama_tiny" / "onnx", decode=PositionsOffByOne)
    stamp_cache_key(broken, cache_key(spec, "onnx", Decode))
    summary = tmp_path / "step_summary.md"
    monkeypatch.setenv("GITHUB_ACTIONS", "true")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    common = ["-p", "no:cacheprovider", "--deploycheck-no-baselines", f"--deploycheck-artifacts={artifacts}",
              "--deploycheck-formats=eager,onnx"]
    reports = [f"--deploycheck-report={tmp_path / 'run.json'}", f"--deploycheck-markdown={tmp_path / 'run.md'}",
               f"--deploycheck-html={tmp_path / 'run.html'}"]

    result = run_in_process(*common, *reports)
    result.assert_outcomes(passed=2, failed=1)
    verdict = "deploycheck: 1 of 4 model x format(s) FAILED (llama_tiny/onnx)"
    result.stdout.fnmatch_lines(["*generative decoders against eager*", "*llama_tiny*onnx*2*wrong from step 1*FAIL",
                                 verdict])
    annotations = [line for line in result.stdout.lines if line.startswith("::error ")]
    assert annotations == [
        "::error title=deploycheck%3A llama_tiny/onnx failed::llama_tiny/onnx: cache_max_error at batch 2: "
        + annotations[0].split("cache_max_error at batch 2: ")[1]], annotations
    assert "(at most 0.001 of the largest logit) from step 1 FAIL." in annotations[0]
    step_summary = summary.read_text()
    assert step_summary.startswith("## deploycheck: FAILED\n") and "1 of 4 model x format(s) FAILED" in step_summary

    document = json.loads((tmp_path / "run.json").read_text())
    jsonschema.validate(document, json.loads(SCHEMA_PATH.read_text()))
    by_name = {(r["model"], r["format"]): r for r in document["results"]}
    assert [(name, r["kind"], r["status"]) for name, r in by_name.items()] == [
        (("llama_tiny", "eager"), "generative", "ok"), (("llama_tiny", "onnx"), "generative", "FAIL"),
        (("tiny", "eager"), "single-pass", "ok"), (("tiny", "onnx"), "single-pass", "ok")]
    cache = next(c for c in by_name[("llama_tiny", "onnx")]["checks"] if c["metric"] == "cache_max_error")
    assert cache["status"] == "FAIL" and cache["step"] == 1 and cache["value"] > cache["limit"]
    for written in ("run.md", "run.html"):
        text = (tmp_path / written).read_text()
        assert "Generative decoders" in text and "wrong from step 1" in text and "llama_tiny/onnx" in text, written

    # the same project as a CI matrix: the single-pass models in one shard, the decoder in the other
    monkeypatch.delenv("GITHUB_ACTIONS")
    for shard, selection in (("single_pass", "parity"), ("decoder", "generation")):
        run_in_process(*common, "-k", selection, f"--deploycheck-report={tmp_path / shard}.json")
    merged = _merge(str(tmp_path / "decoder.json"), str(tmp_path / "single_pass.json"), "-o",
                    str(tmp_path / "merged.json"), cwd=pytester.path)
    single = _merge(str(tmp_path / "run.json"), "-o", str(tmp_path / "again.json"), cwd=pytester.path)
    assert merged.returncode == single.returncode == 1, merged.stderr
    assert _without_timings(merged.stdout) == _without_timings(single.stdout) and verdict in merged.stdout
    assert RunResult.from_dict(json.loads((tmp_path / "merged.json").read_text())).failed[0].name == \
        "llama_tiny/onnx"

    # --deploycheck-formats chooses the decoder's formats too; a format only decoders have is known
    run_in_process(*common[:-1], "--deploycheck-formats=eager", f"--deploycheck-report={tmp_path / 'eager.json'}") \
        .assert_outcomes(passed=2)
    eager_only = RunResult.from_dict(json.loads((tmp_path / "eager.json").read_text()))
    assert [result.name for result in eager_only.results] == ["llama_tiny/eager", "tiny/eager"]
    run_in_process(*common[:-1], "--deploycheck-formats=onnx_int8_weight").assert_outcomes(skipped=2)
