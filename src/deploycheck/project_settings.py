"""`[tool.deploycheck]` of a project's pyproject.toml, read with the standard library alone: pytest reads it when it
starts, in every run, so this must cost nothing (the rules it holds are judged later, by `baseline.rules`)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from deploycheck.errors import BaselineError


def pyproject_settings(root: Path) -> dict[str, Any]:
    """`[tool.deploycheck]` of `root/pyproject.toml` ({} when there is none)."""
    path = Path(root) / "pyproject.toml"
    if not path.is_file():
        return {}
    if sys.version_info >= (3, 11):
        import tomllib
    else:
        import tomli as tomllib
    try:
        data = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise BaselineError(f"{path}: not valid TOML ({exc})") from exc
    settings = data.get("tool", {}).get("deploycheck", {})
    if not isinstance(settings, dict):
        raise BaselineError(f"{path}: [tool.deploycheck] must be a table")
    return settings
