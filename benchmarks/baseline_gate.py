"""Error rates of the latency baseline gate on this machine (run on demand; prints, asserts nothing).

A baseline is recorded for an MLP (ONNX, 4 hidden 512-wide layers) through the same code the plugin runs
(`Gate.bench` with baselines, then `write_baselines`). Then, alternately, the unchanged model and a variant with
a fifth hidden layer (about 25% more multiply-adds) are held to that baseline, each trial in a fresh process, as
CI would run them. Printed: how often each fails the latency rules, and the measured p50 change per trial.

Two modes of the gate: "stored" judges against the stored figures, normalised by the reference workload;
"side-by-side" keeps the baseline's artifact (`--deploycheck-keep-baseline-artifacts`) and times old and new
interleaved in the same run.

`--busy` keeps a two-thread numpy matrix product running the whole time, as another pytest-xdist worker or a
CI neighbour in the same machine would: the scheduler then stalls the timed calls now and then.

    python benchmarks/baseline_gate.py [--trials 20] [--bench-time 1.0] [--mode stored|side-by-side|both] [--busy]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

HIDDEN = 4
WIDTH = 512
BUSY = "import numpy as np\na = np.random.rand(1500, 1500)\nwhile True:\n    a @ a\n"


def spec(extra_layers: int) -> object:
    import torch

    import deploycheck

    def build() -> torch.nn.Module:
        torch.manual_seed(0)
        layers: list[torch.nn.Module] = [torch.nn.Linear(64, WIDTH), torch.nn.ReLU()]
        for _ in range(HIDDEN + extra_layers):
            layers += [torch.nn.Linear(WIDTH, WIDTH), torch.nn.ReLU()]
        layers.append(torch.nn.Linear(WIDTH, 10))
        return torch.nn.Sequential(*layers)

    torch.manual_seed(1)
    return deploycheck.ModelSpec(name="mlp", model=build(), example_inputs=torch.randn(8, 64), formats=["onnx"])


def trial(variant: str, workdir: Path, bench_time: float, record: bool, keep: bool) -> dict[str, object]:
    """One gate run in this process: the latency rules against the stored baseline (or recording it)."""
    from deploycheck.baseline import BaselineStore
    from deploycheck.formats import export
    from deploycheck.gate import BaselineCheck, Gate, write_baselines

    model_spec = spec(1 if variant == "slow" else 0)
    artifact = export(model_spec, "onnx", workdir / "artifacts" / variant)
    rows: list[dict[str, object]] = []
    store = BaselineStore(workdir / "baselines")
    gate = Gate(rows.append, bench_time_s=bench_time,
                baselines=BaselineCheck(store, "update" if record else "compare"))
    try:
        gate.bench(artifact)
        failed, message = False, ""
    except AssertionError as exc:
        failed, message = True, str(exc)
    if record:
        merged: dict[str, object] = {}
        for row in rows:
            merged.update(row)
        write_baselines(store.root, [merged], keep_artifacts=keep)
    checks = [r["baseline"]["latency"] for r in rows if "baseline" in r]
    findings = checks[-1]["findings"] if checks else []
    return {"failed": failed, "findings": findings, "message": message}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--bench-time", type=float, default=1.0)
    parser.add_argument("--mode", choices=["stored", "side-by-side", "both"], default="both")
    parser.add_argument("--busy", action="store_true", help="load the cores with a numpy matrix product")
    parser.add_argument("--keep", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--trial", choices=["base", "slow"], help=argparse.SUPPRESS)
    parser.add_argument("--record", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.trial:
        print(json.dumps(trial(args.trial, args.workdir, args.bench_time, args.record, args.keep)))
        return
    load = subprocess.Popen([sys.executable, "-c", BUSY]) if args.busy else None
    try:
        for mode in ("stored", "side-by-side") if args.mode == "both" else (args.mode,):
            error_rates(mode, args.trials, args.bench_time)
    finally:
        if load is not None:
            load.kill()



def error_rates(mode: str, trials: int, bench_time: float) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="deploycheck-gate-"))

    def run(variant: str, record: bool = False) -> dict[str, object]:
        command = [sys.executable, __file__, "--trial", variant, "--workdir", str(workdir),
                   "--bench-time", str(bench_time)] + (["--record"] if record else [])
        if record and mode == "side-by-side":
            command.append("--keep")
        done = subprocess.run(command, capture_output=True, text=True, check=True)
        return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]

    run("base", record=True)
    print(f"\n== mode {mode}: baseline recorded under {workdir / 'baselines'}")
    outcomes: dict[str, list[dict[str, object]]] = {"base": [], "slow": []}
    for index in range(trials):
        for variant in ("base", "slow") if index % 2 == 0 else ("slow", "base"):
            outcome = run(variant)
            outcomes[variant].append(outcome)
            failing = [f"{f['metric']} {f['change']}" for f in outcome["findings"]  # type: ignore[union-attr]
                       if f["status"] != "ok"]
            p50 = next(f for f in outcome["findings"] if f["metric"].startswith("p50"))  # type: ignore[union-attr]
            print(f"trial {index + 1:2d} {variant:4s}: {'FAIL' if outcome['failed'] else 'pass'}; "
                  f"p50 change {p50['change']}" + (f"; failing: {', '.join(failing)}" if failing else ""))
    unchanged_passed = sum(not o["failed"] for o in outcomes["base"])
    slow_failed = sum(bool(o["failed"]) for o in outcomes["slow"])
    print(f"mode {mode}: unchanged model passed {unchanged_passed} of {trials} (false alarms: "
          f"{trials - unchanged_passed}); model with ~25% more compute failed {slow_failed} of {trials} "
          f"(missed regressions: {trials - slow_failed})")


if __name__ == "__main__":
    main()
