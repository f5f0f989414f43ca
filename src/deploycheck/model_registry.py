"""`@deploycheck.model`: marks a function returning a `ModelSpec` as a model of the gate, and makes it a fixture;
`@deploycheck.generative_model` does the same for a function returning a `GenerativeSpec` (a decoder the
generative gate runs token by token: the `generative` fixture is parametrized over them).

The mark is an attribute on the fixture object; the plugin finds marked functions in conftest files and test
modules, so no module-level registry is needed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

MODEL_MARK = "_deploycheck_model"
GENERATIVE_MARK = "_deploycheck_generative_model"
MODEL_FUNCTION = "_deploycheck_function"


def model(function: Callable[[], Any]) -> Any:
    """Register `function` (returning a `ModelSpec`) with the gate; it also becomes a session-scoped fixture named
    after the function. Outside pytest the function is returned marked and otherwise unchanged."""
    return _register(function, MODEL_MARK)


def generative_model(function: Callable[[], Any]) -> Any:
    """Register `function` (returning a `GenerativeSpec`) with the generative gate, as `model` does."""
    return _register(function, GENERATIVE_MARK)


def _register(function: Callable[[], Any], mark: str) -> Any:
    setattr(function, mark, function.__name__)
    try:
        import pytest
    except ImportError:
        return function
    fixture = pytest.fixture(scope="session", name=function.__name__)(function)
    setattr(fixture, mark, function.__name__)
    setattr(fixture, MODEL_FUNCTION, function)  # the plain function, for checks made before any test runs
    return fixture


def model_functions(namespace: Any, mark: str = MODEL_MARK) -> dict[str, Any]:
    """The model functions marked in a module (or any object with attributes), by fixture name; `mark`:
    `GENERATIVE_MARK` for the generative ones."""
    found = {}
    for value in vars(namespace).values():
        name = getattr(value, mark, None)
        if isinstance(name, str):
            found[name] = value
    return found
