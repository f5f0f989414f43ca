"""The pytest plugin: options, fixtures and hooks only. The work is done by `deploycheck.gate` and friends.

Heavy libraries (torch, onnxruntime) are not imported here; they load when a deploycheck fixture is first used.
Per-run state lives in `config.stash`. Measurements travel to the controller on test reports
(`user_properties`), so the end-of-run summary is complete under pytest-xdist.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from deploycheck.registry import model_functions

PROPERTY = "deploycheck"


@dataclass(frozen=True)
class _Option:
    name: str
    help: str
    kind: str = "string"
    default: Any = None


OPTIONS = [
    _Option("formats", "comma-separated formats to gate (default: every format)"),
    _Option("artifacts", "directory to export artifacts into and keep (default: the pytest cache)"),
    _Option("report", "write a JSON report of every measurement to this path"),
    _Option("bench-time", "seconds of timing per batch size and per side-by-side comparison", default="1.0"),
    _Option("no-bench", "skip benchmarks (quick runs)", kind="bool"),
]


SUMMARY = pytest.StashKey["_Summary"]()


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


def pytest_configure(config: pytest.Config) -> None:
    selected_formats(config)
    if not hasattr(config, "workerinput"):
        summary = _Summary(config)
        config.stash[SUMMARY] = summary
        config.pluginmanager.register(summary, "deploycheck-summary")


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
    elif config.cache is not None:
        artifacts_dir = config.cache.mkdir("deploycheck-artifacts")
    else:
        artifacts_dir = tmp_path_factory.getbasetemp().parent / "deploycheck-artifacts"
    return ExportSession(artifacts_dir, lock_dir=tmp_path_factory.getbasetemp().parent)


@pytest.fixture
def artifact(request: pytest.FixtureRequest, _deploycheck_exports: Any) -> Any:
    """One model x format, exported once per run and loaded back from disk (parametrized over all of them)."""
    from deploycheck.errors import ExportError, FormatUnavailable

    model_name, format_name = request.param
    spec = request.getfixturevalue(model_name)
    if format_name not in (spec.formats or []):
        pytest.skip(f"{spec.name}/{format_name}: not among the spec's formats {spec.formats}")
    try:
        return _deploycheck_exports.artifact(spec, format_name)
    except FormatUnavailable as exc:
        pytest.skip(str(exc))
    except ExportError as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture
def deploycheck(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The gate's checks (`assert_parity`, ...); what they measure goes into the end-of-run summary."""
    from deploycheck.gate import Gate

    def record(payload: dict[str, Any]) -> None:
        request.node.user_properties.append((PROPERTY, payload))

    config = request.config
    return Gate(record, bench_time_s=float(option(config, "bench-time")),
                bench_lock=tmp_path_factory.getbasetemp().parent / "deploycheck-bench.lock",
                skip_bench=pytest.skip if option(config, "no-bench") else None)


class _Summary:
    """Collects measurements from test reports (on the controller under xdist) and prints the summary; registered
    as a plugin object in `pytest_configure`, as pytest's junitxml does."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.results: dict[tuple[str, str], dict[str, Any]] = {}

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        for name, payload in report.user_properties:
            if name == PROPERTY and isinstance(payload, dict):
                row = self.results.setdefault((payload["model"], payload["format"]), {})
                for key, value in payload.items():
                    if isinstance(value, dict) and isinstance(row.get(key), dict):
                        row[key].update(value)
                    else:
                        row[key] = value

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if not self.results:
            return
        from deploycheck.formats import format_names
        from deploycheck.report import summary_table

        order = {name: position for position, name in enumerate(format_names())}
        rows = [self.results[key] for key in sorted(self.results, key=lambda k: (k[0], order.get(k[1], len(order))))]
        terminalreporter.section("deploycheck")
        terminalreporter.write_line(summary_table(rows))
        path = option(self.config, "report")
        if path:
            from deploycheck.report import with_size_ratios, write_json

            write_json(Path(path), {"results": with_size_ratios(rows)})
            terminalreporter.write_line(f"deploycheck: JSON report written to {path}")
