"""A model behind one flat interface: positional tensors in, a flat tuple of tensors out.

Users' models take keyword inputs (`input_ids=..., attention_mask=...`) and return dicts, Hugging Face
`ModelOutput`s or NamedTuples. Exporters and runtimes differ in what they accept (TorchScript's tracer refuses a
dict output), so every format exports and runs `FlatModule`, which maps positional inputs to the model's keywords
and its structured output to a tuple in a fixed order; the names come from the structure (dict keys, NamedTuple
fields) and become the artifact's input and output names.

Imports torch at the top: import this module only where torch is needed anyway.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from deploycheck.errors import SpecError


def flatten_outputs(outputs: Any, model_name: str) -> list[torch.Tensor]:
    """A model's outputs as a flat list of tensors, in order: a tensor, a tuple/list/NamedTuple of tensors, or a
    dict / `ModelOutput` of tensors (its values, in key order)."""
    if isinstance(outputs, torch.Tensor):
        return [outputs]
    values = list(outputs.values()) if isinstance(outputs, Mapping) else \
        list(outputs) if isinstance(outputs, (tuple, list)) else None
    if values is not None and all(isinstance(v, torch.Tensor) for v in values):
        return values
    inside = "" if values is None else f" holding {', '.join(sorted({type(v).__name__ for v in values}))}"
    raise SpecError(f"model {model_name!r} returned a {type(outputs).__name__}{inside}; deploycheck needs a "
                    "tensor, a tuple / list / NamedTuple of tensors, or a dict / ModelOutput of tensors. For a "
                    "nested result (e.g. nn.LSTM's `output, (h, c)`), wrap the model so that forward returns a "
                    "flat tuple such as `output, h, c`")


def structure_names(outputs: Any) -> list[str] | None:
    """The names a model's own output structure gives its outputs: a dict's (or ModelOutput's) keys, a
    NamedTuple's fields; None for a plain tensor, tuple or list."""
    if isinstance(outputs, Mapping):
        return [str(key) for key in outputs]
    fields = getattr(type(outputs), "_fields", None)
    if isinstance(outputs, tuple) and fields:
        return [str(field) for field in fields]
    return None


class FlatModule(torch.nn.Module):
    """`model` called with positional tensors (passed as the keywords `input_names` when `keyword`), returning
    a flat tuple of tensors. Its parameters are the model's (under the prefix `model.`)."""

    def __init__(self, model: torch.nn.Module, input_names: Sequence[str], keyword: bool, model_name: str) -> None:
        super().__init__()
        self.model = model
        self.input_names = tuple(input_names)
        self.keyword = keyword
        self.model_name = model_name

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        outputs = self.model(**dict(zip(self.input_names, inputs))) if self.keyword else self.model(*inputs)
        return tuple(flatten_outputs(outputs, self.model_name))
