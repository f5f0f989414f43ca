"""The generative gate: every format of a `GenerativeSpec` exported, run greedily per batch size and held to
eager (see `deploycheck.generation.checks` for the rules), one row per format x batch size. The speed columns and
the best-format line come from rounds in which every format generates once, side by side (a row's own checked
run, alone, would let a neighbour's burst pick the winner)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from deploycheck.errors import FormatUnavailable
from deploycheck.formats.base import MIN_INT8_WEIGHT_FRACTION, int8_in_name_only
from deploycheck.generation.artifact import read_sidecar
from deploycheck.generation.checks import (
    CONSISTENCY_TOLERANCE,
    Consistency,
    GreedyMatch,
    Quality,
    cache_consistency,
    greedy_match,
    token_quality,
)
from deploycheck.generation.decoders import Decoder, EagerDecoder
from deploycheck.generation.formats import export_decoder, load_decoder
from deploycheck.generation.spec import GenerativeSpec
from deploycheck.generation.streams import Stream, generate, median_tpot_s, timed_rounds
from deploycheck.machine import gc_paused, torch_threads
from deploycheck.run_result import Check, Result
from deploycheck.table import format_table, human_size

TIMING_ROUNDS = 5  # side-by-side rounds per batch size behind the speed columns and the best format: a speed
# regression must show in every one (with 3, one unchanged decoder read REGRESSED once in 8 runs on an overloaded
# machine, each of its rounds preempted)
TIMING_THREADS = 1  # torch's intra-op threads while timing, as every runtime's: formats compared on equal terms


@dataclass
class GenerationRow:
    format: str
    batch_size: int
    size_bytes: int | None
    int8_fraction: float | None  # of a quantized format's weights, in 8 bits or fewer
    quantized_modules: str | None  # which layers its quantizer takes, as its sidecar says
    quantized: bool  # its sidecar records a quantization: judged by KL and top-1, else held to eager's tokens exactly
    greedy: GreedyMatch
    consistency: Consistency
    quality: Quality
    stream: Stream
    checks: list[Check] = field(default_factory=list)  # what it was held to, as the run document holds it
    problems: list[str] = field(default_factory=list)  # the failing checks, as the failing test says them
    timed: list[Stream] = field(default_factory=list)  # the side-by-side rounds the speed figures come from
    accepted_timed: list[Stream] = field(default_factory=list)  # the accepted artifact's, in the same rounds

    @property
    def passed(self) -> bool:
        return not any(check.failed for check in self.checks)

    def speed(self) -> dict[str, float]:
        """Medians over the side-by-side rounds: TTFT, TPOT and the median inter-token latency in ms, decode
        tokens/s."""
        streams = self.timed or [self.stream]
        return {"ttft_ms": float(np.median([s.ttft_s for s in streams])) * 1e3,
                "tpot_ms": median_tpot_s(streams) * 1e3,
                "itl_p50_ms": float(np.median([s.itl_p50_s for s in streams])) * 1e3,
                "decode_tokens_per_s": float(np.median([s.decode_tokens_per_s() for s in streams]))}

    def to_dict(self) -> dict[str, Any]:
        return {"format": self.format, "batch_size": self.batch_size, "size_bytes": self.size_bytes,
                "int8_weight_fraction": self.int8_fraction, "quantized_modules": self.quantized_modules,
                "greedy_rows_matching": self.greedy.rows_matching,
                "first_divergence": self.greedy.first_divergence, "cache_max_error": self.consistency.max_error,
                "cache_first_bad_step": self.consistency.first_bad_step, **asdict(self.quality), **self.speed(),
                "rounds": _rounds(self.timed), "accepted_rounds": _rounds(self.accepted_timed) or None,
                "passed": self.passed, "problems": self.problems}


def _rounds(streams: list[Stream]) -> dict[str, list[float]]:
    return {"ttft_ms": [s.ttft_s * 1e3 for s in streams], "tpot_ms": [s.tpot_s * 1e3 for s in streams],
            "itl_p50_ms": [s.itl_p50_s * 1e3 for s in streams]} if streams else {}


@dataclass
class GenerationReport:
    model: str
    rows: list[GenerationRow]
    skipped: dict[str, str] = field(default_factory=dict)  # format -> why it could not run here
    artifacts: dict[str, str] = field(default_factory=dict)  # format -> its artifact directory (eager has none)

    @property
    def passed(self) -> bool:
        return all(row.passed for row in self.rows)

    def best(self) -> dict[int, GenerationRow]:
        """Per batch size, the passing format with the most decode tokens per second (eager aside)."""
        found: dict[int, GenerationRow] = {}
        for row in self.rows:
            if row.passed and row.format != "eager":
                current = found.get(row.batch_size)
                if current is None or row.speed()["decode_tokens_per_s"] > current.speed()["decode_tokens_per_s"]:
                    found[row.batch_size] = row
        return found

    def results(self, comparison: Mapping[str, Sequence[Check]] | None = None) -> list[Result]:
        """One result of the run per format: its checks at every batch size, its size, and (by format) the
        checks of its comparison with the baseline; a format that could not run here is skipped with why."""
        comparison = comparison or {}
        results = []
        for name in dict.fromkeys(row.format for row in self.rows):
            rows = [row for row in self.rows if row.format == name]
            size = rows[0].size_bytes
            checks = [check for row in rows for check in row.checks]
            checks += [Check("size_bytes", "reported", float(size), "bytes")] if size is not None else []
            results.append(Result(self.model, name, "generative", tuple(checks + list(comparison.get(name, ())))))
        return results + [Result(self.model, name, "generative", skipped=why) for name, why in self.skipped.items()]

    def to_dict(self) -> dict[str, Any]:
        """The report as JSON data, for CI artifacts."""
        return {"model": self.model, "passed": self.passed, "skipped": self.skipped, "artifacts": self.artifacts,
                "rows": [row.to_dict() for row in self.rows],
                "best": {str(batch): row.format for batch, row in self.best().items()}}

    def __str__(self) -> str:
        table = format_table(
            ["format", "batch", "greedy match", "cache", "low-bit weights", "mean KL", "p99 KL", "top-1",
             "delta-p RMS", "TTFT ms", "TPOT ms", "decode tok/s", "size", "status"],
            [[row.format, str(row.batch_size), f"{row.greedy.rows_matching:.0%}",
              "ok" if row.consistency.passed else f"wrong from step {row.consistency.first_bad_step}",
              "" if row.int8_fraction is None else f"{row.int8_fraction:.0%}",
              f"{row.quality.mean_kl:.2e}", f"{row.quality.p99_kl:.2e}", f"{row.quality.top1_agreement:.1%}",
              f"{row.quality.delta_p_rms:.2e}", f"{row.speed()['ttft_ms']:.2f}", f"{row.speed()['tpot_ms']:.2f}",
              f"{row.speed()['decode_tokens_per_s']:.0f}",
              "" if row.size_bytes is None else human_size(row.size_bytes), "ok" if row.passed else "FAIL"]
             for row in self.rows])
        eager = {row.batch_size: row.speed()["tpot_ms"] for row in self.rows if row.format == "eager"}
        best = []
        for batch, row in sorted(self.best().items()):
            tpot = row.speed()["tpot_ms"]
            versus = f", TPOT {eager[batch] / tpot:.1f}x shorter than eager's" if batch in eager else ""
            best.append(f"best format at batch {batch}: {row.format} ({row.speed()['decode_tokens_per_s']:.0f} "
                        f"decode tokens/s{versus}; medians of {len(row.timed)} side-by-side rounds)")
        problems = [f"  {p}" for row in self.rows for p in row.problems]
        skips = [f"  skipped {name}: {reason}" for name, reason in self.skipped.items()]
        return "\n".join([f"generation of {self.model} against eager (greedy, teacher-forced quality)", table,
                          *best, *problems, *skips])


def gate_decoder(spec: GenerativeSpec, out_dir: Path, exported: Mapping[str, Path] | None = None,
                 trust_code: bool = False, runners: Mapping[str, Decoder] | None = None,
                 accepted: Mapping[str, Decoder] | None = None, sign_key: str | None = None,
                 timing_lock: Callable[[], AbstractContextManager[Any]] = nullcontext) -> GenerationReport:
    """Export each of `spec.formats` under `out_dir/<format>` (or load it from `exported`, by format; `trust_code`
    for `.pt2` artifacts this process did not write; or take the caller's own loaded decoder from `runners`),
    then hold every format and batch size to eager. A format that cannot run here is skipped with its reason.
    `accepted` (by format: the decoder of the artifact its baseline accepted) generates in the same timing
    rounds, so a speed regression is judged on old and new side by side. `sign_key` signs each export. The timing
    rounds run under `timing_lock` (the run's bench lock: no other worker's benchmark shares the CPU with them),
    on one thread, with the garbage collector paused, as a single-pass benchmark does."""
    exported, runners = dict(exported or {}), dict(runners or {})
    accepted = {name: decoder for name, decoder in (accepted or {}).items() if name in spec.formats}
    decoders: dict[str, tuple[Decoder, dict[str, Any]]] = {}
    skipped: dict[str, str] = {}
    for name in spec.formats:
        if name in runners:
            decoders[name] = (runners[name], read_sidecar(exported[name]) if name in exported else {})
        elif name == "eager":
            decoders[name] = (EagerDecoder(spec.model, f"{spec.name}/eager"), {})
        else:
            try:
                path = exported.get(name) or export_decoder(spec, name, Path(out_dir) / name,
                                                            fp32_onnx=exported.get("onnx"), sign_key=sign_key)
            except FormatUnavailable as exc:
                skipped[name] = str(exc)
                continue
            exported[name] = path
            decoders[name] = (load_decoder(path, trust_code=trust_code), read_sidecar(path))
    reference = EagerDecoder(spec.model, f"{spec.name}/eager")
    rows = []
    for batch in spec.batch_sizes:
        prompts = spec.prompts[:batch].numpy().astype(np.int64)
        expected = generate(reference, prompts, spec.new_tokens)
        for name, (decoder, sidecar) in decoders.items():
            free = generate(decoder, prompts, spec.new_tokens)
            forced = generate(decoder, prompts, spec.new_tokens, forced=expected.tokens)
            quantization = sidecar.get("quantization") or {}
            row = GenerationRow(name, batch, sidecar.get("size_bytes"), quantization.get("int8_weight_fraction"),
                                quantization.get("modules"), bool(quantization),
                                greedy_match(expected, free),
                                cache_consistency(decoder, prompts, free), token_quality(expected, forced), free)
            row.checks = _checks(spec, row)
            row.problems = _problems(decoder.label, row)
            rows.append(row)
        timing = {name: decoder for name, (decoder, _) in decoders.items()}
        timing.update({f"{name} (accepted)": decoder for name, decoder in accepted.items() if name in decoders})
        with timing_lock(), torch_threads(TIMING_THREADS), gc_paused():
            timed = timed_rounds(timing, prompts, spec.new_tokens, TIMING_ROUNDS)
        for row in rows[-len(decoders):]:
            row.timed, row.accepted_timed = timed[row.format], timed.get(f"{row.format} (accepted)", [])
    return GenerationReport(spec.name, rows, skipped, {name: str(path) for name, path in exported.items()})


def _checks(spec: GenerativeSpec, row: GenerationRow) -> list[Check]:
    """What one format at one batch size is held to: eager's tokens exactly and a cache equal to a recompute (an
    fp32 format), or its budgets of low-bit weights, mean KL and top-1 (a quantized one); its speed, reported."""
    batch = row.batch_size
    quantized = row.quantized
    divergence = row.greedy.first_divergence
    greedy = Check("greedy_match", "reported" if quantized else "ok" if row.greedy.exact else "FAIL",
                   row.greedy.rows_matching, "fraction", "eager", None if quantized else 1.0, "min",
                   batch_size=batch, step=None if divergence is None else divergence[1])
    checks = [greedy, Check("cache_max_error", "ok" if row.consistency.passed else "FAIL", row.consistency.max_error,
                            "of the largest logit", "eager", CONSISTENCY_TOLERANCE, "max", batch_size=batch,
                            step=row.consistency.first_bad_step)]
    if quantized and row.int8_fraction is not None:
        checks.append(Check("int8_weight_fraction", "FAIL" if int8_in_name_only(row.int8_fraction) else "ok",
                            row.int8_fraction, "fraction", "budget", MIN_INT8_WEIGHT_FRACTION, "min",
                            batch_size=batch))
    kl, top1 = row.quality.mean_kl, row.quality.top1_agreement
    checks += [Check("mean_kl", "reported" if not quantized else "FAIL" if kl > spec.max_kl else "ok", kl, "nats",
                     "budget" if quantized else "eager", spec.max_kl if quantized else None, "max", batch_size=batch),
               Check("top1_agreement", "reported" if not quantized else "FAIL" if top1 < spec.min_top1_agreement
                     else "ok", top1, "fraction", "budget" if quantized else "eager",
                     spec.min_top1_agreement if quantized else None, "min", batch_size=batch)]
    checks += [Check(metric, "reported", value, SPEED_UNITS[metric], batch_size=batch)
               for metric, value in row.speed().items()]
    return checks


SPEED_UNITS = {"ttft_ms": "ms", "tpot_ms": "ms", "itl_p50_ms": "ms", "decode_tokens_per_s": "tokens/s"}


def _problems(label: str, row: GenerationRow) -> list[str]:
    """The failing checks of a row, as the failing test says them."""
    found = []
    where = f"{label} at batch {row.batch_size}"
    for check in row.checks:
        if not check.failed:
            continue
        if check.metric == "cache_max_error":
            found.append(f"{where}: decode step {check.step} (new token {check.step}) differs from a full recompute "
                         f"of the same prefix by {check.value:.2e} of the largest logit: the KV cache is wrong from "
                         "that step")
        elif check.metric == "greedy_match":
            found.append(f"{where}: the greedy continuation leaves eager's at {row.greedy.detail}")
        elif check.metric == "int8_weight_fraction":
            takes = f"; its quantizer takes {row.quantized_modules}" if row.quantized_modules else ""
            found.append(f"{where}: int8 in name only: {check.value:.0%} of its weights are in 8 bits or "
                         f"fewer (at least {check.limit:.0%} expected{takes})")
        elif check.metric == "mean_kl":
            found.append(f"{where}: mean KL divergence from eager {check.value:.3g} nats exceeds max_kl "
                         f"{check.limit:.3g}")
        elif check.metric == "top1_agreement":
            found.append(f"{where}: top-1 agreement with eager {check.value:.1%} is below {check.limit:.0%}")
    return found
