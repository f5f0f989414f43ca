"""The generative gate as a test runs it (`deploycheck.assert_generation(spec)` in the pytest plugin, or directly):
every format exported under one directory per model, the report recorded for the end-of-run summary, held to the
model's stored baseline (see `deploycheck.generation.regression`), and a failure that lists every problem and
says how to accept new figures. Pytest-free: the plugin hands it a `record` callback and the baseline mode."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import replace
from pathlib import Path
from typing import Any

from deploycheck.accepted import AcceptedStore
from deploycheck.errors import FormatUnavailable
from deploycheck.generation.decoders import Decoder
from deploycheck.generation.formats import load_decoder
from deploycheck.generation.gate import GenerationReport, gate_decoder
from deploycheck.generation.regression import (
    accepted_artifacts,
    baseline_path,
    compare_generation,
    read_generation_baseline,
)
from deploycheck.generation.spec import GenerativeSpec


class GenerationCheck:
    """`artifacts_dir/<model>/<format>` holds the exports; `record(data)` receives the report as JSON data (with
    its results of the run document, baseline checks included, under "results"); `baselines_dir` and `mode`
    ("compare", "update", "update-new"; None: baselines off) as for single-pass models: in "update" modes the
    caller writes the baselines of passing reports (in the plugin, the controller at the end of the run); the
    `accepted` store holds the artifacts a baseline accepted, timed beside the new ones. `formats`, when given
    (`--deploycheck-formats`), is the run's choice of formats: a spec's others are not gated, and a spec left
    with none is `not_applicable` (the plugin's `pytest.skip`). `sign_key` signs every export
    (`--deploycheck-sign-key`)."""

    def __init__(self, artifacts_dir: Path, record: Callable[[dict[str, Any]], None] | None = None,
                 baselines_dir: Path | None = None, mode: str | None = None,
                 accepted: AcceptedStore | None = None, formats: Sequence[str] | None = None,
                 not_applicable: Callable[[str], Any] | None = None, sign_key: str | None = None) -> None:
        self.artifacts_dir = Path(artifacts_dir)
        self.sign_key = sign_key
        self.formats = formats
        self.not_applicable = not_applicable
        self.record = record or (lambda data: None)
        self.baselines_dir = baselines_dir
        self.mode = mode if baselines_dir is not None else None
        self.accepted = accepted

    def assert_generation(self, spec: GenerativeSpec,
                          timing_lock: Callable[[], AbstractContextManager[Any]] = nullcontext) -> GenerationReport:
        """Gate `spec`'s decoder, its timing rounds under `timing_lock` (the run's bench lock)."""
        __tracebackhide__ = True
        if self.formats is not None:
            chosen = tuple(name for name in spec.formats if name in self.formats)
            if not chosen:
                reason = f"{spec.name}: none of its formats {list(spec.formats)} is among the run's formats"
                if self.not_applicable is None:
                    raise FormatUnavailable(reason)
                self.not_applicable(reason)
            spec = replace(spec, formats=chosen)
        stored = None
        if self.mode in ("compare", "update-new") and self.baselines_dir is not None:
            where = baseline_path(self.baselines_dir, spec.name)
            stored = read_generation_baseline(self.baselines_dir, spec.name)
            if stored is None and self.mode == "compare":  # said before anything is exported or timed
                raise AssertionError(f"{spec.name}: no generation baseline at {where}; record it with `pytest "
                                     "--deploycheck-update-new` (or run without the regression gate: "
                                     "--deploycheck-no-baselines)")
        report = gate_decoder(spec, self.artifacts_dir / spec.name, accepted=self._accepted_decoders(stored),
                              sign_key=self.sign_key, timing_lock=timing_lock)
        problems = [problem for row in report.rows for problem in row.problems]
        comparison = compare_generation(report.to_dict(), stored, str(where)) if stored is not None else None
        if comparison is not None:
            problems += comparison.regressions
        data: dict[str, Any] = {**report.to_dict(), "results": [
            result.to_dict() for result in report.results(comparison.checks if comparison else None)]}
        self.record(data)
        if problems:
            listed = "\n".join(f"  {problem}" for problem in problems)
            raise AssertionError(f"{report}\n\n{spec.name} failed the generative gate:\n{listed}\n\nTo accept a "
                                 "larger quantization error, raise GenerativeSpec(max_kl=..., min_top1_agreement="
                                 "...); to accept new figures as the baseline, run `pytest --deploycheck-update`.")
        return report

    def _accepted_decoders(self, stored: dict[str, Any] | None) -> dict[str, Decoder]:
        """The decoders of the artifacts the baseline accepted, by format; one that no longer loads (a library
        upgrade) is said, and its format's speed falls back to the ratio to eager."""
        if stored is None or self.accepted is None:
            return {}
        found = {}
        for name, path in accepted_artifacts(stored, self.accepted).items():
            try:
                found[name] = load_decoder(path, trust_code=True)  # our own export, copied into the store
            except Exception as exc:
                warnings.warn(f"deploycheck: the accepted {name} artifact {path} does not load ({exc}); its speed "
                              "is compared with eager's instead", stacklevel=3)
        return found
