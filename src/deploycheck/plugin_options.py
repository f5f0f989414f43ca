"""The plugin's options (each `--deploycheck-*` flag mirrored by an ini key), the per-run state it keeps in
`config.stash`, and the settings read from them. Loaded with every pytest run, so deploycheck's heavy modules are
imported only inside the functions that need them."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from deploycheck.rows import BaselineMode

PROPERTY = "deploycheck"
GENERATION_PROPERTY = "deploycheck-generation"  # a generative report, on the test report of its check
GENERATIVE_MODEL_PROPERTY = "deploycheck-generative-model"  # the decoder a test is parametrized with


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
    _Option("sign-key", "elliptic-curve private key (PEM) that signs every artifact this run exports, accepted ones "
            "included (needs deploycheck[signing]); `deploycheck serve --verify-key` checks the signature"),
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
    _Option("history", "where every run's figures are kept: a SQLite file (relative to the rootdir) or a "
            "postgresql:// URL (needs deploycheck[postgres])", default=".deploycheck/history.sqlite"),
    _Option("no-history", "do not append this run to the history", kind="bool"),
    _Option("fail-on-change-point", "fail a model x format when this run makes a new change point in its history "
            "that makes a figure worse (a slow creep that no single run's limit caught)", kind="bool"),
    _Option("bench-time", "seconds of timing per batch size and per side-by-side comparison", default="1.0"),
    _Option("no-bench", "skip benchmarks (quick runs)", kind="bool"),
    _Option("budget", "seconds of timing for the whole run, shared evenly by the model x format pairs (each "
            "timing shortened to fit, at least one call); planned and spent are reported at the end"),
]


BASELINE_SETTINGS = pytest.StashKey[tuple[Path, list[tuple[str, Any]]]]()


AGAINST = pytest.StashKey[tuple[Path, str] | None]()


LAST_USE = pytest.StashKey[dict[str, tuple[str, str]]]()


EXPORTS = pytest.StashKey[Any]()


SPEC_ERRORS = pytest.StashKey[set[str]]()


PAIRS = pytest.StashKey[int]()


TIMING_SPENT = pytest.StashKey[dict[tuple[str, str], float]]()


def option(config: pytest.Config, name: str) -> Any:
    """An option's value: the command line first, then the ini key."""
    ini = f"deploycheck_{name.replace('-', '_')}"
    value = config.getoption(ini)
    return value if value is not None else config.getini(ini)


def selected_formats(config: pytest.Config) -> list[str]:
    """The formats to gate, single-pass and generative: `--deploycheck-formats` / the ini key, else every
    registered format but the opt-in ones (`Format.default`)."""
    from deploycheck.formats import default_formats, format_names
    from deploycheck.generation.spec import GENERATIVE_FORMATS

    selected = option(config, "formats")
    known = list(dict.fromkeys([*format_names(), *GENERATIVE_FORMATS]))
    formats = [f.strip() for f in selected.split(",") if f.strip()] if selected else default_formats()
    unknown = [f for f in formats if f not in known]
    if unknown:
        raise pytest.UsageError(f"--deploycheck-formats: unknown format(s) {unknown}; valid: {', '.join(known)}")
    return formats


def baseline_mode(config: pytest.Config) -> BaselineMode | None:
    """None when baselines are off, else "update", "update-new" or "compare"."""
    if option(config, "no-baselines") or option(config, "export-only"):
        return None
    if option(config, "update"):
        return "update"
    return "update-new" if option(config, "update-new") else "compare"


def baseline_settings(config: pytest.Config) -> tuple[Path, list[tuple[str, Any]]]:
    """The baselines directory and the rule layers, read once in `pytest_configure`."""
    return config.stash[BASELINE_SETTINGS]


def read_baseline_settings(config: pytest.Config) -> tuple[Path, list[tuple[str, Any]]]:
    """The baselines directory and the rule layers from `[tool.deploycheck]` of the rootdir's pyproject.toml."""
    from deploycheck.errors import BaselineError
    from deploycheck.project_settings import pyproject_settings

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


def history_location(config: pytest.Config) -> str | None:
    """The history store's location (a path under the rootdir or a PostgreSQL URL), None when this run keeps no
    history: `--deploycheck-no-history`, or an export-only run (what `--deploycheck-against` runs elsewhere)."""
    from deploycheck.history.store import POSTGRES_SCHEMES

    if option(config, "no-history") or option(config, "export-only"):
        return None
    location = str(option(config, "history"))
    return location if location.startswith(POSTGRES_SCHEMES) else str(config.rootpath / location)
