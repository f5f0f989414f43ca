"""`write_baselines`: what `--deploycheck-update` writes at the end of a run, and the warning when the latency
about to become a baseline was measured on a noisy machine."""

from __future__ import annotations

import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from deploycheck.accepted import AcceptedStore
from deploycheck.artifact import METADATA_FILE
from deploycheck.baseline.compare import smallest_batch
from deploycheck.baseline.store import BaselineStore, measured_sections, merge_records, record_from_row
from deploycheck.errors import BaselineError
from deploycheck.formats import get_format
from deploycheck.gitrepo import current_commit
from deploycheck.machine import environment

NOISY_SPREAD = 0.05  # window-to-window spread above which a recorded latency is called noisy


def write_baselines(directory: Path, rows: Sequence[Mapping[str, Any]], only_missing: bool = False,
                    keep_artifacts: bool = False, root: Path | None = None,
                    accepted: AcceptedStore | None = None) -> list[str]:
    """Write the baselines of measured rows (what `--deploycheck-update` / `-update-new` do at the end of a run)
    and say what was written and what was not. Sections whose own gate failed are never written; a kept
    artifact is copied into place atomically, so a failed copy leaves the previous one. Each latency section
    written names its artifact's digest, and the artifact goes into the `accepted` store, so later runs can
    time it side by side; one recorded on a noisy machine is written with a warning."""
    store = BaselineStore(directory)
    commit = current_commit(root or Path.cwd())
    written, lines = [], []
    for row in rows:
        new = record_from_row(row)
        failed = [s for s in ("parity", "accuracy") if isinstance(row.get(s), dict) and row[s].get("passed") is False]
        if failed:
            lines.append(f"  {row['model']}/{row['format']}: {', '.join(failed)} not written (its gate failed)")
        if not measured_sections(new):
            continue
        try:
            old = store.read(row["model"], row["format"])
        except BaselineError as exc:
            if only_missing:
                lines.append(f"  {exc} (left as it is)")
                continue
            old = None
        new.setdefault("environment", environment(threads=1))
        record = merge_records(old, {**new, "git_commit": commit}, only_missing)
        latency_written = "latency" in new and record.get("latency") is new["latency"]
        if latency_written:
            lines += noisy_recording(row)
            source = Path(str(row.get("artifact_path")))
            if accepted is not None and get_format(row["format"]).writes_files and (source / METADATA_FILE).is_file():
                record["accepted_artifact"] = accepted.put(source)
        if record == old:
            continue
        written.append(store.write(record))
        if keep_artifacts and row.get("artifact_path") and get_format(row["format"]).writes_files:
            _keep_artifact(Path(row["artifact_path"]), store.artifact_dir(row["model"], row["format"]))
    header = f"deploycheck: {len(written)} baseline(s) written under {directory}"
    return [header, *(f"  {path}" for path in written), *lines]


def noisy_recording(row: Mapping[str, Any]) -> list[str]:
    """A warning line when the latency about to become a baseline was measured on a noisy machine."""
    figures = smallest_batch(row.get("latency"))
    spread = float(figures.get("window_spread") or 0)
    disturbed, kept = int(figures.get("disturbed_rounds") or 0), int(figures.get("rounds") or 0)
    if spread <= NOISY_SPREAD and not figures.get("all_disturbed") and disturbed <= kept:
        return []
    return [f"  warning: {row['model']}/{row['format']}: latency recorded on a noisy machine (±{spread:.1%} "
            f"between windows, {disturbed} of {disturbed + kept} windows disturbed): verdicts from these stored "
            "figures will be inconclusive more often; record baselines on a quiet machine"]


def _keep_artifact(source: Path, target: Path) -> None:
    staging = target.with_name(f".{target.name}.staging")
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(source, staging)
    previous = target.with_name(f".{target.name}.previous")
    shutil.rmtree(previous, ignore_errors=True)
    if target.exists():
        target.rename(previous)
    staging.rename(target)
    shutil.rmtree(previous, ignore_errors=True)
