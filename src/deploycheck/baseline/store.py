"""The `baselines/` store: one JSON record per model x format (`baselines/<model>/<format>.json`), keys sorted,
written atomically, and read back only when every figure in it is a possible one."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, cast

from deploycheck.errors import BaselineError
from deploycheck.jsonio import write_json
from deploycheck.rows import Record

SCHEMA = 1


SECTIONS = ("size", "parity", "accuracy", "latency", "speedup")
GENERATIVE_FILE = "generative.json"  # a model's generative-gate baseline beside its formats' (deploycheck.generation)


class BaselineStore:
    """`root/<model>/<format>.json`, plus `root/<model>/<format>.artifact/` when artifacts are kept."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def path(self, model: str, format_name: str) -> Path:
        return self.root / model / f"{format_name}.json"

    def artifact_dir(self, model: str, format_name: str) -> Path:
        return self.root / model / f"{format_name}.artifact"

    def read(self, model: str, format_name: str) -> Record | None:
        """The stored record, None when there is none; a file that cannot be used raises naming it."""
        path = self.path(model, format_name)
        if not path.exists():
            return None
        return read_record(path)

    def write(self, record: Record) -> Path:
        path = self.path(record["model"], record["format"])
        write_json(path, record)
        return path

    def entries(self) -> list[tuple[str, str]]:
        """Every (model, format) with a stored record."""
        if not self.root.is_dir():
            return []
        return sorted((p.parent.name, p.stem) for p in self.root.glob("*/*.json") if p.name != GENERATIVE_FILE)


def read_record(path: Path) -> Record:
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
    return cast(Record, record)


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


def record_from_row(row: Mapping[str, Any], passed_only: bool = True) -> Record:
    """The baseline record of a measured row: its stored sections, leaving out any section whose own gate failed
    (a failing measurement must not become the new standard)."""
    record: Record = {"schema": SCHEMA, "model": row["model"], "format": row["format"]}
    if row.get("size_bytes") is not None:
        record["size"] = {"bytes": row["size_bytes"], "parameters": row.get("parameters")}
    for section in ("parity", "accuracy", "latency", "speedup"):
        data = row.get(section)
        if isinstance(data, dict) and data and not (passed_only and data.get("passed") is False):
            record[section] = dict(data)
    if isinstance(row.get("environment"), dict):
        record["environment"] = row["environment"]
    if row.get("counters"):
        record["counters"] = row["counters"]
    return record


def measured_sections(record: Mapping[str, Any]) -> list[str]:
    return [s for s in SECTIONS if s in record]


def merge_records(old: Record | None, new: Record, only_missing: bool) -> Record:
    """`new`'s sections over `old`'s (`only_missing`: add sections `old` lacks, change nothing it has)."""
    merged: dict[str, Any] = dict(old or {})
    added = [s for s in SECTIONS if s in new and (not only_missing or s not in merged)]
    if old and not added:
        return cast(Record, merged)
    merged.update({k: v for k, v in new.items() if k not in SECTIONS})
    merged.update({s: new[s] for s in added})  # type: ignore[literal-required]  # s is one of SECTIONS
    return cast(Record, merged)


def stale_entries(store: BaselineStore, models: Sequence[str], formats: Sequence[str]) -> list[Path]:
    """Stored baselines whose model is not among `models` or whose format is not among `formats`."""
    return [store.path(m, f) for m, f in store.entries() if m not in models or f not in formats]


def load_records(path: Path) -> dict[tuple[str, str], Record]:
    """Every (model, format) record in a baselines directory, a JSON report (`--deploycheck-report`: its
    single-pass results, or the rows of a report written before results had a kind), or a single baseline file;
    report rows are turned into records as the plugin would store them."""
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
        for position, result in enumerate(data["results"]):
            if not isinstance(result, dict) or not isinstance(result.get("model"), str) or \
                    not isinstance(result.get("format"), str):
                raise BaselineError(f"{path}: results[{position}] has no 'model' and 'format'")
            if result.get("kind", "single-pass") != "single-pass":
                continue  # a decoder's figures are held to its generation baseline, not compared here
            row = result["measurements"] if isinstance(result.get("measurements"), dict) else result
            records[(result["model"], result["format"])] = record_from_row(row, passed_only=False)
        return records
    record = read_record(path)
    return {(record["model"], record["format"]): record}
