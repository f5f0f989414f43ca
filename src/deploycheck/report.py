"""Reports: the end-of-run summary table and the JSON report.

A row is the dict of everything measured for one model x format (what the `Gate` recorded). Columns that no row
has a value for are left out, so a run that only checks parity prints a parity table.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from deploycheck.parity import format_table


def _get(row: dict[str, Any], *keys: str) -> Any:
    value: Any = row
    for key in keys:
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return value


def human_size(size: float | None) -> str:
    if size is None:
        return ""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return ""


def _pct(value: Any) -> str:
    return "" if value is None else f"{value:.2%}"


def _num(value: Any, spec: str = ".3g") -> str:
    return "" if value is None else format(value, spec)


def _status(row: dict[str, Any]) -> str:
    checks = [_get(row, section, "passed") for section in ("parity", "accuracy", "speed", "baseline")]
    known = [c for c in checks if c is not None]
    if not known:
        return ""
    return "ok" if all(known) else "FAIL"


COLUMNS: list[tuple[str, Callable[[dict[str, Any]], str]]] = [
    ("model", lambda r: str(r.get("model", ""))),
    ("format", lambda r: str(r.get("format", ""))),
    ("size", lambda r: human_size(r.get("size_bytes"))),
    ("size/onnx", lambda r: _num(r.get("size_ratio_vs_onnx"), ".2f")),
    ("params", lambda r: _num(r.get("parameters"), "d")),
    ("max abs err", lambda r: _num(_get(r, "parity", "max_abs"))),
    ("top-1 agree", lambda r: _pct(_get(r, "parity", "top1_agreement"))),
    ("accuracy", lambda r: _pct(_get(r, "accuracy", "value"))),
    ("drop", lambda r: _pct(_get(r, "accuracy", "drop"))),
    ("p50 ms", lambda r: _num(_get(r, "speed", "p50_ms"), ".3f")),
    ("p99 ms", lambda r: _num(_get(r, "speed", "p99_ms"), ".3f")),
    ("samples/s", lambda r: _num(_get(r, "speed", "throughput_per_s"), ".0f")),
    ("speedup vs eager", lambda r: _num(_get(r, "speed", "speedup_vs_eager"), ".2f")),
    ("vs baseline", lambda r: str(_get(r, "baseline", "change") or "")),
    ("status", _status),
]


def with_size_ratios(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows with `size_ratio_vs_onnx`: each format's size over its model's fp32 ONNX size, when that was run."""
    onnx_sizes = {r["model"]: r["size_bytes"] for r in rows if r.get("format") == "onnx" and r.get("size_bytes")}
    return [{**r, "size_ratio_vs_onnx": r["size_bytes"] / onnx_sizes[r["model"]]}
            if r.get("model") in onnx_sizes and r.get("size_bytes") else dict(r) for r in rows]


def summary_table(rows: Sequence[dict[str, Any]]) -> str:
    """One table, a row per model x format, keeping only the columns some row has a value for."""
    cells = [[render(row) for _, render in COLUMNS] for row in with_size_ratios(rows)]
    keep = [i for i, (title, _) in enumerate(COLUMNS) if title in ("model", "format") or any(c[i] for c in cells)]
    return format_table([COLUMNS[i][0] for i in keep], [[c[i] for i in keep] for c in cells])


def write_json(path: Path, data: Any) -> None:
    """Write JSON atomically (temporary file in the same directory, then rename), keys sorted for diffs."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(handle, "w") as stream:
            json.dump(data, stream, indent=2, sort_keys=True, default=str)
            stream.write("\n")
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
