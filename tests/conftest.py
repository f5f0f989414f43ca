"""Test configuration of deploycheck itself: pytester for plugin runs, and exports shared by the whole session
(exporting every format takes seconds, so each model is exported once per test run)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # the helper models in tests/models.py


@pytest.fixture(scope="session")
def digits_spec():
    from deploycheck.digits import digits_spec

    return digits_spec()


@pytest.fixture(scope="session")
def digits_artifacts(digits_spec, tmp_path_factory):
    import deploycheck

    return deploycheck.export_all(digits_spec, tmp_path_factory.mktemp("digits-artifacts"))


@pytest.fixture(scope="session")
def two_io_spec():
    from models import two_io_spec

    return two_io_spec()


@pytest.fixture(scope="session")
def cache_env(tmp_path_factory):
    """Environment for subprocesses: the same weight cache as this process, so the demo model trains once."""
    env = dict(os.environ)
    env.setdefault("DEPLOYCHECK_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
    return env


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
