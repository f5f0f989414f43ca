"""The KV cache as plain tensors: the two graphs a decoder is exported as, and the names their tensors carry.

`Prefill` runs the prompt and returns the logits and every layer's keys and values; `Decode` takes one new token
per row and the cache so far (`past.{layer}.key` / `.value`), and returns the logits and the grown cache
(`present.{layer}.*`), as Hugging Face Optimum names an ONNX decoder "with past". Inside, the tensors are put back
into a transformers `DynamicCache`, so positions (`cache_position`) come from the cache's length exactly as in
eager generation: an export cannot drift from the model's own position handling. transformers is imported only
where a cache is built: the single-pass gate imports this package and must not need it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from transformers import DynamicCache


def cache_names(layers: int, prefix: str) -> list[str]:
    """`{prefix}.{i}.key`, `{prefix}.{i}.value` for each layer, in the order the graphs take and return them."""
    return [f"{prefix}.{i}.{kind}" for i in range(layers) for kind in ("key", "value")]


def flat_cache(cache: Any) -> tuple[torch.Tensor, ...]:
    """A `DynamicCache`'s tensors, layer by layer, keys before values."""
    return tuple(tensor for layer in cache.layers for tensor in (layer.keys, layer.values))


def dynamic_cache(past: tuple[torch.Tensor, ...]) -> DynamicCache:
    """The `DynamicCache` holding `past` (as `flat_cache` lays it out)."""
    from transformers import DynamicCache  # an optional dependency (see above); `GenerativeSpec` says so first

    cache = DynamicCache()
    for layer in range(len(past) // 2):
        cache.update(past[2 * layer], past[2 * layer + 1], layer)
    return cache


class Prefill(torch.nn.Module):
    """input_ids (batch x prompt) -> logits, then every layer's keys and values."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model
        self.eval()  # a new module is in training mode, which the exporter warns of

    def forward(self, input_ids: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.model(input_ids=input_ids, use_cache=True)
        return (out.logits, *flat_cache(out.cache))


class Decode(torch.nn.Module):
    """input_ids (batch x 1) and the cache so far -> logits, then the cache with this step appended."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model
        self.eval()  # a new module is in training mode, which the exporter warns of

    def forward(self, input_ids: torch.Tensor, *past: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.model(input_ids=input_ids, cache=dynamic_cache(past), use_cache=True)
        return (out.logits, *flat_cache(out.cache))


def examples(model: torch.nn.Module,
             prompts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, ...]]:
    """Example arguments for exporting both graphs: two prompt rows (torch.export specialises a batch of 1), one
    next token per row and the cache after the prompts."""
    example = prompts[:2].to(torch.int64)
    if len(example) < 2:
        example = example.repeat(2, 1)
    with torch.inference_mode():
        out = model(input_ids=example, use_cache=True)
    past = tuple(t.clone() for t in flat_cache(out.cache))
    return example, out.logits[:, -1:].argmax(-1), past


def dynamic_shapes(layers: int, max_batch: int | None = None,
                   max_length: int | None = None) -> tuple[tuple[dict[int, Any], ...], tuple[Any, ...]]:
    """torch.export's dynamic shapes of the prefill graph (batch, prompt length) and of the decode graph (batch;
    batch and cached length of every past tensor), unbounded unless bounds are given (a runtime that plans its
    memory ahead needs them): at most `max_batch` rows, prompts and caches of at most `max_length` positions."""
    dynamic = torch.export.Dim.DYNAMIC
    batch = dynamic if max_batch is None else dynamic(min=1, max=max_batch)
    length = dynamic if max_length is None else dynamic(min=2, max=max_length)
    return ({0: batch, 1: length},), ({0: batch}, tuple([{0: batch, 2: length}] * (2 * layers)))
