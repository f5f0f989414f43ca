"""The pytest plugin: options, fixtures and hooks only. The work is done by `deploycheck.gate` and friends.

Heavy libraries (torch, onnxruntime) are not imported here; they load when a deploycheck fixture is first used.
Per-run state lives in `config.stash`. Measurements travel to the controller on test reports
(`user_properties`), so the end-of-run summary is complete under pytest-xdist.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from deploycheck.model_registry import GENERATIVE_MARK, MODEL_MARK, model_functions
from deploycheck.plugin_options import (
    AGAINST,
    BASELINE_SETTINGS,
    EXPORTS,
    GENERATION_PROPERTY,
    GENERATIVE_MODEL_PROPERTY,
    LAST_USE,
    OPTIONS,
    PAIRS,
    PROPERTY,
    SPEC_ERRORS,
    TIMING_SPENT,
    accepted_store,
    baseline_mode,
    baseline_settings,
    cache_dir,
    option,
    read_baseline_settings,
    selected_formats,
)
from deploycheck.plugin_summary import RunSummary, terminal_progress
from deploycheck.rows import Row

SUMMARY = pytest.StashKey["RunSummary"]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("deploycheck", "deploycheck: gate a model's deployment formats")
    for declared in OPTIONS:
        flag = f"--deploycheck-{declared.name}"
        ini = f"deploycheck_{declared.name.replace('-', '_')}"
        if declared.kind == "bool":
            group.addoption(flag, action="store_true", default=None, dest=ini, help=f"{declared.help} (ini: {ini})")
            parser.addini(ini, declared.help, type="bool", default=False)
        else:
            group.addoption(flag, action="store", default=None, dest=ini, metavar="VALUE",
                            help=f"{declared.help} (ini: {ini})")
            parser.addini(ini, declared.help, default=declared.default)


def pytest_configure(config: pytest.Config) -> None:
    if option(config, "formats"):  # a mistyped format stops the run at once; without the option, nothing to check
        selected_formats(config)  # (and no runtime is imported: a pytest run without the gate pays nothing)
    if option(config, "update") and option(config, "update-new"):
        raise pytest.UsageError("--deploycheck-update rewrites every baseline and --deploycheck-update-new only "
                                "creates missing ones: give one of them")
    config.stash[BASELINE_SETTINGS] = read_baseline_settings(config)
    # the mark the gate's items carry; registered here too, so a run without pytest-xdist does not warn of it
    config.addinivalue_line("markers", "xdist_group(name): run tests of one group in one worker (--dist loadgroup)")
    if not hasattr(config, "workerinput"):
        summary = RunSummary(config)
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
    slots = [index for index, item in enumerate(items) if _artifact_param(item) is not None]
    if not slots:
        return
    from deploycheck.formats import format_names

    order = {name: position for position, name in enumerate(format_names())}
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
    if "artifact" in metafunc.fixturenames:
        from deploycheck.formats import format_names

        single_pass = format_names()  # the run's choice may also name formats only decoders have
        formats = [name for name in selected_formats(metafunc.config) if name in single_pass]
        params = [(model, fmt) for model in _registered(metafunc, MODEL_MARK) for fmt in formats]
        metafunc.parametrize("artifact", params, indirect=True, ids=[f"{m}/{f}" for m, f in params])
    if "generative" in metafunc.fixturenames:
        models = _registered(metafunc, GENERATIVE_MARK)
        metafunc.parametrize("generative", models, indirect=True, ids=models)


def _registered(metafunc: pytest.Metafunc, mark: str) -> list[str]:
    """The models marked `mark` in the conftest files and the test module, by name (`--deploycheck-models`)."""
    models: dict[str, Any] = {}
    for plugin in metafunc.config.pluginmanager.get_plugins():
        if getattr(plugin, "__file__", "").endswith("conftest.py"):
            models.update(model_functions(plugin, mark))
    models.update(model_functions(metafunc.module, mark))
    wanted = option(metafunc.config, "models")
    names = {name.strip() for name in wanted.split(",") if name.strip()} if wanted else set(models)
    return sorted(name for name in models if name in names)


@pytest.fixture(scope="session")
def _deploycheck_exports(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Any:
    from deploycheck.exporting import ExportSession
    from deploycheck.machine import share_cores

    config = request.config
    if hasattr(config, "workerinput"):  # one of the run's pytest-xdist workers: its share of the cores
        share_cores(config.workerinput["workercount"])
    configured = option(config, "artifacts")
    if configured:
        artifacts_dir = Path(configured)
    elif getattr(config, "cache", None) is not None:
        artifacts_dir = config.cache.mkdir("deploycheck-artifacts")
    else:
        artifacts_dir = tmp_path_factory.getbasetemp().parent / "deploycheck-artifacts"
    sign_key = option(config, "sign-key")
    exports = ExportSession(artifacts_dir, lock_dir=tmp_path_factory.getbasetemp().parent,
                            progress=terminal_progress(config),
                            sign_key=str(config.rootpath / sign_key) if sign_key else None)
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
def generative(request: pytest.FixtureRequest) -> Any:
    """One generative model's `GenerativeSpec` (parametrized over those registered with
    `@deploycheck.generative_model`), for `deploycheck.assert_generation`. The test is marked with the model's
    name, so a failure before its report (an export that raised) still fails the model in the summary."""
    request.node.user_properties.append((GENERATIVE_MODEL_PROPERTY, request.param))
    return request.getfixturevalue(request.param)


@pytest.fixture
def deploycheck(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
                _deploycheck_exports: Any) -> Any:
    """The gate's checks (`assert_parity`, ...); what they measure goes into the end-of-run summary."""
    from deploycheck.gate import Gate
    from deploycheck.generation.check import GenerationCheck

    def record(payload: Row) -> None:
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
    generation = GenerationCheck(
        _deploycheck_exports.artifacts_dir / "generative", lambda data: request.node.user_properties.append(
            (GENERATION_PROPERTY, data)), baseline_settings(config)[0] if mode is not None else None, mode,
        accepted_store(config), selected_formats(config) if option(config, "formats") else None, pytest.skip,
        _deploycheck_exports.sign_key)
    budget = option(config, "budget")
    pairs = config.stash.get(PAIRS, 0) or 1
    return Gate(record, bench_time_s=float(option(config, "bench-time")),
                bench_lock=tmp_path_factory.getbasetemp().parent / "deploycheck-bench.lock",
                skip_bench=pytest.skip if option(config, "no-bench") else None, baselines=baselines,
                exporter=_deploycheck_exports.artifact, resolve=request.getfixturevalue,
                budget_s=float(budget) / pairs if budget else None, progress=terminal_progress(config),
                spent=config.stash.setdefault(TIMING_SPENT, {}), not_applicable=pytest.skip, generation=generation)


