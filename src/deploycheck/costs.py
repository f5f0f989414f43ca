"""Deterministic cost counters of an exported graph, and the triage line that compares two sets of them.

Timings move with the machine; these do not. Each format counts, once, when it exports (so a run costs nothing
extra), what its graph holds: the operator types and how many of each, the bytes of its weights, and in an
int8 format the compute nodes left in floating point; the exporter adds the eager model's forward FLOPs per
sample (torch's `FlopCounterMode`). They go into the artifact's sidecar, the row, the baseline and the history.
When latency moves, comparing the counters says where to look: unchanged counters point at the machine or the
runtime, moved ones name what changed in the exported graph ("+2 MatMul, +24% FLOPs": the model, or the
exporter that wrote it).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any, TypedDict

UNCHANGED = "cost counters unchanged: the machine or the runtime, not the model"
MOST_NAMED = 6  # operator types named in one triage line; the rest are counted


class CostCounters(TypedDict, total=False):
    """What an exported graph costs, independent of the machine that runs it."""

    flops_per_sample: int  # forward FLOPs of the eager model on the example inputs, per sample of the batch
    ops: dict[str, int]  # operator type in the exported graph -> how many nodes
    weight_bytes: int  # bytes of the graph's weights and constants as stored
    float_compute_nodes: int  # matrix products and convolutions computed in floating point
    fallback_nodes: int  # operators left outside the accelerating delegate, to a slower fallback runtime


def op_counts(op_types: Iterable[str]) -> dict[str, int]:
    """How many nodes of each operator type, in name order (a stable record to compare and to diff)."""
    return dict(sorted(Counter(op_types).items()))


def cost_change(old: Mapping[str, Any] | None, new: Mapping[str, Any] | None) -> str:
    """One line on what moved between two sets of counters: `UNCHANGED`, or the changes named ("+2 MatMul,
    -1 Gelu, +24% FLOPs"); empty when either side has no counters (recorded before they existed)."""
    changes = counter_changes(old, new)
    if changes is None:
        return ""
    if not changes:
        return UNCHANGED
    return f"cost counters moved (the exported graph changed): {', '.join(changes)}"


def counter_changes(old: Mapping[str, Any] | None, new: Mapping[str, Any] | None) -> list[str] | None:
    """Each counter that moved, in words, the operator types that moved most first; None when either side has no
    counters."""
    if not old or not new:
        return None
    old_ops, new_ops = dict(old.get("ops") or {}), dict(new.get("ops") or {})
    steps = {op: new_ops.get(op, 0) - old_ops.get(op, 0) for op in set(old_ops) | set(new_ops)}
    moved = sorted((op for op, step in steps.items() if step), key=lambda op: (-abs(steps[op]), op))
    changes = [f"{steps[op]:+d} {op}" for op in moved[:MOST_NAMED]]
    if len(moved) > MOST_NAMED:
        changes.append(f"{len(moved) - MOST_NAMED} more op type(s)")
    for key, label in (("flops_per_sample", "FLOPs"), ("weight_bytes", "weight bytes")):
        before, after = old.get(key), new.get(key)
        if before and after is not None and after != before:
            changes.append(f"{after / before - 1:+.0%} {label}" if abs(after / before - 1) >= 0.005
                           else f"{after - before:+,} {label}")
    for key, label in (("float_compute_nodes", "compute node(s) in float"), ("fallback_nodes", "fallback node(s)")):
        before, after = old.get(key), new.get(key)
        if before is not None and after is not None and after != before:
            changes.append(f"{after - before:+d} {label}")
    return changes
