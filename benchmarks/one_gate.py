"""A project of one single-pass model and one decoder gated as a user gates it, against its own stored baselines,
`--runs` times: each run's speed verdicts (the single-pass latency findings and the decoder's median inter-token
latency beside its accepted artifact), its exit status, and at the end the change points the history found in
the decoder's figures. An unchanged project must end with no speed failure (pass or inconclusive) and no change
point, also on a busy machine (`python ../shared/tools/busy.py 2 &` first).

    python benchmarks/one_gate.py [--runs 10] [--workers 2]
"""

from __future__ import annotations

import argparse
import collections
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TESTS = Path(__file__).resolve().parent.parent / "tests"
CONFTEST = f'''
import sys

import torch
import deploycheck

sys.path.insert(0, {str(TESTS)!r})
from models import llama_decoder, prompts


@deploycheck.model
def tiny():
    torch.manual_seed(0)
    x = torch.randn(256, 32)
    model = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10)).eval()
    return deploycheck.ModelSpec(name="tiny", model=model, example_inputs=x[:8], formats=["eager", "onnx"])


@deploycheck.generative_model
def llama_tiny():
    return deploycheck.GenerativeSpec("llama_tiny", llama_decoder(), prompts(), new_tokens=8, batch_sizes=(2,),
                                      formats=("eager", "onnx", "onnx_int8_weight"))
'''
TESTS_FILE = '''
def test_speed(artifact, deploycheck):
    deploycheck.bench(artifact, batch_sizes=(1, 8))


def test_generation(generative, deploycheck):
    deploycheck.assert_generation(generative)
'''


def run(project: Path, *options: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *options], cwd=project,
                          capture_output=True, text=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--workers", default="2")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        project = Path(tmp)
        (project / "conftest.py").write_text(CONFTEST)
        (project / "test_gate.py").write_text(TESTS_FILE)
        common = ["-n", args.workers, f"--deploycheck-artifacts={project / 'artifacts'}"]
        started = time.perf_counter()
        update = run(project, *common, "--deploycheck-update")
        if update.returncode != 0:
            raise SystemExit(f"the update failed:\n{update.stdout[-4000:]}")
        print(f"baselines written in {time.perf_counter() - started:.0f} s")
        print(f"{'run':>3}  {'exit':>4}  {'s':>5}  speed verdicts (model/format metric: status)")
        totals: collections.Counter[str] = collections.Counter()
        for index in range(args.runs):
            report = project / f"run{index}.json"
            started = time.perf_counter()
            done = run(project, *common, f"--deploycheck-report={report}")
            verdicts = []
            for result in json.loads(report.read_text())["results"]:
                for check in result["checks"]:
                    timed = (check.get("against") == "accepted" and check["metric"] == "itl_p50_ms") or (
                        check.get("against") == "baseline" and check.get("batch_size") is not None)
                    if timed and check["status"] != "reported":
                        verdicts.append(f"{result['model']}/{result['format']} {check['metric']}: {check['status']}")
                        totals[check["status"]] += 1
            shown = ", ".join(v for v in verdicts if not v.endswith(": ok")) or f"all {len(verdicts)} ok"
            print(f"{index + 1:>3}  {done.returncode:>4}  {time.perf_counter() - started:5.0f}  {shown}")
        print(f"speed verdicts over {args.runs} runs: {dict(totals)}")
        history = subprocess.run([sys.executable, "-m", "deploycheck.cli", "history", "--store",
                                  str(project / ".deploycheck" / "history.sqlite"), "--model", "llama_tiny"],
                                 capture_output=True, text=True)
        print(history.stdout[-3000:])


if __name__ == "__main__":
    main()
