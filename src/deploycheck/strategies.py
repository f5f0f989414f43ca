"""Hypothesis strategies that draw inputs matching a `ModelSpec`: any batch size on a dynamic batch axis, the
example's shapes and dtypes elsewhere, values from a bounded range. Use them for property-based parity:

    @given(inputs=deploycheck.strategies.model_inputs(spec))
    def test_onnx_parity(inputs): ...

Hypothesis is imported only when this module is, so the plugin never loads it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

if TYPE_CHECKING:
    from deploycheck.spec import ModelSpec


def batch_sizes(spec: ModelSpec, max_batch: int = 32) -> st.SearchStrategy[int]:
    """Batch sizes the spec allows: 1..max_batch on a dynamic batch, the example's otherwise."""
    return st.integers(1, max_batch) if spec.dynamic_batch else st.just(spec.batch_size)


def model_inputs(spec: ModelSpec, max_batch: int = 32, min_value: float = -4.0,
                 max_value: float = 4.0) -> st.SearchStrategy[tuple[np.ndarray, ...]]:
    """Tuples of numpy arrays, one per input, sharing one drawn batch size. Floating inputs take finite values in
    [min_value, max_value]; integer inputs stay within the range seen in the example inputs."""

    def arrays_for(batch: int) -> st.SearchStrategy[tuple[np.ndarray, ...]]:
        parts = []
        for tensor in spec.example_inputs:
            array = tensor.detach().cpu().numpy()
            shape = (batch, *array.shape[1:])
            elements: st.SearchStrategy[Any]
            if np.issubdtype(array.dtype, np.floating):
                elements = st.floats(min_value, max_value, width=32, allow_nan=False, allow_infinity=False)
            else:
                elements = st.integers(int(array.min()), int(array.max()))
            parts.append(hnp.arrays(array.dtype, shape, elements=elements))
        return st.tuples(*parts)

    return batch_sizes(spec, max_batch).flatmap(arrays_for)
