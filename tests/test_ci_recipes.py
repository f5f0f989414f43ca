"""The CI recipes in examples/ci are valid for the services that run them: the GitHub workflow against the
workflow schema and the GitLab file against GitLab's CI schema (the schemas check-jsonschema vendors), and they
use the options that make a gate work in CI."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

RECIPES = Path(__file__).parent.parent / "examples" / "ci"
SCHEMAS = {"github-actions.yml": "vendor.github-workflows", "gitlab-ci.yml": "vendor.gitlab-ci"}


def _validate(path: Path, schema: str) -> subprocess.CompletedProcess[str]:
    tool = Path(sys.executable).parent / "check-jsonschema"
    command = [str(tool)] if tool.exists() else [shutil.which("check-jsonschema") or "check-jsonschema"]
    return subprocess.run([*command, "--builtin-schema", schema, str(path)], capture_output=True, text=True,
                          timeout=120)


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_recipe_is_valid_and_gates_as_ci_needs(name: str, tmp_path: Path) -> None:
    recipe = RECIPES / name
    done = _validate(recipe, SCHEMAS[name])
    assert done.returncode == 0, done.stdout + done.stderr
    text = recipe.read_text()
    assert "report merge" in text and "--deploycheck-report" in text and ".deploycheck" in text
    assert ("fetch-depth: 0" in text) if name.startswith("github") else ('GIT_DEPTH: "0"' in text)
    broken = tmp_path / name
    broken.write_text(text.replace("script:", "scripts:", 1) if "gitlab" in name else text.replace("runs-on:",
                                                                                                   "run-on:", 1))
    assert _validate(broken, SCHEMAS[name]).returncode != 0, "the schema check catches a broken recipe"
