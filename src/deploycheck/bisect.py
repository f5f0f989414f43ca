"""`deploycheck bisect GOOD BAD --model M --format F`: the first commit between two revisions where a figure
stepped, as `asv find` and `git bisect` find it, with deploycheck's own measurements.

Each commit probed is exported in a git worktree by its own gate (`--deploycheck-against`'s machinery: the
revision's model code, this deploycheck), and its artifact is timed interleaved with GOOD's and with BAD's in
this process, so every verdict is a ratio measured in one machine state, never a comparison with a time taken
earlier. A probe is bad when its figure is closer to BAD's than to GOOD's (on a log scale); the search assumes,
as `git bisect` does, that the figure changed once. Before searching, the step from GOOD to BAD must be real:
its interval must exclude no change and it must exceed `min_change`, or there is nothing to find. `size` is
read from the sidecars (exact, no timing). The cost counters of the commits on either side of the step say what
changed in the graph.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from deploycheck.against import Revision, artifacts_dir, export_revision, resolve
from deploycheck.artifact import Artifact, package_versions, read_metadata
from deploycheck.costs import cost_change
from deploycheck.errors import DeployCheckError
from deploycheck.exporting import load_artifact
from deploycheck.formats import get_format
from deploycheck.gitrepo import git
from deploycheck.latency import interleaved_times
from deploycheck.stats import bootstrap_ratio_interval

CONTEXT = "revision"  # how git errors name what they were about
STATISTICS: dict[str, Callable[[np.ndarray], Any]] = {
    "p50": lambda x: np.median(x, axis=-1),
    "mean": lambda x: np.mean(x, axis=-1),
    "p90": lambda x: np.percentile(x, 90, axis=-1),
}
METRICS = (*STATISTICS, "size")


@dataclass(frozen=True)
class Probe:
    """One commit measured against both ends: its figure over GOOD's and over BAD's, and which end it is."""

    commit: str
    subject: str
    vs_good: float
    vs_bad: float
    bad: bool


@dataclass
class BisectResult:
    """The step GOOD -> BAD, every probe in the order measured, and the first bad commit with its counters' change."""

    metric: str
    step: float
    step_interval: tuple[float, float]
    probes: list[Probe] = field(default_factory=list)
    first_bad: Probe | None = None
    last_good: str = ""
    costs: str = ""

    def step_line(self) -> str:
        low, high = self.step_interval
        return f"{self.metric}: BAD / GOOD = x{self.step:.3f} [{low:.3f}, {high:.3f}]"

    @staticmethod
    def probe_line(probe: Probe) -> str:
        verdict = "bad" if probe.bad else "good"
        return (f"  {probe.commit[:10]}  x{probe.vs_good:.3f} of GOOD, x{probe.vs_bad:.3f} of BAD: {verdict}  "
                f"{probe.subject}")

    def conclusion(self) -> list[str]:
        if self.first_bad is None:
            return []
        found = self.first_bad
        lines = [f"first bad commit: {found.commit} {found.subject} ({self.metric} x{found.vs_good:.3f} of GOOD; "
                 f"last good: {self.last_good[:10]})"]
        return lines + ([f"  {self.costs}"] if self.costs else [])

    def lines(self) -> list[str]:
        return [self.step_line(), *(self.probe_line(p) for p in self.probes), *self.conclusion()]


def commits_between(good: Revision, bad: Revision) -> list[str]:
    """The commits after GOOD up to and including BAD, oldest first, on the path between them."""
    try:
        git(["merge-base", "--is-ancestor", good.commit, bad.commit], good.toplevel, CONTEXT)
    except DeployCheckError as exc:
        raise DeployCheckError(f"{good.label} is not an ancestor of {bad.label}") from exc
    listed = git(["rev-list", "--reverse", "--ancestry-path", f"{good.commit}..{bad.commit}"], good.toplevel, CONTEXT)
    return listed.split()


class Bisection:
    """Exports and measures revisions of one model x format under a gate directory `root`."""

    def __init__(self, root: Path, cache: Path, model: str, format_name: str, metric: str = "p50",
                 batch_size: int = 1, time_s: float = 1.0, min_change: float = 0.03,
                 confidence: float = 0.99, report: Callable[[str], None] = lambda line: None) -> None:
        if metric not in METRICS:
            raise DeployCheckError(f"metric {metric!r} is not one of {', '.join(METRICS)}")
        if not get_format(format_name).writes_files:
            raise DeployCheckError(f"{format_name} keeps the model in memory, with this checkout's code; "
                                   "bisect a format that writes files (onnx, torch_export, ...)")
        self.root, self.cache, self.model, self.format = Path(root), Path(cache), model, format_name
        self.metric, self.batch_size, self.time_s = metric, batch_size, time_s
        self.min_change, self.confidence, self.report = min_change, confidence, report
        self._loaded: dict[str, Artifact] = {}

    def artifact(self, revision: Revision) -> Artifact:
        """The model x format exported at `revision` by its own gate (reused when already exported)."""
        if revision.commit not in self._loaded:
            out = artifacts_dir(revision, self.cache) / self.model / self.format
            if not self._reusable_export(out):
                self.report(f"exporting {self.model}/{self.format} at {revision.label}")
                args = [f"--deploycheck-models={self.model}", f"--deploycheck-formats={self.format}"]
                export_revision(revision, self.root, self.cache, args, CONTEXT)
            if not out.is_dir():
                raise DeployCheckError(f"{revision.label} exports no {self.model}/{self.format} "
                                       f"(nothing in {artifacts_dir(revision, self.cache)})")
            self._loaded[revision.commit] = load_artifact(out, trust_code=True)  # this repository's code, exported here
        return self._loaded[revision.commit]

    def _reusable_export(self, out: Path) -> bool:
        """Whether `out` holds an export of this commit made by the same deploycheck and runtime versions (a
        commit's code does not change, so such an export is what a new one would be)."""
        try:
            recorded = read_metadata(out).get("versions")
        except DeployCheckError:
            return False
        return bool(recorded) and recorded == package_versions(get_format(self.format).packages)

    def ratio(self, new: Artifact, old: Artifact) -> tuple[float, float, float]:
        """`metric(new) / metric(old)` with its bootstrap interval, timed interleaved (exact for `size`)."""
        if self.metric == "size":
            value = new.size_bytes / old.size_bytes
            return value, value, value
        new_times, old_times = interleaved_times(new, old, batch_size=self.batch_size, max_time_s=self.time_s)
        statistic = STATISTICS[self.metric]
        low, high = bootstrap_ratio_interval(new_times, old_times, self.confidence, statistic=statistic)
        return float(statistic(new_times) / statistic(old_times)), low, high

    def run(self, good_ref: str, bad_ref: str) -> BisectResult:
        good, bad = resolve(good_ref, self.root, CONTEXT), resolve(bad_ref, self.root, CONTEXT)
        commits = commits_between(good, bad)
        if not commits:
            raise DeployCheckError(f"no commit after {good.label} up to {bad.label}")
        good_artifact, bad_artifact = self.artifact(good), self.artifact(bad)
        step, low, high = self.ratio(bad_artifact, good_artifact)
        result = BisectResult(self.metric, step, (low, high))
        if abs(math.log(step)) < math.log1p(self.min_change) or low <= 1 <= high:
            raise DeployCheckError(f"no step to find: {self.metric} of {bad.label} is x{step:.3f} "
                                   f"[{low:.3f}, {high:.3f}] of {good.label} (a step must exceed "
                                   f"{self.min_change:.0%} and its interval exclude no change)")
        self.report(result.step_line())
        first, last = 0, len(commits) - 1  # the first bad commit lies in commits[first..last]; commits[-1] is BAD
        while first < last:
            middle = (first + last) // 2
            probe = self.probe(Revision(commits[middle], commits[middle], good.toplevel), good_artifact, bad_artifact)
            result.probes.append(probe)
            self.report(result.probe_line(probe))
            first, last = (first, middle) if probe.bad else (middle + 1, last)
        found = next((p for p in result.probes if p.commit == commits[first]), None)
        result.first_bad = found or Probe(commits[first], self.subject(commits[first]), step, 1.0, True)
        result.last_good = commits[first - 1] if first else good.commit
        before = self._loaded.get(result.last_good)
        after = self._loaded.get(commits[first])
        if before is not None and after is not None:
            result.costs = cost_change(before.metadata.get("counters"), after.metadata.get("counters"))
        return result

    def probe(self, revision: Revision, good: Artifact, bad: Artifact) -> Probe:
        artifact = self.artifact(revision)
        vs_good, vs_bad = self.ratio(artifact, good)[0], self.ratio(artifact, bad)[0]
        return Probe(revision.commit, self.subject(revision.commit), vs_good, vs_bad,
                     abs(math.log(vs_bad)) < abs(math.log(vs_good)))

    def subject(self, commit: str) -> str:
        return git(["log", "-1", "--format=%s", commit], self.root, CONTEXT)
