"""Alert rules and alerts: what the monitor fires on (latency, error rate, accuracy, drift) and the state of
each alert."""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any


@dataclass
class Rule:
    """An alert rule: `type` (latency, error_rate, accuracy, drift, input_drift), a threshold and how it is
    applied.

    latency: fires when the window p95 exceeds `factor` x the baseline p95 (and `factor` x the trailing average of
    earlier windows, when one exists; 1.5 by default, so that a doubling fires); error_rate: when the window error
    rate exceeds `threshold`; accuracy: when window accuracy falls below the baseline accuracy minus `threshold`;
    drift: when the PSI of predicted classes against the baseline distribution exceeds `threshold`; input_drift:
    when the PSI of some input's values against the calibration data's (`input_profile`) exceeds `threshold`
    (counted in requests whose inputs were recorded). `min_samples` guards against judging a handful of requests;
    `cooldown_s` keeps a resolved alert from firing again at once.
    """

    type: str
    threshold: float = 0.0
    factor: float = 1.5
    min_samples: int = 100
    cooldown_s: float = 60.0
    severity: str = "warning"


DEFAULT_RULES = (
    Rule("latency", factor=1.5, min_samples=100),
    Rule("error_rate", threshold=0.05, min_samples=100, severity="critical"),
    Rule("accuracy", threshold=0.02, min_samples=100),
    Rule("drift", threshold=0.2, min_samples=200),
    Rule("input_drift", threshold=0.2, min_samples=200),
)


@dataclass
class Alert:
    type: str
    severity: str
    value: float
    threshold: float
    first_seen: float
    last_seen: float
    state: str = "firing"
    message: str = ""
    model: str = ""

    def to_json(self) -> dict[str, Any]:
        """The alert as JSON, its monitor-clock readings (`time.monotonic`) also as UTC wall-clock timestamps
        (ISO 8601)."""
        offset = time.time() - time.monotonic()
        data: dict[str, Any] = dict(vars(self))
        for key in ("first_seen", "last_seen"):
            moment = datetime.fromtimestamp(data[key] + offset, tz=timezone.utc)
            data[f"{key}_utc"] = moment.isoformat(timespec="seconds")
        return data
