"""Input drift: a profile of what each input's values looked like (the calibration data), and the population
stability index of what is served against it. Shared by the gate (which stores the profile) and the monitor."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np


def add_bins(total: dict[str, np.ndarray], counts: Mapping[str, np.ndarray]) -> None:
    """Add per-input bin counts into `total` (out of place: slices may hold the same array)."""
    for name, values in counts.items():
        total[name] = total[name] + values if name in total else values


def input_profile(batches: Iterable[Sequence[Any]], names: Sequence[str], bins: int = 10,
                  max_values: int = 1_000_000) -> dict[str, dict[str, Any]]:
    """What each input's values looked like in `batches` (typically the calibration data): bin edges at the
    deciles (ties merged, so a value that fills a third of the data, like a blank pixel, gets its own bin), the
    fraction of values per bin, mean and standard deviation. `Monitor.record_inputs` bins served inputs the same
    way; their PSI against these fractions is the input drift (a preprocessing change, such as unscaled pixels,
    shows here before any label arrives)."""
    collected: dict[str, list[np.ndarray]] = {name: [] for name in names}
    for batch in batches:
        for name, array in zip(names, batch):
            tensor = array.detach().cpu().numpy() if hasattr(array, "detach") else np.asarray(array)
            collected[name].append(tensor.astype(np.float64).ravel())
    profile = {}
    for name, parts in collected.items():
        if not parts:
            continue
        values = np.concatenate(parts)
        if values.size > max_values:
            values = values[::math.ceil(values.size / max_values)]
        edges = np.unique(np.quantile(values, np.linspace(0, 1, bins + 1)[1:-1]))
        counts = np.bincount(np.searchsorted(edges, values, side="left"), minlength=len(edges) + 1)
        profile[name] = {"edges": [float(e) for e in edges], "fractions": [float(c) for c in counts / counts.sum()],
                         "mean": float(values.mean()), "std": float(values.std()), "values": int(values.size)}
    return profile


def population_stability_index(expected: Mapping[Any, float], observed: Mapping[Any, int],
                               floor: float = 1e-4) -> float:
    """PSI = sum((o - e) * ln(o / e)) over classes, with fractions floored to keep empty classes finite."""
    total = sum(observed.values())
    expected_total = sum(expected.values())
    psi = 0.0
    for key in set(expected) | set(observed):
        e = max(expected.get(key, 0.0) / expected_total, floor)
        o = max(observed.get(key, 0) / total, floor)
        psi += (o - e) * math.log(o / e)
    return psi
