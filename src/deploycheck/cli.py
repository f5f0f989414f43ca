"""The `deploycheck` command. Each subcommand is a thin wrapper over the library functions."""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from deploycheck.errors import DeployCheckError
from deploycheck.init_project import init_project
from deploycheck.server.settings import ServeSettings


def load_spec_function(reference: str) -> Any:
    """Import `MODULE:FUNC` (the current directory is importable) and call it to get a `ModelSpec`."""
    from deploycheck.spec import ModelSpec

    module_name, _, function_name = reference.partition(":")
    if not module_name or not function_name:
        raise DeployCheckError(f"{reference!r} is not MODULE:FUNC (e.g. mypkg.models:tiny_cnn)")
    if "" not in sys.path:
        sys.path.insert(0, "")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise DeployCheckError(f"{reference}: cannot import {module_name!r} ({exc}); run from the directory that "
                               "holds it, or install it") from exc
    function = getattr(module, function_name, None)
    if not callable(function):
        raise DeployCheckError(f"{reference}: {module_name!r} has no function {function_name!r}")
    function = getattr(function, "_deploycheck_function", function)
    spec = function()
    if not isinstance(spec, ModelSpec):
        raise DeployCheckError(f"{reference} returned a {type(spec).__name__}, expected a deploycheck.ModelSpec")
    return spec


@contextlib.contextmanager
def _progress(text: str) -> Iterator[None]:
    """A line per step on a terminal (stderr), with its time when it ends; nothing when output is not a tty."""
    started = time.perf_counter()
    show = sys.stderr.isatty()
    if show:
        print(f"{text} ...", end="", file=sys.stderr, flush=True)
    try:
        yield
    finally:
        if show:
            print(f" {time.perf_counter() - started:.1f} s", file=sys.stderr, flush=True)


def _gate_rows(spec: Any, out_dir: Path, formats: list[str] | None, sign_key: str | None = None,
               bench_time_s: float | None = None) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """Export every format and run the gate's own checks on each through the `Gate` a pytest run uses: parity,
    accuracy (with eval data), and batch-1 latency of those that passed (with `bench_time_s`). Returns the rows
    of the run document, and per format what was done with its export ("exported", "cached") or why it failed."""
    from deploycheck.errors import FormatUnavailable
    from deploycheck.exporting import export
    from deploycheck.formats import get_format
    from deploycheck.gate import Gate
    from deploycheck.rows import Row, merge_payload
    from deploycheck.run_result import row_status

    rows: dict[str, dict[str, Any]] = {}

    def record(payload: Row) -> None:  # as the plugin gathers a row from its tests' reports
        merge_payload(rows.setdefault(payload["format"], {}), payload)

    gate = Gate(record, bench_time_s=bench_time_s or 1.0)
    exports: dict[str, str] = {}
    done: dict[str, Any] = {}
    for name in formats or spec.formats:
        row = rows.setdefault(name, {"model": spec.name, "format": name})
        fmt = get_format(name)
        with _progress(f"{spec.name}/{name}: exporting, then checking parity and accuracy"):
            try:
                base = done.get(fmt.base_format) if fmt.base_format else None
                artifact = done[name] = export(spec, name, out_dir / name, base=base, sign_key=sign_key)
            except FormatUnavailable as exc:
                row["skipped"] = str(exc)
                continue
            except DeployCheckError as exc:
                row["failed_tests"] = ["export"]
                exports[name] = str(exc)
                continue
            exports[name] = "cached" if artifact.reused else "exported"
            checks: list[Callable[[Any], Any]] = [gate.assert_parity,
                                                  *([gate.assert_accuracy] if spec.eval_data else [])]
            for check in checks:
                try:
                    check(artifact)
                except AssertionError:
                    rows[name].setdefault("failed_tests", []).append(check.__name__)
    if bench_time_s:
        with _progress("timing batch-1 latency of each format that passed"):
            for name, artifact in done.items():
                if row_status(rows[name]) == "ok":
                    gate.bench(artifact, batch_sizes=(1,))
    return list(rows.values()), exports


def _print_gate(rows: list[dict[str, Any]], exports: dict[str, str]) -> bool:
    """The summary a pytest run prints (the table, the best format, the verdict), what was exported and what
    reused, and why a format failed to export or was skipped; whether every format passed."""
    from deploycheck.report.summary import sort_rows, summary_lines, verdict
    from deploycheck.run_result import RunResult

    document = RunResult.from_rows(sort_rows(rows))
    print("\n".join(summary_lines(document)))
    for what in ("exported", "cached"):
        names = [name for name, done in exports.items() if done == what]
        if names:
            print(f"deploycheck: {what}: {', '.join(names)}")
    for result in document.results:
        if result.skipped:
            print(f"deploycheck: {result.name} skipped: {result.skipped}")
        elif exports.get(result.format) not in (None, "exported", "cached"):
            print(f"deploycheck: {result.name} export failed: {exports[result.format]}")
    print(verdict(document))
    return document.passed


def _demo_legend(budget: float | None) -> str:
    """How to read the demo's table: why an int8 row with a large max abs err is ok."""
    from deploycheck.tolerance import INT8_TOLERANCE

    return (f"""how to read it: each format is written to disk, loaded back and run on the inputs eager runs.
  fp32 formats must match eager element by element (max abs err within a float tolerance); int8 formats are
  judged by top-1 agreement with eager (at least {INT8_TOLERANCE.min_top1_agreement:.0%}) and SQNR (at least \
{INT8_TOLERANCE.min_sqnr_db:g} dB), as rounding moves every logit: a
  max abs err of several units is ok there. agree (eval): top-1 agreement with eager on the evaluation data;
  accuracy and drop: on held-out digits (at most {(budget or 0) * 100:g} points of drop); p50 ms: batch-1 latency, \
each format timed alone.""")


def cmd_demo(args: argparse.Namespace) -> int:
    from deploycheck.digits import cache_dir, digits_spec

    started = time.perf_counter()
    spec = digits_spec()
    out_dir = Path(args.out) if args.out else cache_dir() / "demo-artifacts"
    rows, exports = _gate_rows(spec, out_dir, None, bench_time_s=0.2)
    print(f"deploycheck demo: {spec.name} (a CNN on scikit-learn's digits), artifacts in {out_dir}\n")
    passed = _print_gate(rows, exports)
    print(f"\n{_demo_legend(spec.max_accuracy_drop)}\n\nwall time {time.perf_counter() - started:.1f} s\nnext: "
          "`deploycheck init` writes this gate into your project (conftest.py, tests/, baselines/), then `pytest`")
    return 0 if passed else 1


def cmd_export(args: argparse.Namespace) -> int:
    spec = load_spec_function(args.spec)
    formats = [f.strip() for f in args.formats.split(",")] if args.formats else None
    return 0 if _print_gate(*_gate_rows(spec, Path(args.out), formats, args.sign_key)) else 1


def cmd_quantize(args: argparse.Namespace) -> int:
    from deploycheck.accuracy import check_accuracy
    from deploycheck.quantize import search_quantization

    spec = load_spec_function(args.spec)
    result = search_quantization(spec, args.max_accuracy_drop, Path(args.out), not args.no_latency,
                                 args.min_int8_fraction, format_name=args.format)
    print(result)
    assert result.artifact is not None
    print()
    print(check_accuracy(result.artifact, spec))
    print(f"\n{result.how_to_gate(spec)}")
    return 0


def cmd_init(args: argparse.Namespace) -> int:
    """The gate's files in a new or existing project; nothing of the user's is overwritten (`init_project`)."""
    for line in init_project(Path(args.directory), force=args.force):
        print(line)
    print("next: `pytest --deploycheck-update` records the baselines (commit them), then `pytest` gates; replace "
          "MyModel, trained_model and labelled_batches with yours")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    """Hold NEW to OLD with the baseline rules; exit 1 on a regression, so CI scripts outside pytest can gate."""
    from deploycheck.baseline.compare import compare_sets
    from deploycheck.baseline.rules import command_line_rules
    from deploycheck.baseline.store import load_records
    from deploycheck.project_settings import pyproject_settings
    from deploycheck.table import format_table

    old, new = load_records(Path(args.old)), load_records(Path(args.new))
    settings = pyproject_settings(Path(args.project))
    layers = [(f"{Path(args.project) / 'pyproject.toml'} [tool.deploycheck.rules]", settings.get("rules"))]
    if args.rule:
        layers.append(("--rule", command_line_rules(args.rule)))
    comparisons = compare_sets(old, new, layers, str(args.old))
    if not comparisons:  # a wrong path in a CI script must not read as a pass
        raise DeployCheckError(f"nothing in common to compare: {args.old} holds {len(old)} model x format record(s), "
                               f"{args.new} {len(new)}" + ("" if old and new else " (is the path right?)"))
    for comparison in comparisons:
        if comparison.findings and (args.verbose or not comparison.passed or comparison.inconclusive):
            print(f"{comparison}\n")
    rows = [[c.model, c.format, c.short(), c.status] for c in comparisons]
    print(format_table(["model", "format", "vs old", "status"], rows))
    for label, only in (("only in OLD", sorted(set(old) - set(new))), ("only in NEW", sorted(set(new) - set(old)))):
        if only:
            print(f"{label}: {', '.join(f'{m}/{f}' for m, f in only)}")
    regressed = [c for c in comparisons if not c.passed]
    print(f"\n{len(regressed)} of {len(comparisons)} regressed")
    return 1 if regressed else 0


def cmd_history(args: argparse.Namespace) -> int:
    """The trend of every figure over the last runs, with change points and their commits; `--html` draws the
    whole history; `merge` joins stores."""
    from deploycheck.history.commands import merge_history, show_history, write_history_page

    if args.action == "merge":
        print(merge_history(args.sources, args.out))
        return 0
    if args.sources:
        raise DeployCheckError(f"history: unexpected arguments {args.sources} (did you mean `history merge`?)")
    if args.html:
        print(write_history_page(args.store, Path(args.html), args.model, args.format, args.last))
    else:
        print(show_history(args.store, args.model, args.format, args.last))
    return 0


def cmd_report_merge(args: argparse.Namespace) -> int:
    """Shards of a CI matrix into one report: the same tables and verdict as one job; exit 1 when it fails."""
    from deploycheck.shards import write_merged

    text, failed = write_merged([Path(path) for path in args.shards], Path(args.out),
                                Path(args.markdown) if args.markdown else None, Path(args.html) if args.html else None)
    print(text)
    return 1 if failed else 0


def cmd_bisect(args: argparse.Namespace) -> int:
    """The first commit between GOOD and BAD where the figure stepped; exit 0 when found, 2 when nothing stepped."""
    from deploycheck.bisect import Bisection

    root = Path(args.root).resolve()
    bisection = Bisection(root, root / ".pytest_cache" / "d" / "deploycheck-against", args.model, args.format,
                          args.metric, args.batch_size, args.time, args.min_change, report=print)
    print("\n".join(bisection.run(args.good, args.bad).conclusion()))  # the probes were reported as measured
    return 0


def cmd_alerts(args: argparse.Namespace) -> int:
    """Print Prometheus alerting rules for the models in a baselines directory (redirect to rules.yml)."""
    from deploycheck.prometheus import alerting_rules

    print(alerting_rules(Path(args.baselines), args.format, args.window, args.hold), end="")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from deploycheck.server.launcher import serve

    settings = ServeSettings.from_arguments(args)
    serve(settings, host=args.host, port=args.port, workers=args.workers, log_level=args.log_level)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="deploycheck", description="Gate a model's deployment formats.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    commands = parser.add_subparsers(dest="command", required=True)

    def add(name: str, help: str) -> argparse.ArgumentParser:
        return commands.add_parser(name, help=help, formatter_class=argparse.ArgumentDefaultsHelpFormatter)

    demo = add("demo", "train the digits CNN, export every format, check parity and accuracy")
    demo.add_argument("--out", help="artifact directory (default: the deploycheck cache)")
    demo.set_defaults(handler=cmd_demo)

    init = add("init", "write a starting conftest.py, tests/test_deploy.py and baselines/")
    init.add_argument("directory", nargs="?", default=".")
    init.add_argument("--force", action="store_true", help="rewrite a file init wrote before that differs now "
                      "(a copy is kept as NAME.bak); a conftest.py of yours is never rewritten")
    init.set_defaults(handler=cmd_init)

    export = add("export", "export MODULE:FUNC's model to every format")
    export.add_argument("spec", metavar="MODULE:FUNC", help="a function returning a deploycheck.ModelSpec")
    export.add_argument("--out", required=True, help="output directory (one subdirectory per format)")
    export.add_argument("--formats", help="comma-separated formats (default: the spec's)")
    export.add_argument("--sign-key", metavar="PRIVATE_KEY",
                        help="sign each artifact directory with this elliptic-curve key (PEM; needs "
                             "deploycheck[signing]); serve --verify-key checks it")
    export.set_defaults(handler=cmd_export)

    quantize = add("quantize", "search a static int8 configuration within an accuracy budget")
    quantize.add_argument("spec", metavar="MODULE:FUNC", help="a function returning a deploycheck.ModelSpec")
    quantize.add_argument("--max-accuracy-drop", type=float, required=True,
                          help="the budget, a fraction (0.01 is one point of accuracy)")
    quantize.add_argument("--out", required=True, help="where to write the winning artifact")
    quantize.add_argument("--format", default="onnx_int8_static",
                          help="the int8 format searched (one that declares a search space): onnx_int8_static "
                               "(default) or openvino_int8 (NNCF)")
    quantize.add_argument("--no-latency", action="store_true", help="do not measure batch-1 latency per trial")
    quantize.add_argument("--min-int8-fraction", type=float, help="of weights in int8 to count as int8 (0.5)")
    quantize.set_defaults(handler=cmd_quantize)

    compare = add("compare", "compare two reports or baseline directories; exit 1 on regression")
    compare.add_argument("old", metavar="OLD", help="a JSON report (--deploycheck-report), a baseline file or a "
                         "baselines directory")
    compare.add_argument("new", metavar="NEW", help="the same, for the new run")
    compare.add_argument("--project", default=".", help="where pyproject.toml's [tool.deploycheck.rules] is read")
    compare.add_argument("--rule", action="append", metavar="KEY=VALUE",
                         help="override a rule, e.g. --rule latency=p50:15%% --rule accuracy_drop=0.01")
    compare.add_argument("-v", "--verbose", action="store_true", help="print every comparison's table")
    compare.set_defaults(handler=cmd_compare)

    history = add("history", "trends and change points over the stored runs; `history merge A B -o C` joins stores")
    history.add_argument("action", nargs="?", choices=["show", "merge"], default="show")
    history.add_argument("sources", nargs="*", metavar="STORE", help="with merge: the stores to join")
    history.add_argument("-o", "--out", help="with merge: the store to merge into (created if missing)")
    history.add_argument("--store", default=".deploycheck/history.sqlite",
                         help="the history: a SQLite file or a postgresql:// URL (as --deploycheck-history)")
    history.add_argument("--model", help="only this model")
    history.add_argument("--format", help="only this format")
    history.add_argument("--last", type=int, help="how many of the latest runs to read (default: 50; with --html, "
                         "all of them)")
    history.add_argument("--html", metavar="PATH", help="write the trend pictures of the history to this page")
    history.set_defaults(handler=cmd_history)

    bisect = add("bisect", "the first commit between GOOD and BAD where a figure of one model x format stepped")
    bisect.add_argument("good")
    bisect.add_argument("bad")
    bisect.add_argument("--model", required=True)
    bisect.add_argument("--format", required=True, help="a format that writes files (the model code differs by commit)")
    bisect.add_argument("--metric", default="p50", choices=["p50", "mean", "p90", "size"])
    bisect.add_argument("--batch-size", type=int, default=1)
    bisect.add_argument("--time", type=float, default=1.0, help="seconds of interleaved timing per comparison")
    bisect.add_argument("--min-change", type=float, default=0.03, help="the smallest GOOD -> BAD step worth bisecting")
    bisect.add_argument("--root", default=".", help="the directory the gate runs from (its rootdir)")
    bisect.set_defaults(handler=cmd_bisect)

    report_command = add("report", "work with JSON reports: `report merge SHARD... -o OUT` joins a CI matrix's")
    report_actions = report_command.add_subparsers(dest="action", required=True)
    merge = report_actions.add_parser("merge", help="join the JSON reports of a CI matrix into one",
                                      formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    merge.add_argument("shards", nargs="+", metavar="SHARD", help="JSON reports (--deploycheck-report)")
    merge.add_argument("-o", "--out", required=True, help="the merged JSON report")
    merge.add_argument("--markdown", help="also write the merged Markdown report here")
    merge.add_argument("--html", help="also write the merged HTML report here")
    merge.set_defaults(handler=cmd_report_merge)

    alerts = add("alerts", "print Prometheus alerting rules from the stored baselines")
    alerts.add_argument("--baselines", required=True, help="the baselines directory")
    alerts.add_argument("--format", help="whose figures to use per model (default: onnx, else the first stored)")
    alerts.add_argument("--window", default="5m", help="the rate window of the expressions")
    alerts.add_argument("--hold", default="2m", help="how long a condition holds before the alert fires")
    alerts.set_defaults(handler=cmd_alerts)

    serve = add("serve", "serve artifacts over REST and the Open Inference Protocol v2")
    serve.add_argument("path", metavar="PATH", help="an artifact directory, or a directory of them")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--workers", type=int, default=1, help="processes (metrics are aggregated across them)")
    ServeSettings.add_arguments(serve)
    serve.add_argument("--log-level", default="info")
    serve.set_defaults(handler=cmd_serve)
    return parser


def _version() -> str:
    try:
        return importlib.metadata.version("deploycheck")
    except importlib.metadata.PackageNotFoundError:
        return "unknown (not installed)"


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result: int = args.handler(args)
    except DeployCheckError as exc:
        print(f"deploycheck {args.command}: {exc}", file=sys.stderr)
        return 2
    return result


if __name__ == "__main__":
    sys.exit(main())
