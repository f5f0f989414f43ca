"""git, run the two ways deploycheck needs it: as a command that must succeed (`--deploycheck-against`, `bisect`:
an error names what asked and quotes git), and as a question that may have no answer (the commit and branch a
run records: outside a repository, or without git installed, a run still runs and records none)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Sequence
from pathlib import Path

from deploycheck.errors import DeployCheckError

# CI's own names for the branch under test, first the pull request's (a CI checkout is often a detached HEAD)
BRANCH_VARIABLES = ("GITHUB_HEAD_REF", "GITHUB_REF_NAME", "CI_MERGE_REQUEST_SOURCE_BRANCH_NAME", "CI_COMMIT_REF_NAME")


def git(args: Sequence[str], cwd: Path, context: str, timeout_s: float = 120) -> str:
    """git's output, or a `DeployCheckError` that names what asked (`context`) and git's own message."""
    try:
        done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=timeout_s)
    except (OSError, subprocess.SubprocessError) as exc:
        raise DeployCheckError(f"{context}: git {' '.join(args)} failed to run ({exc})") from exc
    if done.returncode != 0:
        raise DeployCheckError(f"{context}: git {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout.strip()


def git_answer(args: Sequence[str], cwd: Path) -> str | None:
    """git's output, or None where git cannot answer (no repository, no git, an error): for facts a run records
    when it can."""
    try:
        return git(args, cwd, "git", timeout_s=10) or None
    except DeployCheckError:
        return None


def current_commit(root: Path) -> str | None:
    """The current commit of the repository holding `root`, with "+dirty" for uncommitted changes."""
    commit = git_answer(["rev-parse", "HEAD"], root)
    if commit is None:
        return None
    dirty = git_answer(["status", "--porcelain", "--untracked-files=no"], root)
    return f"{commit}+dirty" if dirty else commit


def current_branch(root: Path) -> str | None:
    """The branch being tested: CI's own variable first, else git's (None for a detached HEAD)."""
    for variable in BRANCH_VARIABLES:
        if os.environ.get(variable):
            return os.environ[variable]
    branch = git_answer(["rev-parse", "--abbrev-ref", "HEAD"], root)
    return None if branch == "HEAD" else branch
