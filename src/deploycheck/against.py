"""`--deploycheck-against REF`: the accepted models exported from another git revision in the same job, so a pull
request's latency is timed side by side with its base branch's, the way continuous-benchmarking services do.

The revision is checked out in a git worktree (detached, under the cache, reused while it exists) and its own
gate is run there in a pytest subprocess with `--deploycheck-export-only`: every model x format is exported and
nothing is measured. The model code is the revision's (its conftest, its modules, found through the rootdir and
pytest's `pythonpath` setting); deploycheck is this one, so both sides are exported the same way.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from deploycheck.errors import DeployCheckError
from deploycheck.gitrepo import git

EXPORT_TIMEOUT_S = 3600


@dataclass(frozen=True)
class Revision:
    """A git revision resolved in the repository holding the gate: what the user named, and its commit."""

    ref: str
    commit: str
    toplevel: Path

    @property
    def label(self) -> str:
        return f"{self.ref} ({self.commit[:10]})"


def pull_request_base(ref: str) -> str | None:
    """The base branch to take a merge-base with: `merge-base` (the base from GITHUB_BASE_REF or GitLab's
    CI_MERGE_REQUEST_TARGET_BRANCH_NAME), `merge-base:BRANCH`, or, in a pull request, the base branch itself
    (a PR is compared with the commit it branched from, not with the base's tip, which may have moved on)."""
    base = os.environ.get("GITHUB_BASE_REF") or os.environ.get("CI_MERGE_REQUEST_TARGET_BRANCH_NAME")
    if ref.startswith("merge-base:"):
        return ref.removeprefix("merge-base:")
    if ref == "merge-base":
        if not base:
            raise DeployCheckError("--deploycheck-against merge-base: not in a pull request (GITHUB_BASE_REF is not "
                                   "set); name the branch: --deploycheck-against merge-base:origin/main")
        return f"origin/{base}"
    if base and ref in (base, f"origin/{base}"):
        return ref
    return None


def resolve(ref: str, root: Path, context: str = "--deploycheck-against") -> Revision:
    """The commit `ref` names in the repository holding `root` (the merge-base with it, for a pull request's
    base; see `pull_request_base`); a clear error, naming what asked (`context`), when there is none."""
    toplevel = Path(git(["rev-parse", "--show-toplevel"], root, context))
    base = pull_request_base(ref)
    if base is None:
        return Revision(ref, _commit(ref, root, toplevel, context), toplevel)
    merge_base = git(["merge-base", "HEAD", _commit(base, root, toplevel, context)], root, context)
    return Revision(f"merge-base with {base}", merge_base, toplevel)


def _commit(ref: str, root: Path, toplevel: Path, context: str) -> str:
    try:
        return git(["rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}"], root, context)
    except DeployCheckError as exc:
        if git(["rev-parse", "--is-shallow-repository"], root, context) == "true":
            raise DeployCheckError(f"{context} {ref}: not in this shallow clone of {toplevel}; fetch the "
                                   "history (actions/checkout: `fetch-depth: 0`; GitLab: `GIT_DEPTH: 0`; or run "
                                   "`git fetch --unshallow`)") from exc
        raise DeployCheckError(f"{context} {ref}: no commit of that name in {toplevel}") from exc


def artifacts_dir(revision: Revision, cache: Path) -> Path:
    """Where the revision's artifacts are exported (`<model>/<format>/`): the same path in every xdist worker."""
    return cache / revision.commit / "artifacts"


def export_revision(revision: Revision, root: Path, cache: Path, pytest_args: Sequence[str] = (),
                    context: str = "--deploycheck-against") -> Path:
    """Export every model x format of the gate at `revision` (rootdir `root` in this checkout) and return the
    artifacts directory. The worktree and the exports are reused by later runs against the same commit."""
    tree = cache / revision.commit / "tree"
    if not (tree / ".git").exists():
        tree.parent.mkdir(parents=True, exist_ok=True)
        git(["worktree", "add", "--detach", "--force", str(tree), revision.commit], revision.toplevel, context)
    out = artifacts_dir(revision, cache)
    workdir = tree / Path(root).resolve().relative_to(revision.toplevel.resolve())
    if not workdir.is_dir():
        raise DeployCheckError(f"{context} {revision.label}: {workdir.name!r} does not exist at that "
                               "revision, so it has no gate to export")
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:randomly", "--deploycheck-export-only",
               "--deploycheck-no-baselines", "--deploycheck-artifacts", str(out), *pytest_args]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_XDIST")}
    done = subprocess.run(command, cwd=workdir, capture_output=True, text=True, env=env,
                          timeout=EXPORT_TIMEOUT_S)
    if done.returncode not in (0, 5):  # 5: nothing collected there (a gate added after that revision)
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-15:])
        raise DeployCheckError(f"{context} {revision.label}: exporting that revision's models failed "
                               f"(pytest exit {done.returncode} in {workdir}):\n{tail}")
    return out
