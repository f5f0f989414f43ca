"""Test configuration of deploycheck itself: pytester for plugin runs, and exports shared by the whole session
(exporting every format takes seconds, so each model is exported once per test run)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # the helper models in tests/models.py

# The suite's pytest-xdist workers share the cores: each computes on one thread, and so does every process a test
# starts (they inherit it). torch's OpenMP pool, and through deploycheck's loaders ONNX Runtime's and OpenVINO's,
# would otherwise take every core in each of them, and threads that outnumber the cores spin waiting for each other
# (the quiet suite: 271 s that way, 245 s this way). Timings set their own thread counts; a value the caller
# exported is kept. Set before anything imports torch.
os.environ.setdefault("OMP_NUM_THREADS", "1")


def _run_directory(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The test run's own directory, shared by the pytest-xdist workers (the one above each worker's)."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The modules with end-to-end (`slow`) tests first, the modules of short unit tests last, each in file order.
    pytest-xdist hands out one module at a time (`--dist loadscope`, in collection order with
    `--no-loadscope-reorder`), and a worker takes its next module while its last two tests still run. Its own order
    (most tests first) left the one-test end-to-end modules for last: one worker then ran the two it had taken
    for a minute while the other had nothing left. Longest first, the run ends on short tests both workers share."""
    slow_modules = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow_modules)


@pytest.fixture(scope="session", autouse=True)
def _one_weight_cache(tmp_path_factory):
    """The demo weights (the digits CNN and its compressed variants) trained once per test run, in the run's
    directory, and shared by both workers and every subprocess (which inherit the environment); a cache the
    caller configured is kept."""
    previous = os.environ.get("DEPLOYCHECK_CACHE")
    os.environ.setdefault("DEPLOYCHECK_CACHE", str(_run_directory(tmp_path_factory) / "weights"))
    yield
    if previous is None:
        os.environ.pop("DEPLOYCHECK_CACHE", None)


@pytest.fixture(scope="session")
def digits_spec():
    from deploycheck.digits import digits_spec

    return digits_spec()


@pytest.fixture(scope="session")
def digits_artifacts(digits_spec, tmp_path_factory):
    """Every format of the digits CNN, exported once per test run, laid out as the plugin's artifacts directory
    (`<model>/<format>`) by the plugin's own `ExportSession`: the pytest-xdist workers share one directory and a
    lock per format, and a worker reuses through the export cache what the other wrote. The second worker takes
    the formats from the other end of the list, so the two export side by side and meet in the middle (with one
    lock for all, one worker waited half a minute for the other). No test writes into these; those that alter one
    copy it (`digits_gate_artifacts`)."""
    from deploycheck.errors import FormatUnavailable
    from deploycheck.exporting import ExportSession
    from deploycheck.formats import default_formats

    shared = _run_directory(tmp_path_factory)
    session = ExportSession(shared / "digits-artifacts", lock_dir=shared)
    names = list(digits_spec.formats or default_formats())
    exported = {}
    for name in reversed(names) if os.environ.get("PYTEST_XDIST_WORKER", "gw0") != "gw0" else names:
        try:
            exported[name] = session.artifact(digits_spec, name)
        except FormatUnavailable:
            continue
    return {name: exported[name] for name in names if name in exported}


@pytest.fixture
def digits_gate_artifacts(digits_artifacts, tmp_path) -> Path:
    """A copy of the digits CNN's exports for a gate run's `--deploycheck-artifacts` (its export cache finds
    them, as a CI cache step restores them), so that runs through the plugin export only what they change."""
    copy = tmp_path / "gate-artifacts"
    shutil.copytree(next(iter(digits_artifacts.values())).path.parent.parent, copy)
    return copy


class _LibraryModulesStayImported:
    """A plugin for an in-process pytester run: it notes the modules loaded when the run ends, so that the
    libraries the run imported (torch, ONNX Runtime, onnxscript...) can be put back after pytester restores its
    `sys.modules` snapshots (after each run, and when its fixture ends). Removed, they would be imported again by
    the next run, and compiled extensions refuse that ("cannot load module more than once per process")."""

    def __init__(self) -> None:
        self.loaded: dict[str, object] = {}

    def pytest_unconfigure(self) -> None:
        self.loaded = dict(sys.modules)


_LIBRARY_MODULES = pytest.StashKey[dict]()


def _put_back(modules: dict) -> None:
    for name, module in modules.items():
        sys.modules.setdefault(name, module)


@pytest.fixture
def run_in_process(pytester, request):
    """`pytester.runpytest_inprocess` for a gate run that needs no process of its own: it saves the seconds a
    subprocess spends importing torch and the exporters again. The project's own modules (its conftest and test
    files, under `pytester.path`) are dropped after each run, as pytester does, so the next run reads them anew;
    runs with pytest-xdist workers, or that must start clean, stay in `runpytest_subprocess`."""
    libraries = request.node.stash.setdefault(_LIBRARY_MODULES, {})

    def run(*args: str) -> pytest.RunResult:
        kept = _LibraryModulesStayImported()
        result = pytester.runpytest_inprocess(*args, plugins=[kept])
        for name, module in kept.loaded.items():
            file = getattr(module, "__file__", None)
            if not (file and Path(file).is_relative_to(pytester.path)):
                libraries[name] = module
        _put_back(libraries)
        return result

    return run


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item):
    """After the pytester fixture restored its snapshot: the libraries an in-process run imported stay."""
    try:
        return (yield)
    finally:
        _put_back(item.stash.get(_LIBRARY_MODULES, {}))


@pytest.fixture(scope="session")
def shared_decoder_exports(tmp_path_factory):
    """`exports(spec, formats)`: `spec`'s decoder exported once per test run in each of `formats` that is installed,
    by format, for the tests that only read them (modules on either pytest-xdist worker share them). Each export
    lives in a directory named by its cache key (weights, code, format, options, library versions), under a lock
    of its own: a spec that differs in anything an export depends on gets its own export, never another's. (A
    `.pt2` export loads without `trust_code` only in the worker that wrote it: ask for those from one module.)"""
    from filelock import FileLock

    from deploycheck.errors import FormatUnavailable
    from deploycheck.generation.cache import Decode
    from deploycheck.generation.formats import cache_key, export_decoder

    shared = _run_directory(tmp_path_factory) / "decoders"
    shared.mkdir(exist_ok=True)

    def exports(spec, formats: tuple[str, ...]) -> dict[str, Path]:
        found = {}
        for format_name in formats:
            key = cache_key(spec, format_name, Decode)[:16]
            try:
                with FileLock(str(shared / f"{key}.lock")):
                    found[format_name] = export_decoder(spec, format_name, shared / key / format_name)
            except FormatUnavailable:
                continue
        return found

    return exports


@pytest.fixture(scope="session")
def two_io_spec():
    from models import two_io_spec

    return two_io_spec()


@pytest.fixture(scope="session")
def cache_env(_one_weight_cache):
    """Environment for subprocesses: the same weight cache as this process, so the demo model trains once."""
    return dict(os.environ)


@pytest.fixture(scope="session", autouse=True)
def _subprocess_pytest_loads_only_the_plugins_it_needs():
    """The suite's pytest subprocesses (pytester runs, the worktree exports of `--deploycheck-against` and
    `deploycheck bisect`) load deploycheck and xdist only: autoloading every installed plugin (hypothesis,
    schemathesis, hydra...) costs about 5 s a run, a third of a small gate run's time."""
    wanted = {"PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1",
              "PYTEST_PLUGINS": "deploycheck.plugin,xdist.plugin,xdist.looponfail"}
    saved = {name: os.environ.get(name) for name in wanted}
    os.environ.update(wanted)
    yield
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@pytest.fixture(scope="session", autouse=True)
def _nothing_left_in_the_working_directory():
    """Nothing the suite runs may write into the directory it runs from (ONNX Runtime's tools once left
    uuid-named external-data files there): files appearing at the top of the checkout fail the session."""
    root = Path.cwd()
    before = {entry.name for entry in root.iterdir()}
    yield
    ignored = {".pytest_cache", ".hypothesis", "__pycache__", ".mypy_cache", ".ruff_cache"}
    added = sorted({entry.name for entry in root.iterdir()} - before - ignored)
    assert not added, f"the test run wrote {added} into {root}"


def _postgres_bin() -> Path | None:
    """The directory of PostgreSQL's server programs (Debian's `postgresql` package), None when not installed."""
    found = shutil.which("pg_config")
    if found:
        bindir = Path(subprocess.run([found, "--bindir"], capture_output=True, text=True).stdout.strip())
        if (bindir / "initdb").exists():
            return bindir
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    return candidates[-1].parent if candidates else None


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory):
    """A real PostgreSQL server on loopback for this test session (initdb in a temporary directory, trust
    authentication, stopped at the end); skipped, with the reason, where the server is not installed."""
    bindir = _postgres_bin()
    if bindir is None:
        pytest.skip("PostgreSQL is not installed (Debian: apt-get install postgresql; .ci/run installs it)")
    pytest.importorskip("psycopg", reason="pip install 'deploycheck[postgres]'")
    root = tmp_path_factory.mktemp("postgres")
    as_user: list[str] = []
    if os.geteuid() == 0:  # initdb refuses to run as root: the server runs as the package's postgres user
        if shutil.which("runuser") is None:
            pytest.skip("running as root without runuser: PostgreSQL cannot be started")
        as_user = ["runuser", "-u", "postgres", "--"]
        shutil.chown(root, "postgres")
        for parent in root.parents:
            if parent == Path(tempfile.gettempdir()):
                break
            parent.chmod(parent.stat().st_mode | 0o711)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    data = root / "data"
    subprocess.run([*as_user, str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres"],
                   check=True, capture_output=True, timeout=120)
    subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-l", str(root / "log"), "-w", "-o",
                    f"-p {port} -k {root} -c listen_addresses=127.0.0.1", "start"], check=True,
                   capture_output=True, timeout=120)
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}"
    finally:
        subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "stop"],
                       capture_output=True, timeout=120)


@pytest.fixture(params=["sqlite", "postgres"])
def history_location(request, tmp_path):
    """Where a history test writes: a SQLite file, or a new database on the session's PostgreSQL server."""
    if request.param == "sqlite":
        return str(tmp_path / "history.sqlite")
    import psycopg

    server = request.getfixturevalue("postgres_server")
    name = f"history_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(f"{server}/postgres", autocommit=True) as connection:
        connection.execute(f"CREATE DATABASE {name}")
    return f"{server}/{name}"
