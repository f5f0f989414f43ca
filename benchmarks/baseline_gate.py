"""Error rates of the latency baseline gate on this machine (run on demand; prints, asserts nothing).

A baseline is recorded for an MLP (ONNX, 4 hidden 512-wide layers) through the same code the plugin runs
(`Gate.bench` with baselines, then `write_baselines`). Then, alternately, the unchanged model and a variant with
a fifth hidden layer (about 25% more multiply-adds) are held to that baseline, each trial in a fresh process, as
CI would run them. Printed per mode: how often the unchanged model passed, was inconclusive or failed (a false
alarm), and how often the slower one failed, was inconclusive or passed (a missed regression), with the p50
verdict and change of every trial.

Modes of the gate:
- "stored": the stored figures only (no accepted artifact to be had, as on a fresh CI clone without a cache);
- "side-by-side": the default when the accepted-artifact store is available (`--deploycheck-update` put the
  artifact there): old and new timed interleaved in the same process;
- "against": `--deploycheck-against REF`: the base model exported again in the same job, then side by side.

`--load N` keeps N busy processes (a one-thread numpy matrix-product loop each, real work) running during the
trials, as CI neighbours on a shared runner would.

    python benchmarks/baseline_gate.py [--trials 20] [--bench-time 1.0] [--mode stored|side-by-side|against|all]
                                       [--load N]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

HIDDEN = 4
WIDTH = 512
BUSY = "import numpy as np\na = np.random.rand(300, 300)\nwhile True:\n    a = np.tanh(a @ a)\n"
MODES = ("stored", "side-by-side", "against")


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


def trial(variant: str, workdir: Path, bench_time: float, record: bool, mode: str) -> dict[str, object]:
    """One gate run in this process: the latency rules against the baseline (or recording it)."""
    from deploycheck.accepted import AcceptedStore
    from deploycheck.baseline.store import BaselineStore
    from deploycheck.baseline.update import write_baselines
    from deploycheck.exporting import export
    from deploycheck.gate import BaselineCheck, Gate

    model_spec = spec(1 if variant == "slow" else 0)
    artifact = export(model_spec, "onnx", workdir / "artifacts" / variant)
    accepted = AcceptedStore(workdir / "accepted") if mode == "side-by-side" else None
    against = None
    if mode == "against" and not record:
        base = tempfile.mkdtemp(prefix="against-", dir=workdir)
        export(spec(0), "onnx", Path(base) / "mlp" / "onnx")
        against = (Path(base), "base")
    rows: list[dict[str, object]] = []
    store = BaselineStore(workdir / "baselines")
    gate = Gate(rows.append, bench_time_s=bench_time,
                baselines=BaselineCheck(store, "update" if record else "compare", accepted=accepted,
                                        against=against))
    try:
        gate.bench(artifact)
        failed, message = False, ""
    except AssertionError as exc:
        failed, message = True, str(exc)
    if record:
        merged: dict[str, object] = {}
        for row in rows:
            merged.update(row)
        write_baselines(store.root, [merged], accepted=AcceptedStore(workdir / "accepted"))
    checks = [r["baseline"]["latency"] for r in rows if "baseline" in r]
    findings = checks[-1]["findings"] if checks else []
    return {"failed": failed, "findings": findings, "message": message}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--bench-time", type=float, default=1.0)
    parser.add_argument("--mode", choices=[*MODES, "all"], default="all")
    parser.add_argument("--load", type=int, default=0, help="busy processes to run during the trials")
    parser.add_argument("--trial", choices=["base", "slow"], help=argparse.SUPPRESS)
    parser.add_argument("--record", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--trial-mode", choices=MODES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.trial:
        print(json.dumps(trial(args.trial, args.workdir, args.bench_time, args.record, args.trial_mode)))
        return
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    load = [subprocess.Popen([sys.executable, "-c", BUSY], env=env) for _ in range(args.load)]
    try:
        for mode in MODES if args.mode == "all" else (args.mode,):
            error_rates(mode, args.trials, args.bench_time, args.load)
    finally:
        for process in load:
            process.kill()


def p50_verdict(outcome: dict[str, object]) -> tuple[str, str]:
    """The p50 finding's status and change (the slowed statistic), "failed" when the trial failed on it."""
    p50 = next(f for f in outcome["findings"] if f["metric"].startswith("p50"))  # type: ignore[union-attr]
    return str(p50["status"]), str(p50["change"])


def error_rates(mode: str, trials: int, bench_time: float, load: int) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="deploycheck-gate-"))

    def run(variant: str, record: bool = False) -> dict[str, object]:
        command = [sys.executable, __file__, "--trial", variant, "--workdir", str(workdir),
                   "--bench-time", str(bench_time), "--trial-mode", mode] + (["--record"] if record else [])
        done = subprocess.run(command, capture_output=True, text=True, check=True)
        return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]

    run("base", record=True)
    print(f"\n== mode {mode}, {load} busy process(es): baseline recorded under {workdir / 'baselines'}", flush=True)
    outcomes: dict[str, list[dict[str, object]]] = {"base": [], "slow": []}
    for index in range(trials):
        for variant in ("base", "slow") if index % 2 == 0 else ("slow", "base"):
            outcome = run(variant)
            outcomes[variant].append(outcome)
            status, change = p50_verdict(outcome)
            others = [f"{f['metric']} {f['status']}" for f in outcome["findings"]  # type: ignore[union-attr]
                      if f["status"] not in ("ok", "reported") and not f["metric"].startswith("p50")]
            print(f"trial {index + 1:2d} {variant:4s}: {'FAIL' if outcome['failed'] else 'pass'}; p50 {status} "
                  f"{change}" + (f"; also {', '.join(others)}" if others else ""), flush=True)

    def count(variant: str) -> tuple[int, int, int]:
        failed = sum(bool(o["failed"]) for o in outcomes[variant])
        inconclusive = sum(not o["failed"] and any(f["status"] == "inconclusive" for f in o["findings"])  # type: ignore[union-attr]
                           for o in outcomes[variant])
        return trials - failed - inconclusive, inconclusive, failed

    passed, unsure, failed = count("base")
    slow_ok = sum(p50_verdict(o)[0] == "ok" for o in outcomes["slow"])
    slow_pass, slow_unsure, slow_failed = count("slow")
    print(f"mode {mode}, load {load}: unchanged model: {passed} passed, {unsure} inconclusive, {failed} failed "
          f"(false alarms) of {trials}; 25% more compute: {slow_failed} failed, {slow_unsure} inconclusive, "
          f"{slow_pass} passed of {trials}; p50 'ok' on the slower model: {slow_ok}", flush=True)


if __name__ == "__main__":
    main()
