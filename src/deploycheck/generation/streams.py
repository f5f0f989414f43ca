"""Greedy generation through any `Decoder`, free-running or teacher-forced, with the timings users feel.

TTFT is prefill plus choosing the first token; each later token's time is one decode step (the inter-token
latency); TPOT = (end to end - TTFT) / (tokens - 1), as vLLM's benchmark and MLPerf define it. Teacher-forced
runs feed the reference's tokens instead of their own choices, so a quantized decoder's logits are compared with
eager's at the same positions of the same stream (llama.cpp's KL-divergence method).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from deploycheck.generation.decoders import Decoder


@dataclass
class Stream:
    """`tokens` (rows x new tokens) chosen greedily, `logits` (rows x new tokens x vocabulary) they were chosen
    from (under teacher forcing: the logits at the forced stream's positions), and the timings in seconds."""

    tokens: np.ndarray
    logits: np.ndarray
    ttft_s: float
    step_s: list[float]

    @property
    def tpot_s(self) -> float:
        return float(sum(self.step_s) / len(self.step_s))

    @property
    def itl_p50_s(self) -> float:
        """The median decode step: unlike TPOT (their mean), not moved by the one step the scheduler preempted."""
        return float(np.median(self.step_s))

    def decode_tokens_per_s(self) -> float:
        """Rows x (tokens - 1) over the decode time, optimum-benchmark's decode throughput."""
        return float(self.tokens.shape[0] * len(self.step_s) / sum(self.step_s))

    def prefill_tokens_per_s(self, prompt_length: int) -> float:
        return float(self.tokens.shape[0] * prompt_length / self.ttft_s)


def generate(decoder: Decoder, prompts: np.ndarray, new_tokens: int, forced: np.ndarray | None = None) -> Stream:
    """`new_tokens` greedy tokens per row of `prompts`; with `forced` (rows x new tokens), each step is fed the
    forced stream's previous token instead of its own choice."""
    started = time.perf_counter()
    logits, state = decoder.prefill(np.ascontiguousarray(prompts, dtype=np.int64))
    chosen = [logits[:, -1].argmax(-1)]
    ttft = time.perf_counter() - started
    kept, steps = [logits[:, -1]], []
    for position in range(1, new_tokens):
        fed = (forced[:, position - 1] if forced is not None else chosen[-1]).astype(np.int64)[:, None]
        started = time.perf_counter()
        logits, state = decoder.decode(fed, state)
        chosen.append(logits[:, -1].argmax(-1))
        steps.append(time.perf_counter() - started)
        kept.append(logits[:, -1])
    return Stream(np.stack(chosen, 1), np.stack(kept, 1).astype(np.float32), ttft, steps)


def timed_rounds(decoders: Mapping[str, Decoder], prompts: np.ndarray, new_tokens: int,
                 rounds: int) -> dict[str, list[Stream]]:
    """Each decoder's streams over `rounds` rounds in which every decoder generates once, the order rotating per
    round (after one short warm-up each), so a busy neighbour slows them alike: speed compared in one run."""
    runs: dict[str, list[Stream]] = {name: [] for name in decoders}
    names = list(decoders)
    for name in names:
        generate(decoders[name], prompts, min(new_tokens, 4))
    for index in range(rounds):
        for name in names[index % len(names):] + names[:index % len(names)]:
            runs[name].append(generate(decoders[name], prompts, new_tokens))
    return runs


def median_tpot_s(streams: Sequence[Stream]) -> float:
    return float(np.median([stream.tpot_s for stream in streams]))
