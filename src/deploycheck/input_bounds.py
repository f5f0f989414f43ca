"""The bounds of a model's inputs, found from its embeddings when they are not given in the spec: the values an
integer input may take (the rows of the embedding table it indexes, e.g. a vocabulary) and how long a dynamic axis
may grow (the rows of a position embedding). They are recorded with every artifact, so that a client's
out-of-vocabulary token id or over-long sequence is refused by name (a 400 from the server, an `InputError` from
`Artifact.run`) instead of failing inside the runtime, or worse, reading past a table on a runtime that does not
check.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from deploycheck.errors import SpecError

if TYPE_CHECKING:
    import torch

INPUT_BOUNDS_VERSION = 1  # in the export cache key: an export cached before bounds were recorded is made again


@dataclass(frozen=True)
class InputBounds:
    """What one input accepts beyond its dtype and shape: `value_range` (inclusive) for integer ids, and the
    largest size of each dynamic axis (`max_sizes`, axis -> size) the model can take."""

    value_range: tuple[int, int] | None = None
    max_sizes: Mapping[int, int] = field(default_factory=dict)


@contextmanager
def embedding_lookups(model: torch.nn.Module) -> Iterator[list[tuple[int, torch.Tensor]]]:
    """Within the block, every call of one of the model's `nn.Embedding` tables is recorded as (its number of rows,
    the indices it was called with)."""
    import torch

    calls: list[tuple[int, torch.Tensor]] = []

    def recorder(rows: int) -> Callable[[torch.nn.Module, tuple[Any, ...]], None]:
        def record(_module: torch.nn.Module, args: tuple[Any, ...]) -> None:
            if args and isinstance(args[0], torch.Tensor):
                calls.append((rows, args[0].detach()))
        return record

    hooks = [module.register_forward_pre_hook(recorder(module.num_embeddings)) for module in model.modules()
             if isinstance(module, torch.nn.Embedding)]
    try:
        yield calls
    finally:
        for hook in hooks:
            hook.remove()


def found_bounds(names: Sequence[str], inputs: Sequence[torch.Tensor], dynamic_axes: Mapping[str, Mapping[int, str]],
                 lookups: Sequence[tuple[int, torch.Tensor]]) -> dict[str, InputBounds]:
    """Bounds read from the embedding calls of one forward pass on `inputs`.

    An integer input whose values are exactly what a table was called with indexes that table: its values must lie
    in [0, rows - 1] (the smallest table wins when it indexes several). A table called with positions (consecutive
    integers along the last axis, starting at some offset) that no input supplied bounds each dynamic axis of the
    examples' length: at most rows - offset.
    """
    value_ranges: dict[str, tuple[int, int]] = {}
    max_sizes: dict[str, dict[int, int]] = {}
    for rows, indices in lookups:
        matched = [name for name, tensor in zip(names, inputs) if _indexes(tensor, indices)]
        for name in matched:
            high = min(rows - 1, value_ranges.get(name, (0, rows - 1))[1])
            value_ranges[name] = (0, high)
        if matched or indices.dim() == 0 or indices.shape[-1] < 2:
            continue
        steps = indices[..., 1:] - indices[..., :-1]
        if not bool((steps == 1).all()):
            continue
        length, capacity = int(indices.shape[-1]), rows - int(indices[..., 0].max())
        for name, tensor in zip(names, inputs):
            for axis in dynamic_axes.get(name, {}):
                if int(tensor.shape[axis]) == length:
                    sizes = max_sizes.setdefault(name, {})
                    sizes[axis] = min(capacity, sizes.get(axis, capacity))
    return {name: InputBounds(value_ranges.get(name), max_sizes.get(name, {}))
            for name in names if name in value_ranges or name in max_sizes}


def _indexes(tensor: torch.Tensor, indices: torch.Tensor) -> bool:
    """Whether `indices` are this input's values (the same tensor, a view of it, or an equal copy of an input that
    is not constant: a constant mask must not be taken for a table's constant indices)."""
    import torch

    if tensor.is_floating_point() or tensor.is_complex() or tensor.numel() != indices.numel() or not tensor.numel():
        return False
    if tensor.data_ptr() == indices.data_ptr():
        return True
    flat = tensor.reshape(-1)
    return bool(torch.equal(flat, indices.reshape(-1).to(flat.dtype))) and int(flat.unique().numel()) > 1


def merged_bounds(found: Mapping[str, InputBounds], value_ranges: Mapping[str, tuple[int, int]],
                  max_sizes: Mapping[str, Mapping[int, int]]) -> dict[str, InputBounds]:
    """The bounds found, with what the spec gives (`ModelSpec.input_value_ranges`, `input_max_sizes`) winning."""
    names = set(found) | set(value_ranges) | set(max_sizes)
    merged = {}
    for name in names:
        seen = found.get(name, InputBounds())
        merged[name] = InputBounds(value_ranges.get(name, seen.value_range),
                                   {**seen.max_sizes, **max_sizes.get(name, {})})
    return merged


def validated_bounds(model: str, ranks: Mapping[str, int], value_ranges: Mapping[str, Any],
                     max_sizes: Mapping[str, Any]) -> tuple[dict[str, tuple[int, int]], dict[str, dict[int, int]]]:
    """A spec's `input_value_ranges` and `input_max_sizes` checked against its inputs (`ranks`: name -> number of
    axes), as plain dicts; a mistake is a `SpecError` naming the model and the entry."""
    ranges: dict[str, tuple[int, int]] = {}
    for name, entry in value_ranges.items():
        _known_input(model, "input_value_ranges", name, ranks)
        if not (isinstance(entry, (tuple, list)) and len(entry) == 2 and all(_is_int(v) for v in entry)
                and entry[0] <= entry[1]):
            raise SpecError(f"ModelSpec {model!r}: input_value_ranges[{name!r}] must be (low, high), integers with "
                            f"low <= high (inclusive); got {entry!r}")
        ranges[name] = (int(entry[0]), int(entry[1]))
    sizes: dict[str, dict[int, int]] = {}
    for name, entry in max_sizes.items():
        _known_input(model, "input_max_sizes", name, ranks)
        if not isinstance(entry, Mapping) or not all(_is_int(axis) and 0 < axis < ranks[name] and _is_int(size)
                                                     and size > 0 for axis, size in entry.items()):
            raise SpecError(f"ModelSpec {model!r}: input_max_sizes[{name!r}] must map axes 1..{ranks[name] - 1} to "
                            f"positive sizes, e.g. {{1: 512}}; got {entry!r}")
        sizes[name] = {int(axis): int(size) for axis, size in entry.items()}
    return ranges, sizes


def _known_input(model: str, key: str, name: str, ranks: Mapping[str, int]) -> None:
    if name not in ranks:
        raise SpecError(f"ModelSpec {model!r}: {key} names input {name!r}; inputs are {list(ranks)}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
