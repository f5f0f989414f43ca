"""A new measurement against its baseline record: one `Finding` per rule and metric, gathered in a `Comparison`.

A record holds what the gate measured: size, parity statistics, accuracy and drop, latency per batch size
(summary figures plus a compact set of order statistics and the speed of a fixed reference workload timed in
the same run), speedups, the environment record and the git commit.

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

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from deploycheck.baseline.rules import LatencyLimit, Rules, resolve_rules
from deploycheck.costs import cost_change
from deploycheck.errors import BaselineError
from deploycheck.rows import Status, Verdict
from deploycheck.stats import bootstrap_ratio_interval, interval_verdict, quantile_grid
from deploycheck.table import format_table, human_size

OK: Status = "ok"
REGRESSED: Status = "REGRESSED"
INCONCLUSIVE: Status = "inconclusive"
MISSING: Status = "missing"
REPORTED: Status = "reported"
UPDATE_HINT = "run with --deploycheck-update to accept the new figures"


@dataclass(frozen=True)
class Finding:
    """One rule applied to one metric. `metric` names the figure (`p50`, `throughput`, `size`, ...) and
    `batch_size` the batch it was timed at (None for a figure that has none); `change` is the change as shown,
    and `interval` its confidence interval as a relative change, where one was estimated."""

    metric: str
    baseline: str
    obtained: str
    change: str
    limit: str
    status: Status
    note: str = ""
    batch_size: int | None = None
    interval: tuple[float, float] | None = None

    @property
    def label(self) -> str:
        """What the metric is called in a table: `p50 @ batch 1`, `size`."""
        return self.metric if self.batch_size is None else f"{self.metric} @ batch {self.batch_size}"

    @property
    def timed(self) -> bool:
        """A latency or throughput figure (timed at a batch size)."""
        return self.batch_size is not None

    def shown_change(self) -> str:
        return self.change if self.interval is None else \
            f"{self.change} [{self.interval[0]:+.1%}, {self.interval[1]:+.1%}]"

    def row(self) -> list[str]:
        return [self.label, self.baseline, self.obtained, self.shown_change(), self.limit, self.status, self.note]

    def to_dict(self) -> dict[str, Any]:
        """As a report's row holds it: the label and the change with its interval as shown, beside the metric,
        the batch size and the interval themselves."""
        return {"metric": self.metric, "batch_size": self.batch_size, "label": self.label,
                "baseline": self.baseline, "obtained": self.obtained, "change": self.shown_change(),
                "limit": self.limit, "status": self.status, "note": self.note,
                "interval": None if self.interval is None else list(self.interval)}


@dataclass
class Comparison:
    """A new measurement of one model x format against its baseline."""

    model: str
    format: str
    source: str
    findings: list[Finding] = field(default_factory=list)
    # when latency was compared: whether the exported graph's cost counters moved (`deploycheck.costs`), which
    # says whether a latency change comes from the model or from the machine and runtime
    costs: str = ""

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
    def status(self) -> Verdict:
        return "FAIL" if self.regressed else "inconclusive" if self.inconclusive else "ok"

    def headline(self) -> str:
        """The first thing that fell behind or could not be judged, whole and short enough for a table cell
        (`p50 ms b1 +30.2% REGRESSED`); empty when nothing did."""
        problems = self.regressed + self.inconclusive
        if not problems:
            return ""
        first = problems[0]
        where = "" if first.batch_size is None else f" b{first.batch_size}"
        return f"{first.metric}{where} {first.change} {first.status}".strip()

    def short(self) -> str:
        """A few words for the "vs baseline" column: the headline and how many more problems there are, else the
        change of the first latency statistic, else "same"."""
        problems = len(self.regressed + self.inconclusive)
        if problems:
            return self.headline() + (f" (+{problems - 1} more)" if problems > 1 else "")
        latency = [f for f in self.findings if f.timed]
        return f"{latency[0].metric} {latency[0].change}" if latency else "same"

    def table(self) -> str:
        return format_table(["metric", "baseline", "obtained", "change", "limit", "status", "note"],
                            [f.row() for f in self.findings])

    def __str__(self) -> str:
        verdict = ("regressed" if self.regressed else "inconclusive (see notes)" if self.inconclusive
                   else "within limits")
        text = f"{self.model}/{self.format} against its baseline {self.source}: {verdict}\n{self.table()}"
        if self.costs and any(f.timed for f in self.regressed + self.inconclusive):
            text += f"\n\nLatency triage: {self.costs}."
        if self.regressed:
            text += f"\n\nIf the change is intended, {UPDATE_HINT}."
        return text

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "status": self.status, "passed": self.passed, "change": self.short(),
                "headline": self.headline(), "problems": len(self.regressed + self.inconclusive),
                "findings": [f.to_dict() for f in self.findings], **({"costs": self.costs} if self.costs else {})}


def _pct(value: float) -> str:
    return f"{value:+.1%}"


def compare_size(old: Mapping[str, Any], new: Mapping[str, Any], rules: Rules) -> list[Finding]:
    before, after = old.get("size", {}).get("bytes"), new.get("size", {}).get("bytes")
    if not before or after is None:
        return []
    growth = after / before - 1
    return [Finding("size", human_size(before), human_size(after), _pct(growth), f"<= {rules.size_growth:+.0%}",
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
        return float(np.interp(float(statistic[1:]), quantile_grid(len(q)), q))

    rng = np.random.default_rng(seed)
    drawn = [np.interp(rng.uniform(0, 100, size=(resamples, min(int(calls or len(q)), 2000))), quantile_grid(len(q)), q)
             for q, (_, calls) in zip(quantiles, sets)]
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(ratio_of(drawn, lambda x: limit.quantile(x, axis=-1),
                                       lambda x: np.median(x, axis=-1)), [tail, 100 - tail])
    return float(ratio_of(quantiles, on_grid, lambda q: on_grid(q, "p50"))), float(low), float(high)


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
                   batch: int, shown: tuple[str, str]) -> Finding:
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
    changes = " / ".join(_pct(r[0] - 1) for r in readings)
    interval = (min(r[1] for r in readings) - 1, max(r[2] for r in readings) - 1)
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
    return Finding(limit.statistic, *shown, changes, f"<= {limit.limit:+.0%}", status, note, batch, interval)


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
        name, batch_size = limit.statistic, int(batch)
        shown = (f"{o.get(limit.statistic + '_ms', float('nan')):.3f} ms",
                 f"{n.get(limit.statistic + '_ms', float('nan')):.3f} ms")
        if why_not:
            ratio = latency_ratio(o, n, limit, rules.confidence, normalise=False)[0]
            findings.append(Finding(name, *shown, _pct(ratio - 1), f"<= {limit.limit:+.0%}", INCONCLUSIVE, why_not,
                                    batch_size))
        elif limit.is_tail:
            ratio, low, high = latency_ratio(o, n, limit, rules.confidence, normalise=False)
            findings.append(Finding(name, *shown, _pct(ratio - 1), f"<= {limit.limit:+.0%}", REPORTED,
                                    "the tail is judged side by side only", batch_size, (low - 1, high - 1)))
        else:
            findings.append(centre_finding(o, n, limit, rules, batch_size, shown))
    batch = common[-1]
    o, n = before[batch], after[batch]
    if o.get("throughput_per_s") and n.get("throughput_per_s"):
        change = n["throughput_per_s"] / o["throughput_per_s"] - 1
        findings.append(Finding(
            "throughput", f"{o['throughput_per_s']:.0f}/s", f"{n['throughput_per_s']:.0f}/s", _pct(change),
            f">= -{rules.throughput_drop:.0%}", REPORTED, "throughput is judged side by side only", int(batch)))
    return findings


def confirmed(first: Comparison, second: Comparison) -> Comparison:
    """Two measurements of the same thing against the same baseline, as one verdict: a rule regresses only when
    both regress and passes only when both pass; when they disagree the re-measure has shown the noise to be
    larger than the change, and the verdict is inconclusive."""
    earlier = {(f.metric, f.batch_size): f for f in first.findings}
    findings = []
    for finding in second.findings:
        before = earlier.get((finding.metric, finding.batch_size))
        if before is None or before.status == finding.status or finding.status == INCONCLUSIVE:
            findings.append(finding)
        elif before.status == INCONCLUSIVE:
            findings.append(replace(finding, status=INCONCLUSIVE, note=before.note))
        elif {before.status, finding.status} == {OK, REGRESSED}:
            findings.append(replace(finding, status=INCONCLUSIVE, note=(
                f"the re-measure disagreed ({before.change}, then {finding.change}): "
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
    if "latency" in wanted:
        comparison.costs = cost_change(old.get("counters"), new.get("counters"))
    return comparison


def latency_side_by_side(new_times: np.ndarray, old_times: np.ndarray, limit: LatencyLimit, batch: int,
                         confidence: float, against: str) -> Finding:
    """A latency rule judged on the new artifact and the accepted one (`against` says which) timed interleaved in
    this run, with a paired bootstrap interval on the ratio of the statistic."""
    old_value, new_value = float(limit.quantile(old_times)), float(limit.quantile(new_times))
    ratio = new_value / old_value
    low, high = bootstrap_ratio_interval(new_times, old_times, confidence, resamples=1000,
                                         statistic=lambda x: limit.quantile(x, axis=-1))
    return Finding(limit.statistic, f"{old_value * 1e3:.3f} ms", f"{new_value * 1e3:.3f} ms", _pct(ratio - 1),
                   f"<= {limit.limit:+.0%}", interval_verdict(low, high, 1 + limit.limit),
                   f"side by side with {against}", batch, (low - 1, high - 1))


def throughput_side_by_side(new_times: np.ndarray, old_times: np.ndarray, max_drop: float, batch: int,
                            confidence: float, against: str) -> Finding:
    """The throughput rule judged side by side: old mean time over new (throughput of new relative to old)."""
    change = float(np.mean(old_times) / np.mean(new_times)) - 1
    low, high = bootstrap_ratio_interval(old_times, new_times, confidence, resamples=1000,
                                         statistic=lambda x: np.mean(x, axis=-1))
    slowdown = interval_verdict(1 / high, 1 / low, 1 / (1 - max_drop))  # new time over old, as latency is judged
    return Finding("throughput", f"{batch / np.mean(old_times):.0f}/s", f"{batch / np.mean(new_times):.0f}/s",
                   _pct(change), f">= -{max_drop:.0%}", slowdown, f"side by side with {against}", batch,
                   (low - 1, high - 1))


def compare_sets(old: Mapping[tuple[str, str], Mapping[str, Any]], new: Mapping[tuple[str, str], Mapping[str, Any]],
                 rule_layers: Sequence[tuple[str, Mapping[str, Any] | None]], source: str) -> list[Comparison]:
    """Compare every (model, format) present in both sets, each section both measured."""
    comparisons = []
    for key in sorted(set(old) & set(new)):
        sections = [s for s in COMPARERS if s in old[key] and s in new[key]]
        comparisons.append(compare_records(old[key], new[key], resolve_rules(key[1], *rule_layers),
                                           f"{source} [{key[0]}/{key[1]}]", sections))
    return comparisons
