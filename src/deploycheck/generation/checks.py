"""What a generative format is held to, against eager on the same prompts.

- **Greedy match** (fp32 formats: exactly): the share of rows whose continuation is eager's, the first position
  where one is not, and the two logits there (a near tie, or a broken cache).
- **Cache consistency**: each decode step's logits equal those of a full recompute of the same prefix (a
  prefill over prompt + tokens so far). A cache that drops, misplaces (`cache_position` off by one) or keeps a
  previous sequence's entries fails here, at the first step it is wrong.
- **Token-distribution quality** (quantized formats), teacher-forced on eager's greedy stream as llama.cpp's
  perplexity tool does: mean and p99 KL(eager || format) per position, the share of positions whose top-1 is
  eager's, the RMS of the change in probability of eager's token (delta-p), and ln(PPL ratio) on that stream.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from deploycheck.generation.decoders import Decoder
from deploycheck.generation.streams import Stream

CONSISTENCY_TOLERANCE = 1e-3  # of the largest logit's magnitude: fp32 reassociation, not a wrong cache


@dataclass
class GreedyMatch:
    rows_matching: float
    first_divergence: tuple[int, int] | None  # (row, position) of the earliest differing token
    detail: str = ""

    @property
    def exact(self) -> bool:
        return self.first_divergence is None


def greedy_match(reference: Stream, candidate: Stream) -> GreedyMatch:
    same = reference.tokens == candidate.tokens
    rows = float(same.all(axis=1).mean())
    if same.all():
        return GreedyMatch(rows, None)
    positions = np.where(~same.all(axis=0))[0]
    position = int(positions[0])
    row = int(np.where(~same[:, position])[0][0])
    ref, got = reference.tokens[row, position], candidate.tokens[row, position]
    detail = (f"row {row}, new token {position}: eager chose {ref} (logit {reference.logits[row, position, ref]:.4f}, "
              f"this format's {candidate.logits[row, position, ref]:.4f}), this format chose {got} (logit "
              f"{candidate.logits[row, position, got]:.4f}, eager's {reference.logits[row, position, got]:.4f})")
    return GreedyMatch(rows, (row, position), detail)


@dataclass
class Consistency:
    max_error: float  # relative to the largest logit
    first_bad_step: int | None  # the new-token index whose decode logits differ from a full recompute

    @property
    def passed(self) -> bool:
        return self.first_bad_step is None


def cache_consistency(decoder: Decoder, prompts: np.ndarray, stream: Stream) -> Consistency:
    """Each step of `stream` (made by `decoder` from `prompts`) against a prefill over the same prefix."""
    worst, first_bad = 0.0, None
    for step in range(stream.tokens.shape[1]):
        prefix = np.concatenate([prompts, stream.tokens[:, :step]], axis=1).astype(np.int64)
        recomputed = decoder.prefill(prefix)[0][:, -1]
        scale = max(1.0, float(np.abs(recomputed).max()))
        error = float(np.abs(stream.logits[:, step] - recomputed).max()) / scale
        worst = max(worst, error)
        if error > CONSISTENCY_TOLERANCE and first_bad is None:
            first_bad = step
    return Consistency(worst, first_bad)


@dataclass
class Quality:
    mean_kl: float
    p99_kl: float
    top1_agreement: float
    delta_p_rms: float
    ln_ppl_ratio: float


def token_quality(reference: Stream, candidate: Stream) -> Quality:
    """`candidate` (teacher-forced on `reference`'s tokens) against `reference`, position by position."""
    log_p, log_q = _log_softmax(reference.logits), _log_softmax(candidate.logits)
    kl = (np.exp(log_p) * (log_p - log_q)).sum(-1)
    index = reference.tokens[..., None]
    p_token = np.take_along_axis(log_p, index, -1)[..., 0]
    q_token = np.take_along_axis(log_q, index, -1)[..., 0]
    return Quality(mean_kl=float(kl.mean()), p99_kl=float(np.percentile(kl, 99)),
                   top1_agreement=float((candidate.logits.argmax(-1) == reference.logits.argmax(-1)).mean()),
                   delta_p_rms=float(np.sqrt(np.mean((np.exp(q_token) - np.exp(p_token)) ** 2))),
                   ln_ppl_ratio=float(np.mean(p_token) - np.mean(q_token)))


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits.astype(np.float64) - logits.max(-1, keepdims=True)
    normalised: np.ndarray = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
    return normalised
