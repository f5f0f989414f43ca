"""The end of a run: measurements collected from test reports (on the controller under pytest-xdist),
baselines and reports written at session finish, the summary printed, and the progress of long steps on the
terminal. Loaded with every pytest run, so deploycheck's heavy modules are imported only where used."""

from __future__ import annotations

import contextlib
import inspect
import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from deploycheck.model_registry import MODEL_FUNCTION, model_functions
from deploycheck.plugin_options import (
    GENERATION_PROPERTY,
    GENERATIVE_MODEL_PROPERTY,
    PROPERTY,
    accepted_store,
    baseline_mode,
    baseline_settings,
    history_location,
    option,
)
from deploycheck.rows import merge_payload


def terminal_progress(config: pytest.Config) -> Any:
    """The terminal progress of long steps, or none: under -q, and in xdist workers (no terminal of their own)."""
    from deploycheck.exporting import no_progress

    if config.getoption("verbose", 0) < 0 or hasattr(config, "workerinput"):
        return no_progress
    return TerminalProgress(config)


class TerminalProgress:
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


class RunSummary:
    """Collects measurements from test reports (on the controller under xdist), writes baselines and reports, and
    prints the summary; registered as a plugin object in `pytest_configure`, as pytest's junitxml does."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.results: dict[tuple[str, str], dict[str, Any]] = {}
        self.generation: dict[str, dict[str, Any]] = {}  # generative reports, by model
        self.generation_failures: dict[str, list[str]] = {}  # generative tests that failed, by model
        self.document: Any = None  # the run document (`deploycheck.run_result.RunResult`), built at session finish
        self.collected: set[tuple[str, str]] = set()
        self.checked_missing = False
        self.written: list[str] = []

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        for name, payload in report.user_properties:
            if name == GENERATION_PROPERTY and isinstance(payload, dict):
                self.generation[payload["model"]] = payload
            if name == GENERATIVE_MODEL_PROPERTY and report.failed:
                self.generation_failures.setdefault(str(payload), []).append(
                    report.nodeid.split("::")[-1].split("[")[0])
            if name == PROPERTY and isinstance(payload, dict):
                merge_payload(self.results.setdefault((payload["model"], payload["format"]), {}), payload)
        pair = artifact_pairs([report.nodeid])
        if pair and (report.failed or (report.skipped and report.when == "setup")):
            model, format_name = pair.pop()
            row = self.results.setdefault((model, format_name), {"model": model, "format": format_name})
            test = report.nodeid.split("::")[-1].split("[")[0]
            if report.failed:  # a failure before anything was measured still makes the row FAIL
                row.setdefault("failed_tests", []).append(test)
            elif isinstance(report.longrepr, tuple):
                row["skipped"] = str(report.longrepr[2]).removeprefix("Skipped: ")

    def pytest_collection_finish(self, session: pytest.Session) -> None:
        self.collected.update(artifact_pairs(item.nodeid for item in session.items))
        self._fail_fast_on_missing_baselines()

    @pytest.hookimpl(optionalhook=True)
    def pytest_xdist_node_collection_finished(self, node: Any, ids: list[str]) -> None:
        self.collected.update(artifact_pairs(ids))
        self._fail_fast_on_missing_baselines()

    def _fail_fast_on_missing_baselines(self) -> None:
        """In compare mode, stop before exporting or measuring anything when baselines are missing, with one
        message listing every missing file and the flag that records them."""
        if baseline_mode(self.config) != "compare" or self.checked_missing or not self.collected:
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
        if not self.results:  # a pytest run without the gate imports nothing heavy
            return []
        from deploycheck.report.summary import sort_rows

        return sort_rows(self.results.values())

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if self.document is None and not self.written:  # nothing of the gate's: import nothing
            return
        from deploycheck.report.summary import (
            budget_summary,
            summary_lines,
            unchecked_budgets,
            unchecked_sizes,
            verdict,
        )

        lines: list[str] = []
        document = self.document
        rows = document.rows() if document is not None else []
        if document is not None:
            lines += summary_lines(document)
            lines += unchecked_budgets(rows)
            lines += unchecked_sizes(rows)
            budget = option(self.config, "budget")
            lines += budget_summary(rows, float(budget) if budget else None)
        statements = [f"  {r['model']}/{r['format']}: {r['original']['statement']}" for r in rows
                      if isinstance(r.get("original"), dict) and r["original"].get("statement")]
        if statements:
            lines += ["deploycheck: speed against the original, as measured:", *statements]
        lines += self.written
        if document is not None:
            lines.append(verdict(document))
            if os.environ.get("GITHUB_ACTIONS") == "true":
                from deploycheck.github import github_annotations

                lines += github_annotations(document)
        if lines:
            terminalreporter.section("deploycheck")
            for line in "\n".join(lines).splitlines():
                terminalreporter.write_line(line, **_status_markup(line))

    @pytest.hookimpl(tryfirst=True)
    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        """The run document is built here, once, and the history, baselines and reports are written from it, so
        a run without the terminal plugin still saves them; the terminal summary only prints what was written.
        The history comes first: a new change point that fails a row must show in the reports and the exit
        status."""
        rows = self.rows()
        if not rows and not self.generation and not self.generation_failures:
            return
        run = self._run(rows)  # each step below imports its modules only when it has work
        decoders = self._decoder_results()
        history, changed = self._record_history(rows, run, decoders)
        self.document = self._document(rows, run, decoders, changed)
        self.written = (self._write_baselines(rows) + self._write_generation_baselines() + self._stale_baselines()
                        + self._write_reports(self.document) + history)
        if not self.document.passed and session.exitstatus == 0:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED
        self._github_step_summary(self.document)

    def _decoder_results(self) -> list[Any]:
        """Each decoder format a result (`deploycheck.run_result.Result`); a decoder whose test failed before it
        reported anything (an export that raised) one failed result for the model."""
        from deploycheck.run_result import Result

        results = [Result.from_dict(result) for data in self.generation.values() for result in data["results"]]
        return results + [Result(model, "*", "generative", failed_tests=tuple(tests))
                          for model, tests in self.generation_failures.items() if model not in self.generation]

    def _document(self, rows: list[dict[str, Any]], run: Any, decoders: list[Any],
                  changed: set[tuple[str, str]]) -> Any:
        """The run document: each single-pass row a result, and each decoder result, with a failed history check
        where the run fails on a new worse change point or could not look for one (`changed`; a row whose
        `history` section says so has its check already)."""
        from dataclasses import replace

        from deploycheck.formats import format_names
        from deploycheck.report.summary import with_size_ratios
        from deploycheck.run_result import Check, Result, RunResult, ordered

        history = Check("change_point", "REGRESSED", against="history")
        results = [Result.from_row(row) for row in with_size_ratios(rows)] + decoders
        results = [replace(result, checks=(*result.checks, history))
                   if (result.model, result.format) in changed and not any(
                       check.metric == "change_point" for check in result.checks) else result for result in results]
        return RunResult(run, ordered(results, format_names()))

    def _run(self, rows: list[dict[str, Any]]) -> Any:
        """This run's `RunInfo` (commit, branch, machine), shared by the history and the JSON report."""
        from deploycheck.history.records import new_run
        from deploycheck.machine import environment

        measured = next((row["environment"] for row in rows if isinstance(row.get("environment"), dict)), None)
        return new_run(self.config.rootpath, baseline_mode(self.config) or "no-baselines",
                       measured or environment(threads=1))

    def _record_history(self, rows: list[dict[str, Any]], run: Any,
                        decoders: list[Any]) -> tuple[list[str], set[tuple[str, str]]]:
        """The history's lines, and the model x formats whose figures made a new worse change point (with
        `--deploycheck-fail-on-change-point`)."""
        location = history_location(self.config)
        if location is None or not (rows or decoders):
            return [], set()
        from deploycheck.history.recorder import record_run

        gate_on_it = bool(option(self.config, "fail-on-change-point"))
        try:
            outcome = record_run(location, rows, run, gate_on_it, decoders)
        except Exception as exc:  # a damaged or hand-edited store: the run's baselines and reports are still written
            line = (f"deploycheck: the history at {location} could not take this run ({type(exc).__name__}: "
                    f"{exc}); this run is not in the history")
            if not gate_on_it:
                return [line], set()
            every = {(row["model"], row["format"]) for row in rows} | {(r.model, r.format) for r in decoders}
            return [line + "\n  --deploycheck-fail-on-change-point could not be checked: every result fails it"], \
                every
        return outcome.lines, {(change.model, change.format) for change in outcome.changes}

    def _github_step_summary(self, document: Any) -> None:
        """On GitHub Actions, the Markdown report goes into the job summary without any option."""
        path = os.environ.get("GITHUB_STEP_SUMMARY")
        if os.environ.get("GITHUB_ACTIONS") == "true" and path and document.results:
            from deploycheck.github import append_step_summary

            append_step_summary(Path(path), document)

    def _write_baselines(self, rows: list[dict[str, Any]]) -> list[str]:
        mode = baseline_mode(self.config)
        if mode not in ("update", "update-new") or not rows:
            return []
        from deploycheck.baseline.update import write_baselines

        directory, _ = baseline_settings(self.config)
        return write_baselines(directory, rows, only_missing=mode == "update-new",
                               keep_artifacts=bool(option(self.config, "keep-baseline-artifacts")),
                               root=self.config.rootpath, accepted=accepted_store(self.config))

    def _write_generation_baselines(self) -> list[str]:
        """Passing generative reports become their models' baselines (`update`), or only where none exists yet
        (`update-new`)."""
        mode = baseline_mode(self.config)
        if mode not in ("update", "update-new") or not self.generation:
            return []
        from deploycheck.generation.regression import baseline_path, write_generation_baseline

        directory, _ = baseline_settings(self.config)
        written = []
        for model, data in self.generation.items():
            if data["passed"] and (mode == "update" or not baseline_path(directory, model).is_file()):
                written.append(f"deploycheck: generation baseline written to "
                               f"{write_generation_baseline(directory, data, accepted_store(self.config))}")
        return written

    def _stale_baselines(self) -> list[str]:
        filtered = (self.config.getoption("keyword", "") or self.config.getoption("markexpr", "")
                    or option(self.config, "models"))
        if baseline_mode(self.config) is None or filtered or not self.collected:
            return []
        from deploycheck.baseline.store import BaselineStore, stale_entries
        from deploycheck.formats import format_names

        directory, _ = baseline_settings(self.config)
        models = sorted({model for model, _ in self.collected})
        stale = stale_entries(BaselineStore(directory), models, format_names())
        if not stale:
            return []
        return [f"deploycheck: {len(stale)} stale baseline(s), for a model or format that no longer exists "
                "(delete them if that is intended):"] + [f"  {path}" for path in stale]

    def _write_reports(self, document: Any) -> list[str]:
        if not any(option(self.config, name) for name in REPORT_OPTIONS):
            return []
        from deploycheck.report import files

        writers: dict[str, Callable[[Path, Any], None]] = {
            "report": files.write_json_report, "markdown": files.write_markdown,
            "html": partial(files.write_html, trends_html=self._trend_pictures(document.rows())
                            if option(self.config, "html") else ""),
            "benchmark-json": files.write_benchmark_json}
        lines = []
        for name in REPORT_OPTIONS:
            path = option(self.config, name)
            if path:
                writers[name](Path(path), document)
                lines.append(f"deploycheck: {name} written to {path}")
        return lines

    def _trend_pictures(self, rows: list[dict[str, Any]]) -> str:
        """The HTML report's trend pictures: this run's model x formats over their recent history (this run
        included, as it was appended first); none when the run keeps no history or it cannot be read."""
        from deploycheck.errors import DeployCheckError
        from deploycheck.history.pictures import trend_section
        from deploycheck.history.recorder import HISTORY_WINDOW
        from deploycheck.history.store import HistoryStore

        location = history_location(self.config)
        if location is None or not rows:
            return ""
        names = {(row["model"], row["format"]) for row in rows}
        try:
            records = HistoryStore(location).records(last_runs=HISTORY_WINDOW)
        except DeployCheckError:
            return ""
        return trend_section([record for record in records if (record.model, record.format) in names])


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


# the options naming a report file, each written by its writer in `RunSummary._write_reports`
REPORT_OPTIONS = ("report", "markdown", "html", "benchmark-json")
_STATUS_COLOURS = {"FAIL": "red", "inconclusive": "yellow", "skipped": "yellow", "ok": "green"}


def _status_markup(line: str) -> dict[str, bool]:
    """A summary row coloured by its status (its last word): red, yellow or green. pytest's terminal writer
    applies markup on a terminal only, so piped output stays plain."""
    words = line.split()
    colour = _STATUS_COLOURS.get(words[-1]) if words else None
    return {colour: True} if colour else {}


def artifact_pairs(nodeids: Any) -> set[tuple[str, str]]:
    """(model, format) of each test id parametrized by the `artifact` fixture (ids end in `[model/format]`)."""
    found = set()
    for nodeid in nodeids:
        match = _PAIR_RE.search(nodeid)
        if match:
            found.add((match.group(1), match.group(2)))
    return found


_PAIR_RE = re.compile(r"\[([A-Za-z0-9_.-]+)/([A-Za-z0-9_]+)(?:-[^\]]*)?\](?:@[\w.-]+)?$")  # @group: loadgroup
