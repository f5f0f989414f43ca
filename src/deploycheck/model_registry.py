"""`@deploycheck.model`: marks a function returning a `ModelSpec` as a model of the gate, and makes it a fixture.

The mark is an attribute on the fixture object; the plugin finds marked functions in conftest files and test
modules, so no module-level registry is needed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

MODEL_MARK = "_deploycheck_model"
MODEL_FUNCTION = "_deploycheck_function"


def model(function: Callable[[], Any]) -> Any:
    """Register `function` (returning a `ModelSpec`) with the gate; it also becomes a session-scoped fixture named
    after the function. Outside pytest the function is returned marked and otherwise unchanged."""
    setattr(function, MODEL_MARK, function.__name__)
    try:
        import pytest
    except ImportError:
        return function
    fixture = pytest.fixture(scope="session", name=function.__name__)(function)
    setattr(fixture, MODEL_MARK, function.__name__)
    setattr(fixture, MODEL_FUNCTION, function)  # the plain function, for checks made before any test runs
    return fixture


def model_functions(namespace: Any) -> dict[str, Any]:
    """The model functions marked in a module (or any object with attributes), by fixture name."""
    found = {}
    for value in vars(namespace).values():
        name = getattr(value, MODEL_MARK, None)
        if isinstance(name, str):
            found[name] = value
    return found
