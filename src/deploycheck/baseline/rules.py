"""Regression rules: how far a new run may fall behind its baseline, as data (defaults, then pyproject's
`[tool.deploycheck]`, then the spec, each overridable per format)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

import numpy as np

from deploycheck.errors import BaselineError
from deploycheck.formats import format_names

TAIL_FROM = 75.0  # percentiles above this are the tail: judged side by side only


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




def command_line_rules(items: list[str]) -> dict[str, Any]:
    """`deploycheck compare --rule KEY=NUMBER` (or `latency=p50:10%`) options as a rules layer."""
    overrides: dict[str, Any] = {}
    for item in items:
        key, _, value = item.partition("=")
        try:
            overrides[key.strip()] = value if key.strip() == "latency" else float(value)
        except ValueError:
            raise BaselineError(f"--rule {item!r}: expected KEY=NUMBER (or latency=p50:10%)") from None
    return overrides
