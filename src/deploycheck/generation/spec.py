"""`GenerativeSpec`: what the generative gate needs to know about a decoder, validated once.

The model follows transformers' causal-LM call convention of the pinned release (5.24): `model(input_ids=...,
cache=..., use_cache=True)` returns `.logits` (batch x positions x vocabulary) and `.cache`, a `DynamicCache`
whose `layers` hold `keys` and `values` (batch x kv heads x positions x head size). Prompts are rows of token ids
of one length (no padding, so no attention mask is needed: every position attends to all before it).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from deploycheck.errors import SpecError
from deploycheck.formats.base import installed

GENERATIVE_FORMATS = ("eager", "torch_export", "onnx", "openvino", "onnx_int8_weight", "onnx_int4_weight",
                      "openvino_int8_weight", "openvino_int4_weight", "torchao_int8_weight", "executorch",
                      "executorch_8da4w", "aot_inductor")
OPT_IN_FORMATS = ("aot_inductor",)  # gated only where named: compiling takes tens of seconds
DEFAULT_GENERATIVE_FORMATS = tuple(name for name in GENERATIVE_FORMATS if name not in OPT_IN_FORMATS)


@dataclass
class GenerativeSpec:
    """A decoder to gate: `prompts` (rows x prompt length, int64 ids), `new_tokens` generated greedily per row, in
    batches of each of `batch_sizes` rows. Quantized formats are held to `max_kl` (mean KL divergence from eager,
    in nats, teacher-forced on eager's greedy stream) and `min_top1_agreement` (the share of positions whose most
    likely token is eager's)."""

    name: str
    model: torch.nn.Module
    prompts: torch.Tensor
    new_tokens: int = 32
    batch_sizes: Sequence[int] = (1, 4)
    formats: Sequence[str] = DEFAULT_GENERATIVE_FORMATS
    max_kl: float = 0.05
    min_top1_agreement: float = 0.9
    format_options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        where = f"generative spec {self.name!r}"
        if not installed("transformers"):
            raise SpecError(f"{where}: the generative gate needs transformers (its DynamicCache carries the KV cache "
                            "of every format): pip install transformers")
        if not isinstance(self.prompts, torch.Tensor) or self.prompts.dim() != 2 or \
                self.prompts.dtype not in (torch.int64, torch.int32):
            raise SpecError(f"{where}: prompts must be a 2-D tensor of token ids (rows x prompt length)")
        if self.prompts.shape[1] < 2:
            raise SpecError(f"{where}: a prompt needs at least 2 tokens (a length of 1 is specialised away by "
                            f"torch.export), got {self.prompts.shape[1]}")
        if self.new_tokens < 2:
            raise SpecError(f"{where}: new_tokens must be at least 2 (TPOT needs a second token), got "
                            f"{self.new_tokens}")
        if not self.batch_sizes or any(b < 1 or b > len(self.prompts) for b in self.batch_sizes):
            raise SpecError(f"{where}: batch_sizes {list(self.batch_sizes)} must each be between 1 and the "
                            f"{len(self.prompts)} prompt rows")
        unknown = [f for f in self.formats if f not in GENERATIVE_FORMATS]
        if unknown:
            raise SpecError(f"{where}: no generative form of {', '.join(unknown)}; known: "
                            f"{', '.join(GENERATIVE_FORMATS)}")
        limit = getattr(getattr(self.model, "config", None), "max_position_embeddings", None)
        if limit is not None and self.prompt_length + self.new_tokens > limit:
            raise SpecError(f"{where}: prompt {self.prompt_length} + {self.new_tokens} new tokens exceed the model's "
                            f"{limit} positions")
        self.model.eval()

    @property
    def prompt_length(self) -> int:
        return int(self.prompts.shape[1])

    def described(self) -> dict[str, Any]:
        """What an exported decoder's sidecar records of the model, for those that serve it without the model:
        its name, the token ids it reads (`vocab_size`: the rows of its input embedding, else the width of its
        logits) and the positions it has (`max_positions`, None when its config names no limit)."""
        embeddings = getattr(self.model, "get_input_embeddings", lambda: None)()
        if isinstance(embeddings, torch.nn.Embedding):
            vocabulary = int(embeddings.num_embeddings)
        else:
            with torch.inference_mode():
                vocabulary = int(self.model(input_ids=self.prompts[:1, :2].to(torch.int64)).logits.shape[-1])
        limit = getattr(getattr(self.model, "config", None), "max_position_embeddings", None)
        return {"model": self.name, "vocab_size": vocabulary, "max_positions": limit}

    def options(self, format_name: str) -> Mapping[str, Any]:
        return self.format_options.get(format_name, {})
