"""Input drift: a profile of what each input looked like (the calibration data), and the population stability index
of what is served against it. Shared by the gate (which stores the profile) and the monitor.

Two kinds of profile, because bins must mean something for the input they cut:
- a number (pixels, features): decile bins of its values;
- integer ids (token ids, masks, categories): ids are names, not magnitudes, so deciles of them measure nothing.
  Their profile ranks the calibration data's ids by frequency and counts what is served into rank buckets (the
  most frequent id, the next 9, the next 90, the next 900, any other id, and ids outside the range the model
  accepts), and, for an input with a sequence axis, the rows' lengths in octave buckets (1, 2-3, 4-7, ...).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from deploycheck.artifact import TensorSpec

RANK_BUCKET_ENDS = (1, 10, 100, 1000)  # ranks [0, 1), [1, 10), [10, 100), [100, 1000); then any other id
LENGTH_SUFFIX = " length"  # the length profile of an ids input is reported as "<input> length"
Binner = Callable[[np.ndarray, int], np.ndarray]  # (one request's array, at most this many values read) -> counts


def add_bins(total: dict[str, np.ndarray], counts: Mapping[str, np.ndarray]) -> None:
    """Add per-input bin counts into `total` (out of place: slices may hold the same array)."""
    for name, values in counts.items():
        total[name] = total[name] + values if name in total else values


def input_profile(batches: Iterable[Sequence[Any]], inputs: Sequence[TensorSpec | str], bins: int = 10,
                  max_values: int = 1_000_000) -> dict[str, dict[str, Any]]:
    """What each input looked like in `batches` (typically the calibration data), keyed by input name, with
    the fraction of values per bin. Integer inputs (given as `TensorSpec`s) get an ids profile, others a values
    profile: bin edges at the deciles (ties merged, so a value that fills a third of the data, like a blank pixel,
    gets its own bin), mean and standard deviation. `Monitor.record_inputs` bins served inputs the same way; their
    PSI against these fractions is the input drift (a preprocessing change, such as unscaled pixels or another
    tokenizer, shows here before any label arrives)."""
    specs = [spec if isinstance(spec, TensorSpec) else None for spec in inputs]
    names = [spec.name if isinstance(spec, TensorSpec) else spec for spec in inputs]
    collected: dict[str, list[np.ndarray]] = {name: [] for name in names}
    for batch in batches:
        for name, array in zip(names, batch):
            collected[name].append(array.detach().cpu().numpy() if hasattr(array, "detach") else np.asarray(array))
    profile = {}
    for name, spec in zip(names, specs):
        parts = collected[name]
        if not parts:
            continue
        if spec is not None and np.dtype(spec.dtype).kind in "iu":
            profile[name] = _ids_profile(parts, spec)
        else:
            profile[name] = _values_profile(np.concatenate([p.astype(np.float64).ravel() for p in parts]), bins,
                                            max_values)
    return profile


def _values_profile(values: np.ndarray, bins: int, max_values: int) -> dict[str, Any]:
    if values.size > max_values:
        values = values[::math.ceil(values.size / max_values)]
    edges = np.unique(np.quantile(values, np.linspace(0, 1, bins + 1)[1:-1]))
    counts = _values_binner(edges)(values, values.size)  # the bins served values are counted into
    return {"kind": "values", "edges": [float(e) for e in edges], "fractions": _fractions(counts),
            "mean": float(values.mean()), "std": float(values.std()), "values": int(values.size)}


def _ids_profile(parts: Sequence[np.ndarray], spec: TensorSpec) -> dict[str, Any]:
    """Ids ranked on every other row and bucket fractions measured on the rows between: ranked and counted on
    the same rows, no id would ever be "other" (every id seen is ranked), so ordinary traffic, which always
    brings ids the calibration data lacked, would read as drift."""
    rows = [row for part in parts for row in part.astype(np.int64).reshape(part.shape[0], -1)]  # lengths may vary
    ranking = np.concatenate(rows[::2])
    measured = np.concatenate(rows[1::2]) if len(rows) > 1 else ranking
    ids, counts = np.unique(ranking, return_counts=True)
    ranked = ids[np.argsort(-counts, kind="stable")][:RANK_BUCKET_ENDS[-1]]
    profile: dict[str, Any] = {"kind": "ids", "ranked": [int(i) for i in ranked],
                               "value_range": list(spec.value_range) if spec.value_range else None,
                               "values": int(sum(row.size for row in rows))}
    profile["fractions"] = _fractions(ids_binner(profile)(measured, measured.size))
    sequence = [axis for axis, size in enumerate(spec.shape) if size is None and axis > 0]
    if sequence:
        profile["length_axis"] = sequence[0]
        lengths = np.concatenate([np.full(p.shape[0], p.shape[sequence[0]]) for p in parts])
        profile["length_fractions"] = _fractions(_octaves(lengths, len(_OCTAVE_EDGES) + 1))
    return profile


_OCTAVE_EDGES = np.array([2 ** k for k in range(1, 21)])  # lengths 1, 2-3, 4-7, ..., beyond a million


def _octaves(lengths: np.ndarray, buckets: int) -> np.ndarray:
    return np.bincount(np.searchsorted(_OCTAVE_EDGES, lengths, side="right"), minlength=buckets)


def _fractions(counts: np.ndarray) -> list[float]:
    total = counts.sum()
    return [float(c) for c in (counts / total if total else counts)]


def ids_binner(profile: Mapping[str, Any]) -> Binner:
    """Counts of served ids per rank bucket of an ids profile (the last bucket: outside the accepted range)."""
    ranked = np.asarray(profile["ranked"], np.int64)
    order = np.argsort(ranked, kind="stable")
    sorted_ids, rank_of = ranked[order], order
    ends = np.array([end for end in RANK_BUCKET_ENDS if end < len(ranked)] + [len(ranked)])
    value_range = profile.get("value_range")
    buckets = len(ends) + 2

    def bins(array: np.ndarray, max_values: int) -> np.ndarray:
        values = _subsampled(array, max_values).astype(np.int64, copy=False)
        position = np.searchsorted(sorted_ids, values).clip(max=max(len(sorted_ids) - 1, 0))
        known = sorted_ids[position] == values if len(sorted_ids) else np.zeros(values.shape, bool)
        rank = np.where(known, rank_of[position] if len(sorted_ids) else 0, len(ranked))
        bucket = np.searchsorted(ends, rank, side="right")
        if value_range is not None:
            bucket[(values < value_range[0]) | (values > value_range[1])] = buckets - 1
        return np.bincount(bucket, minlength=buckets)

    return bins


def profile_binners(profile: Mapping[str, Mapping[str, Any]]) -> dict[str, tuple[str, Binner]]:
    """For each name the monitor reports drift under (an input, or "<ids input> length"): the input it reads and
    how to count one request's array of it into the profile's bins."""
    binners: dict[str, tuple[str, Binner]] = {}
    for name, expected in profile.items():
        if expected.get("kind") == "ids":
            binners[name] = (name, ids_binner(expected))
            if "length_axis" in expected:
                binners[name + LENGTH_SUFFIX] = (name, _length_binner(int(expected["length_axis"]),
                                                                      len(expected["length_fractions"])))
        else:
            binners[name] = (name, _values_binner(np.asarray(expected["edges"], np.float64)))
    return binners


def _length_binner(axis: int, buckets: int) -> Binner:
    return lambda array, _max_values: _octaves(np.full(array.shape[0], array.shape[axis]), buckets)


def _values_binner(edges: np.ndarray) -> Binner:
    return lambda array, max_values: np.bincount(np.searchsorted(edges, _subsampled(array, max_values), side="left"),
                                                 minlength=len(edges) + 1)


def _subsampled(array: np.ndarray, max_values: int) -> np.ndarray:
    """The array's values, evenly subsampled to at most `max_values` (binning a large image costs numpy work)."""
    values = array.ravel()
    return values[::math.ceil(values.size / max_values)] if values.size > max_values else values


def expected_fractions(profile: Mapping[str, Mapping[str, Any]], name: str) -> list[float]:
    """The calibration fractions of the bins `profile_binners` counts under `name`."""
    if name.endswith(LENGTH_SUFFIX) and name not in profile:
        return list(profile[name[:-len(LENGTH_SUFFIX)]]["length_fractions"])
    return list(profile[name]["fractions"])


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
