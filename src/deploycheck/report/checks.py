"""A check in words, the one way every writer says a check (the annotations, the inconclusive lines, the
Markdown and HTML findings), so a figure reads the same wherever it is shown."""

from __future__ import annotations

from deploycheck.run_result import Check
from deploycheck.table import human_size


def check_text(check: Check) -> str:
    """One check in words: metric, batch, value, limit, where it went wrong, status (`mean_kl at batch 2: 0.31 nats
    (at most 0.05) FAIL`)."""
    where = f" at batch {check.batch_size}" if check.batch_size is not None else ""
    value = "" if check.value is None else f": {value_text(check.value, check.unit)}"
    against = f" vs {check.against}" if check.against in ("baseline", "accepted", "original") else ""
    limit = "" if check.limit is None else \
        f" ({'at most' if check.bound == 'max' else 'at least'} {value_text(check.limit, check.unit)})"
    baseline = "" if check.baseline is None else f", baseline {value_text(check.baseline, check.unit)}"
    step = "" if check.step is None or not check.failed else f" from step {check.step}"
    return f"{check.metric}{against}{where}{value}{baseline}{limit}{step} {check.status}"


def value_text(value: float, unit: str) -> str:
    """A figure in its unit: fractions as percentages, ratios as `1.23x`, bytes as a size."""
    if unit == "fraction":
        return f"{value:.2%}"
    if unit.startswith("x"):
        return f"{value:.2f}{unit}"
    if unit == "bytes":
        return human_size(int(value))
    return f"{value:.3g} {unit}".strip()
