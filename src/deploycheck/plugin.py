"""The pytest plugin: options, fixtures and hooks only. The work is done by `deploycheck.gate` and friends.

Heavy libraries (torch, onnxruntime) are not imported here; they load when a deploycheck fixture is first used.
Per-run state lives in `config.stash`. Measurements travel to the controller on test reports
(`user_properties`), so the end-of-run summary is complete under pytest-xdist.
"""

from __future__ import annotations

import contextlib
import inspect
import re
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from deploycheck.registry import MODEL_FUNCTION, model_functions

PROPERTY = "deploycheck"


@dataclass(frozen=True)
class _Option:
    name: str
    help: str
    kind: str = "string"
    default: Any = None


OPTIONS = [
    _Option("formats", "comma-separated formats to gate (default: every format)"),
    _Option("models", "comma-separated registered models to gate (default: every model)"),
    _Option("artifacts", "directory to export artifacts into and keep (default: the pytest cache)"),
    _Option("baselines", "directory of the stored baselines, relative to the rootdir (default: baselines; "
            "also [tool.deploycheck] baselines)"),
    _Option("update", "write or rewrite the baselines of everything measured in this run", kind="bool"),
    _Option("update-new", "write only the baselines (and sections) that do not exist yet", kind="bool"),
    _Option("no-baselines", "do not hold the run to stored baselines", kind="bool"),
    _Option("keep-baseline-artifacts", "with --deploycheck-update, keep each artifact next to its baseline (in "
            "git), so later runs time old and new side by side", kind="bool"),
    _Option("accepted", "directory of the accepted artifacts, by content, that later runs time side by side "
            "(default: the pytest cache; persist it with a CI cache step)"),
    _Option("against", "git revision (e.g. origin/main) whose models are exported in this job and timed side by "
            "side with this checkout's"),
    _Option("strict-latency", "fail inconclusive latency verdicts instead of warning", kind="bool"),
    _Option("export-only", "export every model x format and run no checks (what --deploycheck-against runs on the "
            "other revision; also warms the export cache)", kind="bool"),
    _Option("report", "write a JSON report of every measurement to this path"),
    _Option("markdown", "write a Markdown report (for CI job summaries) to this path"),
    _Option("html", "write a self-contained HTML report with plots to this path"),
    _Option("benchmark-json", "write the latency results in pytest-benchmark's JSON schema to this path"),
    _Option("bench-time", "seconds of timing per batch size and per side-by-side comparison", default="1.0"),
    _Option("no-bench", "skip benchmarks (quick runs)", kind="bool"),
    _Option("budget", "seconds of timing for the whole run, shared evenly by the model x format pairs (each "
            "timing shortened to fit, at least one call); planned and spent are reported at the end"),
]


SUMMARY = pytest.StashKey["_Summary"]()
BASELINE_SETTINGS = pytest.StashKey[tuple[Path, list[tuple[str, Any]]]]()
AGAINST = pytest.StashKey[tuple[Path, str] | None]()
LAST_USE = pytest.StashKey[dict[str, tuple[str, str]]]()
EXPORTS = pytest.StashKey[Any]()
SPEC_ERRORS = pytest.StashKey[set[str]]()
PAIRS = pytest.StashKey[int]()
TIMING_SPENT = pytest.StashKey[dict[tuple[str, str], float]]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("deploycheck", "deploycheck: gate a model's deployment formats")
    for option in OPTIONS:
        flag = f"--deploycheck-{option.name}"
        ini = f"deploycheck_{option.name.replace('-', '_')}"
        if option.kind == "bool":
            group.addoption(flag, action="store_true", default=None, dest=ini, help=f"{option.help} (ini: {ini})")
            parser.addini(ini, option.help, type="bool", default=False)
        else:
            group.addoption(flag, action="store", default=None, dest=ini, metavar="VALUE",
                            help=f"{option.help} (ini: {ini})")
            parser.addini(ini, option.help, default=option.default)


def option(config: pytest.Config, name: str) -> Any:
    """An option's value: the command line first, then the ini key."""
    ini = f"deploycheck_{name.replace('-', '_')}"
    value = config.getoption(ini)
    return value if value is not None else config.getini(ini)


def selected_formats(config: pytest.Config) -> list[str]:
    """The formats to gate: `--deploycheck-formats` / the ini key, else every registered format."""
    from deploycheck.formats import format_names

    selected = option(config, "formats")
    known = format_names()
    formats = [f.strip() for f in selected.split(",") if f.strip()] if selected else known
    unknown = [f for f in formats if f not in known]
    if unknown:
        raise pytest.UsageError(f"--deploycheck-formats: unknown format(s) {unknown}; valid: {', '.join(known)}")
    return formats


def baseline_mode(config: pytest.Config) -> str | None:
    """None when baselines are off, else "update", "update-new" or "compare"."""
    if option(config, "no-baselines") or option(config, "export-only"):
        return None
    if option(config, "update"):
        return "update"
    return "update-new" if option(config, "update-new") else "compare"


def baseline_settings(config: pytest.Config) -> tuple[Path, list[tuple[str, Any]]]:
    """The baselines directory and the rule layers, read once in `pytest_configure`."""
    return config.stash[BASELINE_SETTINGS]


def _read_baseline_settings(config: pytest.Config) -> tuple[Path, list[tuple[str, Any]]]:
    """The baselines directory and the rule layers from `[tool.deploycheck]` of the rootdir's pyproject.toml."""
    from deploycheck.baseline.rules import pyproject_settings
    from deploycheck.errors import BaselineError

    try:
        settings = pyproject_settings(config.rootpath)
    except BaselineError as exc:
        raise pytest.UsageError(str(exc)) from exc
    directory = Path(option(config, "baselines") or settings.get("baselines") or "baselines")
    source = f"{config.rootpath / 'pyproject.toml'} [tool.deploycheck.rules]"
    return (config.rootpath / directory).resolve(), [(source, settings.get("rules"))]


def cache_dir(config: pytest.Config, name: str) -> Path:
    """A directory under the pytest cache (under the base temp directory's parent without the cacheprovider)."""
    if getattr(config, "cache", None) is not None:
        return Path(config.cache.mkdir(name))
    return Path(tempfile.gettempdir()) / f"deploycheck-{name}"


def accepted_store(config: pytest.Config) -> Any:
    """The accepted-artifact store: `--deploycheck-accepted` / its ini key, else under the pytest cache."""
    from deploycheck.accepted import AcceptedStore

    configured = option(config, "accepted")
    return AcceptedStore(config.rootpath / configured if configured else cache_dir(config, "deploycheck-accepted"))


def pytest_configure(config: pytest.Config) -> None:
    selected_formats(config)
    if option(config, "update") and option(config, "update-new"):
        raise pytest.UsageError("--deploycheck-update rewrites every baseline and --deploycheck-update-new only "
                                "creates missing ones: give one of them")
    config.stash[BASELINE_SETTINGS] = _read_baseline_settings(config)
    if not hasattr(config, "workerinput"):
        summary = _Summary(config)
        config.stash[SUMMARY] = summary
        config.pluginmanager.register(summary, "deploycheck-summary")


@pytest.hookimpl(tryfirst=True)
def pytest_sessionstart(session: pytest.Session) -> None:
    """With `--deploycheck-against REF`, export that revision's models before any test runs (on the controller;
    xdist workers find the same directory from the commit)."""
    from deploycheck.against import artifacts_dir, export_revision, resolve
    from deploycheck.errors import DeployCheckError

    config = session.config
    ref = option(config, "against")
    if not ref or baseline_mode(config) is None:
        config.stash[AGAINST] = None
        return
    cache = cache_dir(config, "deploycheck-against")
    try:
        revision = resolve(ref, config.rootpath)
        if hasattr(config, "workerinput"):
            directory = artifacts_dir(revision, cache)
        else:
            filters = [f"--deploycheck-{name}={option(config, name)}" for name in ("formats", "models")
                       if option(config, name)]
            terminal = config.pluginmanager.get_plugin("terminalreporter")
            if terminal is not None:
                terminal.write_line(f"deploycheck: exporting the models of {revision.label} to time them side by "
                                    "side ...")
            directory = export_revision(revision, config.rootpath, cache, filters)
    except DeployCheckError as exc:
        raise pytest.UsageError(str(exc)) from exc
    config.stash[AGAINST] = (directory, revision.label)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """A model's tests run together, format by format (and carry `xdist_group(model)`, for `--dist loadgroup`),
    so each artifact's runtime is released after its last test (`pytest_runtest_teardown`) and one model at a
    time is in memory. `--deploycheck-export-only`: one test per model x format is kept, to export it."""
    from deploycheck.formats import format_names

    order = {name: position for position, name in enumerate(format_names())}
    slots = [index for index, item in enumerate(items) if _artifact_param(item) is not None]
    models: dict[str, int] = {}
    for index in slots:
        models.setdefault(_artifact_param(items[index])[0], len(models))

    def key(index: int) -> tuple[int, int, int]:
        model, format_name = _artifact_param(items[index])
        return models[model], order.get(format_name, len(order)), index

    grouped = [items[index] for index in sorted(slots, key=key)]
    for index, item in zip(slots, grouped):
        items[index] = item
        item.add_marker(pytest.mark.xdist_group(name=_artifact_param(item)[0]))
    last_test = {_artifact_param(item): item for item in grouped}
    config.stash[LAST_USE] = {item.nodeid: pair for pair, item in last_test.items()}
    config.stash[PAIRS] = len(last_test)
    if option(config, "export-only"):
        _keep_one_test_per_artifact(config, items)


def pytest_runtest_teardown(item: pytest.Item) -> None:
    """After the last test of a model x format, its loaded runtime is released (the files stay on disk)."""
    pair = item.config.stash.get(LAST_USE, {}).get(item.nodeid)
    exports = item.config.stash.get(EXPORTS, None)
    if pair is not None and exports is not None:
        exports.release(*pair)


def _keep_one_test_per_artifact(config: pytest.Config, items: list[pytest.Item]) -> None:
    seen: set[Any] = set()
    kept, dropped = [], []
    for item in items:
        pair = _artifact_param(item)
        if pair is not None and pair not in seen:
            seen.add(pair)
            kept.append(item)
        else:
            dropped.append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
    items[:] = kept


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    """`--deploycheck-export-only`: the `artifact` fixture has exported; the test's own checks are not run."""
    return True if option(pyfuncitem.config, "export-only") else None


def _artifact_param(item: pytest.Item) -> Any:
    callspec = getattr(item, "callspec", None)
    return callspec.params.get("artifact") if callspec is not None else None


def pytest_unconfigure(config: pytest.Config) -> None:
    summary = config.stash.get(SUMMARY, None)
    if summary is not None:
        del config.stash[SUMMARY]
        config.pluginmanager.unregister(summary)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "artifact" not in metafunc.fixturenames:
        return
    models: dict[str, Any] = {}
    for plugin in metafunc.config.pluginmanager.get_plugins():
        if getattr(plugin, "__file__", "").endswith("conftest.py"):
            models.update(model_functions(plugin))
    models.update(model_functions(metafunc.module))
    wanted = option(metafunc.config, "models")
    if wanted:
        names = {name.strip() for name in wanted.split(",") if name.strip()}
        models = {name: function for name, function in models.items() if name in names}
    formats = selected_formats(metafunc.config)
    params = [(model, fmt) for model in sorted(models) for fmt in formats]
    metafunc.parametrize("artifact", params, indirect=True, ids=[f"{m}/{f}" for m, f in params])


@pytest.fixture(scope="session")
def _deploycheck_exports(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Any:
    from deploycheck.gate import ExportSession

    config = request.config
    configured = option(config, "artifacts")
    if configured:
        artifacts_dir = Path(configured)
    elif getattr(config, "cache", None) is not None:
        artifacts_dir = config.cache.mkdir("deploycheck-artifacts")
    else:
        artifacts_dir = tmp_path_factory.getbasetemp().parent / "deploycheck-artifacts"
    exports = ExportSession(artifacts_dir, lock_dir=tmp_path_factory.getbasetemp().parent,
                            progress=_progress(config))
    config.stash[EXPORTS] = exports
    return exports


@pytest.fixture
def artifact(request: pytest.FixtureRequest, _deploycheck_exports: Any) -> Any:
    """One model x format, exported once per run and loaded back from disk (parametrized over all of them)."""
    from deploycheck.errors import ExportError, FormatUnavailable, SpecError

    model_name, format_name = request.param
    try:
        spec = request.getfixturevalue(model_name)
    except SpecError as exc:  # a mistake in the spec: said plainly, in full once, then referred to
        reported = request.config.stash.setdefault(SPEC_ERRORS, set())
        first = model_name not in reported
        reported.add(model_name)
        pytest.fail(str(exc) if first else f"{model_name}: the spec cannot be built (see the first error of "
                    f"{model_name})", pytrace=False)
    if format_name not in (spec.formats or []):
        pytest.skip(f"{spec.name}/{format_name}: not among the spec's formats {spec.formats}")
    try:
        return _deploycheck_exports.artifact(spec, format_name)
    except FormatUnavailable as exc:
        pytest.skip(str(exc))
    except ExportError as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture
def deploycheck(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
                _deploycheck_exports: Any) -> Any:
    """The gate's checks (`assert_parity`, ...); what they measure goes into the end-of-run summary."""
    from deploycheck.gate import Gate

    def record(payload: dict[str, Any]) -> None:
        request.node.user_properties.append((PROPERTY, payload))

    config = request.config
    mode = baseline_mode(config)
    baselines = None
    if mode is not None:
        from deploycheck.baseline.store import BaselineStore
        from deploycheck.gate import BaselineCheck

        directory, layers = baseline_settings(config)
        baselines = BaselineCheck(BaselineStore(directory), mode, layers, accepted_store(config),
                                  against=config.stash.get(AGAINST, None),
                                  strict_latency=bool(option(config, "strict-latency")))
    budget = option(config, "budget")
    pairs = config.stash.get(PAIRS, 0) or 1
    return Gate(record, bench_time_s=float(option(config, "bench-time")),
                bench_lock=tmp_path_factory.getbasetemp().parent / "deploycheck-bench.lock",
                skip_bench=pytest.skip if option(config, "no-bench") else None, baselines=baselines,
                exporter=_deploycheck_exports.artifact, resolve=request.getfixturevalue,
                budget_s=float(budget) / pairs if budget else None, progress=_progress(config),
                spent=config.stash.setdefault(TIMING_SPENT, {}))


def _progress(config: pytest.Config) -> Any:
    """The terminal progress of long steps, or none: under -q, and in xdist workers (no terminal of their own)."""
    from deploycheck.gate import no_progress

    if config.getoption("verbose", 0) < 0 or hasattr(config, "workerinput"):
        return no_progress
    return _TerminalProgress(config)


class _TerminalProgress:
    """Announces a step (an export, a benchmark, ...) on the terminal once it has run for `after_s`, and its end,
    so a long run shows a sign of life; a step that ends sooner prints nothing. Writes with capture suspended,
    as pytest's live logging does."""

    def __init__(self, config: pytest.Config, after_s: float = 2.0) -> None:
        self.config = config
        self.after_s = after_s
        self._lock = threading.Lock()

    def _write(self, line: str) -> None:
        terminal = self.config.pluginmanager.get_plugin("terminalreporter")
        capture = self.config.pluginmanager.get_plugin("capturemanager")
        if terminal is None:
            return
        with self._lock, capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
            terminal.write_line(line)

    @contextlib.contextmanager
    def __call__(self, text: str) -> Iterator[None]:
        started = time.perf_counter()
        announced = threading.Event()

        def announce() -> None:
            announced.set()
            self._write(f"deploycheck: {text} ...")

        timer = threading.Timer(self.after_s, announce)
        timer.daemon = True
        timer.start()
        try:
            yield
        finally:
            timer.cancel()
            timer.join()  # an announcement under way is written before the end is
            if announced.is_set():
                self._write(f"deploycheck: {text}: done in {time.perf_counter() - started:.1f} s")


class _Summary:
    """Collects measurements from test reports (on the controller under xdist), writes baselines and reports, and
    prints the summary; registered as a plugin object in `pytest_configure`, as pytest's junitxml does."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.results: dict[tuple[str, str], dict[str, Any]] = {}
        self.collected: set[tuple[str, str]] = set()
        self.checked_missing = False
        self.written: list[str] = []

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        for name, payload in report.user_properties:
            if name == PROPERTY and isinstance(payload, dict):
                row = self.results.setdefault((payload["model"], payload["format"]), {})
                for key, value in payload.items():
                    if isinstance(value, dict) and isinstance(row.get(key), dict):
                        row[key].update(value)
                    else:
                        row[key] = value
        pair = _pairs([report.nodeid])
        if pair and (report.failed or (report.skipped and report.when == "setup")):
            model, format_name = pair.pop()
            row = self.results.setdefault((model, format_name), {"model": model, "format": format_name})
            test = report.nodeid.split("::")[-1].split("[")[0]
            if report.failed:  # a failure before anything was measured still makes the row FAIL
                row.setdefault("failed_tests", []).append(test)
            elif isinstance(report.longrepr, tuple):
                row["skipped"] = str(report.longrepr[2]).removeprefix("Skipped: ")

    def pytest_collection_finish(self, session: pytest.Session) -> None:
        self.collected.update(_pairs(item.nodeid for item in session.items))
        self._fail_fast_on_missing_baselines()

    @pytest.hookimpl(optionalhook=True)
    def pytest_xdist_node_collection_finished(self, node: Any, ids: list[str]) -> None:
        self.collected.update(_pairs(ids))
        self._fail_fast_on_missing_baselines()

    def _fail_fast_on_missing_baselines(self) -> None:
        """In compare mode, stop before exporting or measuring anything when baselines are missing, with one
        message listing every missing file and the flag that records them."""
        if baseline_mode(self.config) != "compare" or self.checked_missing:
            return
        self.checked_missing = True
        missing = missing_baselines(self.config, self.collected)
        if missing:
            directory, _ = baseline_settings(self.config)
            by_model: dict[str, list[str]] = {}
            for path in missing:
                by_model.setdefault(path.parent.name, []).append(path.name)
            listing = "\n".join(f"  {model}/ {', '.join(names)}" for model, names in by_model.items())
            pytest.exit(f"deploycheck: {len(missing)} baseline(s) missing under {directory}:\n{listing}\n"
                        "Record them with `pytest --deploycheck-update-new` (or run without the regression gate: "
                        "--deploycheck-no-baselines).", returncode=pytest.ExitCode.TESTS_FAILED)

    def rows(self) -> list[dict[str, Any]]:
        from deploycheck.formats import format_names

        order = {name: position for position, name in enumerate(format_names())}
        return [self.results[key] for key in sorted(self.results, key=lambda k: (k[0], order.get(k[1], len(order))))]

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        from deploycheck.report import (
            budget_summary,
            inconclusive_summary,
            quantization_summary,
            summary_table,
            unchecked_budgets,
        )

        lines: list[str] = []
        rows = self.rows()
        if rows:
            lines.append(summary_table(rows))
            lines += quantization_summary(rows)
            lines += unchecked_budgets(rows)
            lines += inconclusive_summary(rows)
            budget = option(self.config, "budget")
            lines += budget_summary(rows, float(budget) if budget else None)
        statements = [f"  {r['model']}/{r['format']}: {r['original']['statement']}" for r in rows
                      if isinstance(r.get("original"), dict) and r["original"].get("statement")]
        if statements:
            lines += ["deploycheck: speed against the original, as measured:", *statements]
        lines += self.written
        if lines:
            terminalreporter.section("deploycheck")
            for line in "\n".join(lines).splitlines():
                terminalreporter.write_line(line, **_status_markup(line))

    @pytest.hookimpl(tryfirst=True)
    def pytest_sessionfinish(self) -> None:
        """Baselines and reports are written here, so a run without the terminal plugin still saves them; the
        terminal summary only prints what was written."""
        rows = self.rows()
        self.written = self._write_baselines(rows) + self._stale_baselines() + self._write_reports(rows)

    def _write_baselines(self, rows: list[dict[str, Any]]) -> list[str]:
        from deploycheck.gate import write_baselines

        mode = baseline_mode(self.config)
        if mode not in ("update", "update-new") or not rows:
            return []
        directory, _ = baseline_settings(self.config)
        return write_baselines(directory, rows, only_missing=mode == "update-new",
                               keep_artifacts=bool(option(self.config, "keep-baseline-artifacts")),
                               root=self.config.rootpath, accepted=accepted_store(self.config))

    def _stale_baselines(self) -> list[str]:
        from deploycheck.baseline.store import BaselineStore, stale_entries
        from deploycheck.formats import format_names

        filtered = (self.config.getoption("keyword", "") or self.config.getoption("markexpr", "")
                    or option(self.config, "models"))
        if baseline_mode(self.config) is None or filtered or not self.collected:
            return []
        directory, _ = baseline_settings(self.config)
        models = sorted({model for model, _ in self.collected})
        stale = stale_entries(BaselineStore(directory), models, format_names())
        if not stale:
            return []
        return [f"deploycheck: {len(stale)} stale baseline(s), for a model or format that no longer exists "
                "(delete them if that is intended):"] + [f"  {path}" for path in stale]

    def _write_reports(self, rows: list[dict[str, Any]]) -> list[str]:
        from deploycheck import report

        writers = {"report": report.write_json_report, "markdown": report.write_markdown,
                   "html": report.write_html, "benchmark-json": report.write_benchmark_json}
        lines = []
        for name, write in writers.items():
            path = option(self.config, name)
            if path:
                write(Path(path), rows)
                lines.append(f"deploycheck: {name} written to {path}")
        return lines


def missing_baselines(config: pytest.Config, pairs: set[tuple[str, str]]) -> list[Path]:
    """The baseline files the collected model x format pairs would need and do not have. A format the spec leaves
    out or cannot handle needs none, so each model with a missing file is built once to ask; when that cannot be
    done before the tests run (a model defined in a test module, or needing other fixtures), nothing is listed
    and each test reports its own missing baseline."""
    from deploycheck.baseline.store import BaselineStore
    from deploycheck.errors import FormatUnavailable
    from deploycheck.formats import get_format

    directory, _ = baseline_settings(config)
    store = BaselineStore(directory)
    absent = sorted(pair for pair in pairs if not store.path(*pair).exists())
    functions: dict[str, Any] = {}
    for plugin in config.pluginmanager.get_plugins():
        if getattr(plugin, "__file__", "").endswith("conftest.py"):
            functions.update(model_functions(plugin))
    specs: dict[str, Any] = {}
    missing = []
    for model, format_name in absent:
        function = getattr(functions.get(model), MODEL_FUNCTION, None)
        if function is None or inspect.signature(function).parameters:
            return []
        if model not in specs:
            try:
                specs[model] = function()
            except Exception:  # the tests will report a spec that cannot be built, with its traceback
                return []
        spec = specs[model]
        if format_name not in (spec.formats or []):
            continue
        try:
            get_format(format_name).check_supported(spec)
        except FormatUnavailable:
            continue
        missing.append(store.path(model, format_name))
    return missing


_STATUS_COLOURS = {"FAIL": "red", "inconclusive": "yellow", "skipped": "yellow", "ok": "green"}


def _status_markup(line: str) -> dict[str, bool]:
    """A summary row coloured by its status (its last word): red, yellow or green. pytest's terminal writer
    applies markup on a terminal only, so piped output stays plain."""
    words = line.split()
    colour = _STATUS_COLOURS.get(words[-1]) if words else None
    return {colour: True} if colour else {}


def _pairs(nodeids: Any) -> set[tuple[str, str]]:
    """(model, format) of each test id parametrized by the `artifact` fixture (ids end in `[model/format]`)."""
    found = set()
    for nodeid in nodeids:
        match = _PAIR_RE.search(nodeid)
        if match:
            found.add((match.group(1), match.group(2)))
    return found


_PAIR_RE = re.compile(r"\[([A-Za-z0-9_.-]+)/([A-Za-z0-9_]+)(?:-[^\]]*)?\](?:@[\w.-]+)?$")  # @group: loadgroup
