"""`deploycheck init`: the gate's files written into a project, new or existing, without destroying anything.

A project that already has a `conftest.py` keeps it: the models go into `conftest_deploycheck.py`, and one import
line is appended to the user's conftest (its content is otherwise untouched, and the line is added once). A test
file of the user's at `tests/test_deploy.py` is left alone and the gate's tests go beside it. A file init wrote
before is recognised and left as it is; `force` rewrites one that differs, after keeping a copy (`NAME.bak`).
"""

from __future__ import annotations

from pathlib import Path

from deploycheck.errors import DeployCheckError
from deploycheck.init_templates import CONFTEST_TEMPLATE, MODELS_TEMPLATE, PYPROJECT_TEMPLATE, TEST_TEMPLATE
from deploycheck.jsonio import write_text

MODELS_MODULE = "conftest_deploycheck"
IMPORT_LINE = f"from {MODELS_MODULE} import *  # noqa: F401,F403  (added by deploycheck init: the models it gates)"


def init_project(root: Path, force: bool = False) -> list[str]:
    """Write the gate's files into `root`; the lines returned say what was written, added or left alone. A file
    of the user's that init would have to replace is refused (`DeployCheckError`) unless `force`, which keeps
    a copy first."""
    lines: list[str] = []
    conftest = root / "conftest.py"
    if conftest.exists() and conftest.read_text() != CONFTEST_TEMPLATE:
        lines += _write(root / f"{MODELS_MODULE}.py", MODELS_TEMPLATE, force)
        text = conftest.read_text()
        if IMPORT_LINE not in text:
            write_text(conftest, text + ("" if text.endswith("\n") or not text else "\n") + IMPORT_LINE + "\n")
            lines.append(f"added to {conftest} (yours, otherwise unchanged) the line that loads "
                         f"{MODELS_MODULE}.py:\n    {IMPORT_LINE}")
    else:
        lines += _write(conftest, CONFTEST_TEMPLATE, force)
    tests = root / "tests" / "test_deploy.py"
    if tests.exists() and tests.read_text() != TEST_TEMPLATE:
        lines.append(f"left {tests} alone (yours)")
        tests = tests.with_name("test_deploycheck.py")
    lines += _write(tests, TEST_TEMPLATE, force)
    pyproject = root / "pyproject.toml"
    existing = pyproject.read_text() if pyproject.exists() else ""
    if "[tool.deploycheck" not in existing:
        write_text(pyproject, existing + PYPROJECT_TEMPLATE)
        lines.append(f"{'added [tool.deploycheck] to' if existing else 'wrote'} {pyproject}")
    (root / "baselines").mkdir(exist_ok=True)
    (root / "baselines" / ".gitkeep").touch()
    lines.append(f"wrote {root / 'baselines'}/")
    return lines


def _write(path: Path, text: str, force: bool) -> list[str]:
    """Write `path` unless it already holds `text`; one that differs only with `force`, after a copy."""
    if path.exists():
        if path.read_text() == text:
            return [f"{path}: already there, left as it is"]
        if not force:
            raise DeployCheckError(f"not overwriting {path}, which differs from what init writes (use --force: "
                                   f"it keeps a copy as {path.name}.bak)")
        backup = path.with_name(path.name + ".bak")
        if backup.exists():
            raise DeployCheckError(f"not overwriting {path}: its copy {backup} exists already (move it away)")
        path.replace(backup)
        write_text(path, text)
        return [f"wrote {path} (the previous one kept as {backup})"]
    write_text(path, text)
    return [f"wrote {path}"]
