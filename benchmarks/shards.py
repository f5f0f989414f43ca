"""The digits example gated in one job, and split by model into 2 and 3 shards merged with `deploycheck report
merge`: the merged tables and verdict must be the single job's (timing is off, so every figure compared is
deterministic). Prints the three summaries' agreement and the time each configuration took.

    python benchmarks/shards.py [--workers 2]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODELS = ["digits_cnn", "digits_pruned_unstructured", "digits_pruned_channels", "digits_student"]
SPLITS = {1: [MODELS], 2: [MODELS[:2], MODELS[2:]], 3: [MODELS[:2], MODELS[2:3], MODELS[3:]]}
VOLATILE = ("artifact_path", "environment", "timing")  # of a result's measurements: where and when, not what


def gate(project: Path, models: list[str], report: Path, workers: str) -> None:
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", workers,
               "--deploycheck-no-bench", "--deploycheck-no-baselines", "--deploycheck-no-history",
               f"--deploycheck-models={','.join(models)}", f"--deploycheck-artifacts={project / 'artifacts'}",
               f"--deploycheck-report={report}"]
    done = subprocess.run(command, cwd=project, capture_output=True, text=True)
    if done.returncode not in (0, 1):
        raise SystemExit(f"pytest exited {done.returncode}:\n{done.stdout[-3000:]}{done.stderr[-3000:]}")


def merged(project: Path, reports: list[Path], name: str) -> tuple[str, list[dict]]:
    out = project / f"{name}.json"
    done = subprocess.run([sys.executable, "-m", "deploycheck.cli", "report", "merge", *map(str, reports),
                           "-o", str(out)], capture_output=True, text=True)
    if done.returncode not in (0, 1):
        raise SystemExit(f"report merge exited {done.returncode}: {done.stderr}")
    results = json.loads(out.read_text())["results"]
    return done.stdout, [{**result, "measurements": {k: v for k, v in result.get("measurements", {}).items()
                                                     if k not in VOLATILE}} for result in results]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workers", default="2")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        project = Path(tmp) / "digits"
        shutil.copytree(ROOT / "examples" / "digits", project)
        gate(project, MODELS, project / "warm.json", args.workers)  # exports once, so each split times the gate
        results = {}
        for count, shards in SPLITS.items():
            started = time.perf_counter()
            reports = []
            for index, models in enumerate(shards):
                reports.append(project / f"split{count}-shard{index}.json")
                gate(project, models, reports[-1], args.workers)
            results[count] = (*merged(project, reports, f"merged{count}"), time.perf_counter() - started)
        single_text, single_rows, _ = results[1]
        print(f"{'shards':>6}  {'rows':>4}  {'table and verdict':<20}  {'rows equal':<10}  wall s")
        for count, (text, rows, wall) in results.items():
            print(f"{count:>6}  {len(rows):>4}  {'identical' if text == single_text else 'DIFFERENT':<20}  "
                  f"{'yes' if rows == single_rows else 'NO':<10}  {wall:6.1f}")
        print("\nthe single job's merged summary:\n" + single_text)


if __name__ == "__main__":
    main()
