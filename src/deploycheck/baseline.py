"""The `baselines/` store and the regression rules: what a release measured, and whether a new run fell behind it.

One JSON file per model x format (`baselines/<model>/<format>.json`), keys sorted, written atomically. A record
holds what the gate measured: size, parity statistics, accuracy and drop, latency per batch size (summary
figures plus a compact set of order statistics and the speed of a fixed reference workload timed in the same
run), speedups, the environment record and the git commit.

Latency from stored figures is judged only as far as figures from another process can support it. The tail
(p90 and above, max) and throughput are reported, not failed: a tail is made of the scheduler's stalls, which
no stored figure predicts (judged side by side only, see `deploycheck.accepted`). The centre (p50, mean) is
failed only when the change exceeds its limit by more than the noise the runs themselves measured (the spread
between timing windows, now and when recorded), the bootstrap interval excludes no change, and it holds for both
readings of the machine: as measured, and divided by the reference workload's median (when the reference ran
more than `machine_tolerance` faster or slower than at recording time, the machine changed, and the truth lies
between those two readings). It passes only when both readings, noise included, stay within the limit.
Anything between is "inconclusive", with the reason, never a silent pass; so is a machine whose reference ran
more than `max_machine_ratio` times faster or slower, or whose instruction sets differ.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np

from deploycheck.errors import BaselineError
from deploycheck.parity import format_table

SCHEMA = 1
SECTIONS = ("size", "parity", "accuracy", "latency", "speedup")
OK, REGRESSED, INCONCLUSIVE, MISSING, REPORTED = "ok", "REGRESSED", "inconclusive", "missing", "reported"
TAIL_FROM = 75.0  # percentiles above this are the tail: judged side by side only
UPDATE_HINT = "run with --deploycheck-update to accept the new figures"
_LIMIT_RE = re.compile(r"^\s*(p\d{1,2}(?:\.\d+)?|mean)\s*:\s*(\d+(?:\.\d+)?)\s*(%?)\s*$")


@dataclass(frozen=True)
class LatencyLimit:
    """A latency statistic and how much slower it may get, e.g. `p50:10%` (a 10% increase)."""

    statistic: str
    limit: float

    @classmethod
    def parse(cls, text: str) -> LatencyLimit:
        match = _LIMIT_RE.match(str(text))
        if not match:
            raise BaselineError(f"latency rule {text!r}: expected STATISTIC:LIMIT such as 'p50:10%' or 'p99:0.25'")
        statistic, number, percent = match.groups()
        return cls(statistic, float(number) / 100 if percent else float(number))

    @property
    def is_tail(self) -> bool:
        """Whether this statistic is in the tail, which stored figures from another process cannot judge."""
        return self.statistic != "mean" and float(self.statistic[1:]) > TAIL_FROM

    def quantile(self, samples: np.ndarray, axis: int = -1) -> Any:
        if self.statistic == "mean":
            return samples.mean(axis=axis)
        return np.percentile(samples, float(self.statistic[1:]), axis=axis)

    def __str__(self) -> str:
        return f"{self.statistic}:{self.limit:.0%}"


@dataclass(frozen=True)
class Rules:
    """How far a new run may fall behind its baseline (fractions and factors; every field overridable as data).

    `accuracy_drop`: accuracy points below the baseline's (0.005 is half a point); `agreement_drop`: the same for
    top-1 agreement with the reference; `parity_growth`: factor by which the max abs error may grow, ignoring
    errors below `parity_floor`; `size_growth`: fraction; `latency`: `LatencyLimit`s judged at the smallest batch
    size; `throughput_drop`: fraction, judged at the largest batch size; `confidence`: of the bootstrap interval;
    `max_machine_ratio`: beyond this difference in reference-workload speed a latency verdict is inconclusive;
    `machine_tolerance`: a reference workload within this fraction of its recorded speed counts as the same
    machine (the reference's own median moves by up to ~9% between fresh processes here, so normalising by it
    inside that band would add noise, not remove it).
    """

    accuracy_drop: float = 0.005
    agreement_drop: float = 0.01
    parity_growth: float = 2.0
    parity_floor: float = 1e-5
    size_growth: float = 0.05
    latency: tuple[LatencyLimit, ...] = (LatencyLimit("p50", 0.10), LatencyLimit("p99", 0.25))
    throughput_drop: float = 0.10
    confidence: float = 0.99
    max_machine_ratio: float = 2.0
    machine_tolerance: float = 0.10

    def merged(self, data: Mapping[str, Any] | None, source: str) -> Rules:
        """These rules with the keys of `data` replaced; unknown keys and bad values raise, naming `source`."""
        if not data:
            return self
        known = {f.name for f in fields(self)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise BaselineError(f"{source}: unknown baseline rule(s) {unknown}; known: {', '.join(sorted(known))}")
        changes: dict[str, Any] = {}
        for key, value in data.items():
            if key == "latency":
                items = value.split(",") if isinstance(value, str) else list(value)
                changes[key] = tuple(LatencyLimit.parse(item) for item in items if str(item).strip())
            else:
                if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                    raise BaselineError(f"{source}: rule {key}={value!r} must be a non-negative number")
                changes[key] = float(value)
        return replace(self, **changes)


def resolve_rules(format_name: str, *layers: tuple[str, Mapping[str, Any] | None]) -> Rules:
    """Defaults, then each `(source, data)` layer in order (e.g. pyproject, then the spec). A layer's keys that
    name a format hold overrides for that format only and win over the layer's general keys."""
    from deploycheck.formats import format_names

    formats = set(format_names())
    rules = Rules()
    for source, data in layers:
        if not data:
            continue
        general = {k: v for k, v in data.items() if k not in formats}
        rules = rules.merged(general, source)
        specific = data.get(format_name)
        if specific is not None:
            if not isinstance(specific, Mapping):
                raise BaselineError(f"{source}: rules for format {format_name!r} must be a table of rules")
            rules = rules.merged(specific, f"{source} [{format_name}]")
    return rules


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


@dataclass(frozen=True)
class Finding:
    """One rule applied to one metric."""

    metric: str
    baseline: str
    obtained: str
    change: str
    limit: str
    status: str
    note: str = ""

    def row(self) -> list[str]:
        return [self.metric, self.baseline, self.obtained, self.change, self.limit, self.status, self.note]


@dataclass
class Comparison:
    """A new measurement of one model x format against its baseline."""

    model: str
    format: str
    source: str
    findings: list[Finding] = field(default_factory=list)

    @property
    def regressed(self) -> list[Finding]:
        return [f for f in self.findings if f.status in (REGRESSED, MISSING)]

    @property
    def inconclusive(self) -> list[Finding]:
        return [f for f in self.findings if f.status == INCONCLUSIVE]

    @property
    def passed(self) -> bool:
        return not self.regressed

    @property
    def status(self) -> str:
        return "FAIL" if self.regressed else INCONCLUSIVE if self.inconclusive else OK

    def short(self) -> str:
        """A few words for the summary table's "vs baseline" column: what fell behind or could not be judged,
        else the change of the first latency statistic, else "same"."""
        problems = self.regressed + self.inconclusive
        if problems:
            return "; ".join(f"{f.metric} {f.change.split(' [')[0]} {f.status}".strip() for f in problems[:2])
        latency = [f for f in self.findings if " @ batch " in f.metric]
        return f"{latency[0].metric.split(' @')[0]} {latency[0].change.split(' [')[0]}" if latency else "same"

    def table(self) -> str:
        return format_table(["metric", "baseline", "obtained", "change", "limit", "status", "note"],
                            [f.row() for f in self.findings])

    def __str__(self) -> str:
        verdict = ("regressed" if self.regressed else "inconclusive (see notes)" if self.inconclusive
                   else "within limits")
        text = f"{self.model}/{self.format} against its baseline {self.source}: {verdict}\n{self.table()}"
        if self.regressed:
            text += f"\n\nIf the change is intended, {UPDATE_HINT}."
        return text

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "status": self.status, "passed": self.passed, "change": self.short(),
                "findings": [vars(f) for f in self.findings]}


class BaselineStore:
    """`root/<model>/<format>.json`, plus `root/<model>/<format>.artifact/` when artifacts are kept."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def path(self, model: str, format_name: str) -> Path:
        return self.root / model / f"{format_name}.json"

    def artifact_dir(self, model: str, format_name: str) -> Path:
        return self.root / model / f"{format_name}.artifact"

    def read(self, model: str, format_name: str) -> dict[str, Any] | None:
        """The stored record, None when there is none; a file that cannot be used raises naming it."""
        path = self.path(model, format_name)
        if not path.exists():
            return None
        return read_record(path)

    def write(self, record: dict[str, Any]) -> Path:
        from deploycheck.report import write_json

        path = self.path(record["model"], record["format"])
        write_json(path, record)
        return path

    def entries(self) -> list[tuple[str, str]]:
        """Every (model, format) with a stored record."""
        if not self.root.is_dir():
            return []
        return sorted((p.parent.name, p.stem) for p in self.root.glob("*/*.json"))


def read_record(path: Path) -> dict[str, Any]:
    """Load one baseline record (or report row) and check its shape, so a hand-broken file is named, not trusted."""
    try:
        record = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError) as exc:
        raise BaselineError(f"baseline {path}: cannot be read ({exc})") from exc
    except json.JSONDecodeError as exc:
        raise BaselineError(f"baseline {path}: not valid JSON ({exc}); fix it or rewrite it with "
                            "--deploycheck-update") from exc
    if not isinstance(record, dict) or not isinstance(record.get("model"), str) or \
            not isinstance(record.get("format"), str):
        raise BaselineError(f"baseline {path}: expected an object with 'model' and 'format'; rewrite it with "
                            "--deploycheck-update")
    if not isinstance(record.get("schema", SCHEMA), int):
        raise BaselineError(f"baseline {path}: 'schema' must be an integer; rewrite it with --deploycheck-update")
    if record.get("schema", SCHEMA) > SCHEMA:
        raise BaselineError(f"baseline {path}: schema {record['schema']} is newer than this deploycheck "
                            f"understands ({SCHEMA}); upgrade deploycheck")
    for section in ("parity", "accuracy", "latency", "speedup"):
        if section in record and not isinstance(record[section], dict):
            raise BaselineError(f"baseline {path}: '{section}' must be an object")
    bad = _impossible_figure(record)
    if bad:
        raise BaselineError(f"baseline {path}: {bad}; a figure that is not a finite number would turn its rule "
                            "off. Fix the file or rewrite it with --deploycheck-update")
    return record


_NON_NEGATIVE = re.compile(r"(_ms|_per_s|bytes|calls|rounds|max_abs|parameters|spread)$")


def _impossible_figure(value: Any, where: str = "") -> str | None:
    """Where a record holds NaN or an infinity, or a negative size, time, count or error (None when nowhere)."""
    if isinstance(value, dict):
        for key, item in value.items():
            found = _impossible_figure(item, f"{where}.{key}" if where else str(key))
            if found:
                return found
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found = _impossible_figure(item, f"{where}[{index}]")
            if found:
                return found
    elif isinstance(value, float) and not math.isfinite(value):
        return f"{where} is {value}"
    elif isinstance(value, (int, float)) and not isinstance(value, bool) and value < 0 and \
            _NON_NEGATIVE.search(where.split("[")[0]):
        return f"{where} is negative ({value})"
    return None


def record_from_row(row: Mapping[str, Any], passed_only: bool = True) -> dict[str, Any]:
    """The baseline record of a measured row: its stored sections, leaving out any section whose own gate failed
    (a failing measurement must not become the new standard)."""
    record: dict[str, Any] = {"schema": SCHEMA, "model": row["model"], "format": row["format"]}
    if row.get("size_bytes") is not None:
        record["size"] = {"bytes": row["size_bytes"], "parameters": row.get("parameters")}
    for section in ("parity", "accuracy", "latency", "speedup"):
        data = row.get(section)
        if isinstance(data, dict) and data and not (passed_only and data.get("passed") is False):
            record[section] = dict(data)
    if isinstance(row.get("environment"), dict):
        record["environment"] = row["environment"]
    return record


def measured_sections(record: Mapping[str, Any]) -> list[str]:
    return [s for s in SECTIONS if s in record]


def merge_records(old: Mapping[str, Any] | None, new: Mapping[str, Any], only_missing: bool) -> dict[str, Any]:
    """`new`'s sections over `old`'s (`only_missing`: add sections `old` lacks, change nothing it has)."""
    merged = dict(old or {})
    added = [s for s in SECTIONS if s in new and (not only_missing or s not in merged)]
    if old and not added:
        return merged
    merged.update({k: v for k, v in new.items() if k not in SECTIONS})
    merged.update({s: new[s] for s in added})
    return merged


def git_commit(root: Path) -> str | None:
    """The current commit of the repository holding `root`, with "+dirty" for uncommitted changes."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{commit}+dirty" if dirty else commit


def _pct(value: float) -> str:
    return f"{value:+.1%}"


def compare_size(old: Mapping[str, Any], new: Mapping[str, Any], rules: Rules) -> list[Finding]:
    before, after = old.get("size", {}).get("bytes"), new.get("size", {}).get("bytes")
    if not before or after is None:
        return []
    growth = after / before - 1
    return [Finding("size", f"{before} B", f"{after} B", _pct(growth), f"<= {rules.size_growth:+.0%}",
                    REGRESSED if growth > rules.size_growth + 1e-12 else OK)]


def compare_parity(old: Mapping[str, Any], new: Mapping[str, Any], rules: Rules) -> list[Finding]:
    before, after = old.get("parity", {}), new.get("parity", {})
    findings = []
    if before.get("max_abs") is not None and after.get("max_abs") is not None:
        allowed = max(before["max_abs"] * rules.parity_growth, rules.parity_floor)
        growth = after["max_abs"] / before["max_abs"] if before["max_abs"] else math.inf
        findings.append(Finding("max abs error", f"{before['max_abs']:.3g}", f"{after['max_abs']:.3g}",
                                f"x{growth:.2f}" if math.isfinite(growth) else "from 0",
                                f"<= {allowed:.3g}", REGRESSED if after["max_abs"] > allowed else OK))
    if before.get("top1_agreement") is not None and after.get("top1_agreement") is not None:
        change = after["top1_agreement"] - before["top1_agreement"]
        findings.append(Finding("top-1 agreement", f"{before['top1_agreement']:.2%}",
                                f"{after['top1_agreement']:.2%}", f"{change * 100:+.2f} pt",
                                f">= -{rules.agreement_drop * 100:.2f} pt",
                                REGRESSED if -change > rules.agreement_drop + 1e-12 else OK))
    return findings


def compare_accuracy(old: Mapping[str, Any], new: Mapping[str, Any], rules: Rules) -> list[Finding]:
    """The accuracy rule, in the metric's own direction (a lower-is-better metric such as an error is shown as a
    number and fails when it rises; `higher_is_better` is stored with it)."""
    before, after = old.get("accuracy", {}), new.get("accuracy", {})
    if before.get("value") is None or after.get("value") is None:
        return []
    higher = after.get("higher_is_better", before.get("higher_is_better", True))
    if before.get("higher_is_better", higher) != higher:
        return [Finding("accuracy", "", "", "", "", MISSING, "the metric's direction changed since the baseline; "
                        + UPDATE_HINT)]
    change = (after["value"] - before["value"]) * (1 if higher else -1)
    if higher:
        shown = (f"{before['value']:.2%}", f"{after['value']:.2%}", f"{change * 100:+.2f} pt")
        limit = f">= -{rules.accuracy_drop * 100:.2f} pt"
    else:
        shown = (f"{before['value']:.4g}", f"{after['value']:.4g}", f"{after['value'] - before['value']:+.4g}")
        limit = f"<= +{rules.accuracy_drop:.4g} (lower is better)"
    return [Finding("accuracy", *shown, limit, REGRESSED if -change > rules.accuracy_drop + 1e-12 else OK)]


def latency_ratio(old: Mapping[str, Any], new: Mapping[str, Any], limit: LatencyLimit, confidence: float,
                  normalise: bool, resamples: int = 500, seed: int = 0) -> tuple[float, float, float]:
    """New over old of one latency statistic, with a smoothed-bootstrap interval: (ratio, low, high). With
    `normalise`, each statistic is divided by the median of its own run's reference workload (the machine's speed
    in the windows `bench` kept).

    The median of the reference, not the same statistic: with another busy process on the cores, a tail is made
    of the scheduler's stalls, which hit a 70 us reference call and a 27 us model call at different rates; a p99
    divided by the reference's p99 then swung 20x between runs of an unchanged model.

    The stored order statistics define each run's distribution (linear between them); each resample draws as many
    values as the run made calls (capped at 2000), so the interval reflects the real sample sizes.
    """
    sets = [(old["quantiles_ms"], old.get("calls")), (new["quantiles_ms"], new.get("calls"))]
    if normalise:
        sets += [(old["reference_quantiles_ms"], old.get("reference_calls")),
                 (new["reference_quantiles_ms"], new.get("reference_calls"))]
    quantiles = [np.asarray(values, np.float64) for values, _ in sets]

    def ratio_of(values: list[np.ndarray], reduce: Callable[[np.ndarray], Any],
                 median: Callable[[np.ndarray], Any]) -> Any:
        ratio = reduce(values[1]) / reduce(values[0])
        return ratio * median(values[2]) / median(values[3]) if normalise else ratio

    def on_grid(q: np.ndarray, statistic: str = limit.statistic) -> float:
        if statistic == "mean":
            return float(q.mean())
        return float(np.interp(float(statistic[1:]), _grid(len(q)), q))

    rng = np.random.default_rng(seed)
    drawn = [np.interp(rng.uniform(0, 100, size=(resamples, min(int(calls or len(q)), 2000))), _grid(len(q)), q)
             for q, (_, calls) in zip(quantiles, sets)]
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(ratio_of(drawn, lambda x: limit.quantile(x, axis=-1),
                                       lambda x: np.median(x, axis=-1)), [tail, 100 - tail])
    return float(ratio_of(quantiles, on_grid, lambda q: on_grid(q, "p50"))), float(low), float(high)


def _grid(count: int) -> np.ndarray:
    """The percentiles at which `compact_quantiles` took its `count` order statistics."""
    return (np.arange(count) + 0.5) * 100 / count


def machine_difference(old: Mapping[str, Any], new: Mapping[str, Any], rules: Rules,
                       old_environment: Mapping[str, Any] | None = None,
                       new_environment: Mapping[str, Any] | None = None) -> str | None:
    """Why two runs are too different to compare latencies, or None when they can be compared."""
    speed = machine_ratio(old, new)
    if speed is not None and not 1 / rules.max_machine_ratio <= speed <= rules.max_machine_ratio:
        return (f"the reference workload ran {speed:.2f}x as long as when the baseline was recorded "
                f"(beyond {rules.max_machine_ratio:g}x): the machines differ too much to judge")
    flags_before = (old_environment or {}).get("cpu_flags")
    flags_after = (new_environment or {}).get("cpu_flags")
    if flags_before is not None and flags_after is not None and set(flags_before) != set(flags_after):
        gained, lost = sorted(set(flags_after) - set(flags_before)), sorted(set(flags_before) - set(flags_after))
        return (f"instruction sets differ from the baseline's machine (gained {gained or 'none'}, lost "
                f"{lost or 'none'}): latencies are not comparable")
    return None


def smallest_batch(latency: Mapping[str, Any] | None) -> dict[str, Any]:
    """The figures of the smallest batch size in a latency section (`{batch: figures}`), {} when there are none."""
    return dict(latency[min(latency, key=int)]) if latency else {}


def machine_ratio(old: Mapping[str, Any], new: Mapping[str, Any]) -> float | None:
    """How many times as long the reference workload took now as when `old` was recorded (None without one)."""
    before, after = old.get("reference_p50_ms"), new.get("reference_p50_ms")
    return after / before if before and after else None


def centre_finding(old: Mapping[str, Any], new: Mapping[str, Any], limit: LatencyLimit, rules: Rules,
                   name: str, shown: tuple[str, str]) -> Finding:
    """The verdict on a central statistic from stored figures (see the module docstring): REGRESSED only beyond
    limit + noise under both readings of the machine, OK only within limit - noise under both, else
    INCONCLUSIVE with the reason."""
    raw = latency_ratio(old, new, limit, rules.confidence, normalise=False)
    machine = machine_ratio(old, new)
    readings = [raw]
    timed_both = bool(old.get("reference_quantiles_ms")) and bool(new.get("reference_quantiles_ms"))
    if machine is not None and abs(machine - 1) > rules.machine_tolerance and timed_both:
        readings.append(latency_ratio(old, new, limit, rules.confidence, normalise=True))
    noise = max(float(old.get("window_spread") or 0), float(new.get("window_spread") or 0))
    lowest = min(r[0] for r in readings) / (1 + noise)
    highest = max(r[0] for r in readings) * (1 + noise)
    low = min(r[1] for r in readings)
    changes = " / ".join(f"{_pct(r[0] - 1)} [{r[1] - 1:+.1%}, {r[2] - 1:+.1%}]" for r in readings)
    bound = 1 + limit.limit
    if lowest > bound and low > 1:
        status, note = REGRESSED, f"beyond the limit by more than the noise (±{noise:.1%} between windows)"
    elif highest <= bound:
        status, note = OK, f"noise ±{noise:.1%} between windows"
    elif len(readings) > 1:
        status, note = INCONCLUSIVE, "the two readings disagree: judge side by side"
    else:
        status = INCONCLUSIVE
        note = f"the change is within this run's noise (±{noise:.1%} between windows) of the limit"
    if machine is not None and len(readings) > 1:
        note = (f"machine {machine:.2f}x {'slower' if machine > 1 else 'faster'} than when recorded; change as "
                f"measured / divided by the reference workload's: {note}")
    return Finding(name, *shown, changes, f"<= {limit.limit:+.0%}", status, note)


def compare_latency(old: Mapping[str, Any], new: Mapping[str, Any], rules: Rules) -> list[Finding]:
    """From stored figures: central latency rules at the smallest common batch size judged, the tail and the
    throughput at the largest batch size reported (see the module docstring)."""
    before, after = old.get("latency", {}), new.get("latency", {})
    common = sorted(set(before) & set(after), key=int)
    common = [b for b in common if before[b].get("quantiles_ms") and after[b].get("quantiles_ms")]
    if not common:
        return []
    findings = []
    batch = common[0]
    o, n = before[batch], after[batch]
    why_not = machine_difference(o, n, rules, old.get("environment"), new.get("environment"))
    for limit in rules.latency:
        name = f"{limit.statistic} @ batch {batch}"
        shown = (f"{o.get(limit.statistic + '_ms', float('nan')):.3f} ms",
                 f"{n.get(limit.statistic + '_ms', float('nan')):.3f} ms")
        if why_not:
            ratio = latency_ratio(o, n, limit, rules.confidence, normalise=False)[0]
            findings.append(Finding(name, *shown, _pct(ratio - 1), f"<= {limit.limit:+.0%}", INCONCLUSIVE, why_not))
        elif limit.is_tail:
            ratio, low, high = latency_ratio(o, n, limit, rules.confidence, normalise=False)
            findings.append(Finding(name, *shown, f"{_pct(ratio - 1)} [{low - 1:+.1%}, {high - 1:+.1%}]",
                                    f"<= {limit.limit:+.0%}", REPORTED, "the tail is judged side by side only"))
        else:
            findings.append(centre_finding(o, n, limit, rules, name, shown))
    batch = common[-1]
    o, n = before[batch], after[batch]
    if o.get("throughput_per_s") and n.get("throughput_per_s"):
        change = n["throughput_per_s"] / o["throughput_per_s"] - 1
        findings.append(Finding(
            f"throughput @ batch {batch}", f"{o['throughput_per_s']:.0f}/s", f"{n['throughput_per_s']:.0f}/s",
            _pct(change), f">= -{rules.throughput_drop:.0%}", REPORTED, "throughput is judged side by side only"))
    return findings


def confirmed(first: Comparison, second: Comparison) -> Comparison:
    """Two measurements of the same thing against the same baseline, as one verdict: a rule regresses only when
    both regress and passes only when both pass; when they disagree the re-measure has shown the noise to be
    larger than the change, and the verdict is inconclusive."""
    earlier = {f.metric: f for f in first.findings}
    findings = []
    for finding in second.findings:
        before = earlier.get(finding.metric)
        if before is None or before.status == finding.status or finding.status == INCONCLUSIVE:
            findings.append(finding)
        elif before.status == INCONCLUSIVE:
            findings.append(replace(finding, status=INCONCLUSIVE, note=before.note))
        elif {before.status, finding.status} == {OK, REGRESSED}:
            findings.append(replace(finding, status=INCONCLUSIVE, note=(
                f"the re-measure disagreed ({before.change.split(' [')[0]}, then {finding.change.split(' [')[0]}): "
                "the noise is larger than the change")))
        else:
            findings.append(finding)
    return replace(second, findings=findings)


COMPARERS = {"size": compare_size, "parity": compare_parity, "accuracy": compare_accuracy, "latency": compare_latency}


def compare_records(old: Mapping[str, Any], new: Mapping[str, Any], rules: Rules, source: str,
                    sections: Iterable[str] | None = None) -> Comparison:
    """Apply the rules to the given sections of `new` (default: every section both records have). A section
    `new` measured that `old` lacks is reported as missing."""
    wanted = list(sections) if sections is not None else [s for s in COMPARERS if s in new]
    comparison = Comparison(str(new.get("model")), str(new.get("format")), source)
    for section in wanted:
        if section not in COMPARERS or section not in new:
            continue
        if section not in old:
            comparison.findings.append(Finding(section, "", "measured", "", "", MISSING,
                                               f"the baseline has no {section} figures; {UPDATE_HINT}"))
            continue
        try:
            comparison.findings.extend(COMPARERS[section](old, new, rules))
        except (TypeError, KeyError, ValueError, AttributeError, IndexError, ZeroDivisionError) as exc:
            raise BaselineError(f"baseline {source}: its {section!r} figures are malformed "
                                f"({type(exc).__name__}: {exc}); rewrite it with --deploycheck-update") from exc
    return comparison


def latency_side_by_side(new_times: np.ndarray, old_times: np.ndarray, limit: LatencyLimit, batch: int,
                         confidence: float, against: str) -> Finding:
    """A latency rule judged on the new artifact and the accepted one (`against` says which) timed interleaved in
    this run, with a paired bootstrap interval on the ratio of the statistic."""
    from deploycheck.latency import bootstrap_ratio_interval

    old_value, new_value = float(limit.quantile(old_times)), float(limit.quantile(new_times))
    ratio = new_value / old_value
    low, high = bootstrap_ratio_interval(new_times, old_times, confidence, resamples=1000,
                                         statistic=lambda x: limit.quantile(x, axis=-1))
    regressed = ratio > 1 + limit.limit and low > 1
    return Finding(f"{limit.statistic} @ batch {batch}", f"{old_value * 1e3:.3f} ms", f"{new_value * 1e3:.3f} ms",
                   f"{_pct(ratio - 1)} [{low - 1:+.1%}, {high - 1:+.1%}]", f"<= {limit.limit:+.0%}",
                   REGRESSED if regressed else OK, f"side by side with {against}")


def throughput_side_by_side(new_times: np.ndarray, old_times: np.ndarray, max_drop: float, batch: int,
                            confidence: float, against: str) -> Finding:
    """The throughput rule judged side by side: old mean time over new (throughput of new relative to old)."""
    from deploycheck.latency import bootstrap_ratio_interval

    change = float(np.mean(old_times) / np.mean(new_times)) - 1
    low, high = bootstrap_ratio_interval(old_times, new_times, confidence, resamples=1000,
                                         statistic=lambda x: np.mean(x, axis=-1))
    regressed = -change > max_drop and high < 1
    return Finding(f"throughput @ batch {batch}", f"{batch / np.mean(old_times):.0f}/s",
                   f"{batch / np.mean(new_times):.0f}/s", f"{_pct(change)} [{low - 1:+.1%}, {high - 1:+.1%}]",
                   f">= -{max_drop:.0%}", REGRESSED if regressed else OK, f"side by side with {against}")


def stale_entries(store: BaselineStore, models: Sequence[str], formats: Sequence[str]) -> list[Path]:
    """Stored baselines whose model is not among `models` or whose format is not among `formats`."""
    return [store.path(m, f) for m, f in store.entries() if m not in models or f not in formats]


def load_records(path: Path) -> dict[tuple[str, str], dict[str, Any]]:
    """Every (model, format) record in a baselines directory, a JSON report (`--deploycheck-report`), or a
    single baseline file; report rows are turned into records as the plugin would store them."""
    path = Path(path)
    if path.is_dir():
        store = BaselineStore(path)
        return {(m, f): read_record(store.path(m, f)) for m, f in store.entries()}
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BaselineError(f"{path}: not a readable JSON report or baseline ({exc})") from exc
    if isinstance(data, dict) and isinstance(data.get("results"), list):
        records = {}
        for position, row in enumerate(data["results"]):
            if not isinstance(row, dict) or not isinstance(row.get("model"), str) or \
                    not isinstance(row.get("format"), str):
                raise BaselineError(f"{path}: results[{position}] has no 'model' and 'format'")
            records[(row["model"], row["format"])] = record_from_row(row, passed_only=False)
        return records
    record = read_record(path)
    return {(record["model"], record["format"]): record}


def compare_sets(old: Mapping[tuple[str, str], Mapping[str, Any]], new: Mapping[tuple[str, str], Mapping[str, Any]],
                 rule_layers: Sequence[tuple[str, Mapping[str, Any] | None]], source: str) -> list[Comparison]:
    """Compare every (model, format) present in both sets, each section both measured."""
    comparisons = []
    for key in sorted(set(old) & set(new)):
        sections = [s for s in COMPARERS if s in old[key] and s in new[key]]
        comparisons.append(compare_records(old[key], new[key], resolve_rules(key[1], *rule_layers),
                                           f"{source} [{key[0]}/{key[1]}]", sections))
    return comparisons
