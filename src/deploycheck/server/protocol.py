"""Open Inference Protocol v2 and seed-endpoint decoding: JSON and binary tensors in, validated numpy arrays
out, and every malformed request a `RequestError` with its 4xx status and a message naming what was expected."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import orjson
from starlette.requests import Request
from starlette.responses import Response

from deploycheck.artifact import Artifact
from deploycheck.errors import DeployCheckError, InputError

DATATYPES = {"FP32": np.float32, "FP64": np.float64, "FP16": np.float16, "INT64": np.int64, "INT32": np.int32,
             "INT16": np.int16, "INT8": np.int8, "UINT8": np.uint8, "BOOL": np.bool_}


class RequestError(Exception):
    """A request the server refuses, with its HTTP status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class JSONResponse(Response):
    """JSON through orjson (numpy arrays serialised natively, fast on large tensors)."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)


def datatype_of(dtype: str | np.dtype[Any]) -> str:
    wanted = np.dtype(dtype)
    for name, numpy_type in DATATYPES.items():
        if np.dtype(numpy_type) == wanted:
            return name
    raise DeployCheckError(f"dtype {wanted} has no Open Inference Protocol datatype")


async def json_body(request: Request) -> Any:
    return parse_json(await request.body())


def parse_json(raw: bytes) -> Any:
    """orjson on the fast path; the standard parser when orjson refuses, since it accepts the NaN, Infinity and
    1e999 that many clients send, which are then refused by name as non-finite input."""
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        try:
            return json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            raise RequestError(400, f"malformed JSON: {exc}") from None


def tensor_data(tensor: dict[str, Any], binary: bytes, offset: int) -> tuple[Any, int]:
    """An OIP input's values: `data` (nested or flat JSON), or its slice of the binary tensor data."""
    datatype = tensor.get("datatype")
    if datatype not in DATATYPES:
        raise RequestError(400, f"input {tensor['name']!r}: datatype {datatype!r} is not one of "
                                f"{', '.join(DATATYPES)}")
    size = (tensor.get("parameters") or {}).get("binary_data_size")
    if size is None:
        if "data" not in tensor:
            raise RequestError(400, f"input {tensor['name']!r} has no data")
        return as_array(tensor["data"], DATATYPES[datatype], tensor["name"]), offset
    if not isinstance(size, int) or size < 0 or offset + size > len(binary):
        raise RequestError(400, f"input {tensor['name']!r}: binary_data_size {size} does not fit the body")
    itemsize = np.dtype(DATATYPES[datatype]).itemsize
    if size % itemsize:
        raise RequestError(400, f"input {tensor['name']!r}: {size} bytes is not a whole number of {datatype}")
    return np.frombuffer(binary[offset:offset + size], dtype=DATATYPES[datatype]), offset + size


def as_array(value: Any, dtype: Any, name: str) -> np.ndarray:
    try:
        return np.asarray(value, dtype=dtype)
    except (ValueError, TypeError) as exc:
        raise RequestError(400, f"input {name!r}: not a rectangular array of numbers ({exc})") from None


def prepare_inputs(name: str, artifact: Artifact,
                   named: Mapping[str, tuple[Any, list[int] | None]]) -> list[np.ndarray]:
    """The request's inputs in the artifact's order, with names, shapes, dtypes and values checked."""
    expected = [s.name for s in artifact.inputs]
    unknown = sorted(set(named) - set(expected))
    missing = [n for n in expected if n not in named]
    if unknown or missing:
        problems = [f"unknown {unknown}" if unknown else "", f"missing {missing}" if missing else ""]
        raise RequestError(400, f"model {name!r} expects inputs {expected}; "
                                f"{' '.join(p for p in problems if p)}")
    arrays = []
    for spec in artifact.inputs:
        value, shape = named[spec.name]
        array = value if isinstance(value, np.ndarray) else as_array(value, np.dtype(spec.dtype), spec.name)
        if shape is not None:
            if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape) or \
                    math.prod(shape) != array.size:
                raise RequestError(400, f"input {spec.name!r}: shape {shape} does not match its {array.size} "
                                        "values")
            array = array.reshape(shape)
        if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
            raise RequestError(400, f"input {spec.name!r} contains NaN or Inf")
        if array.ndim == len(spec.shape) - 1:
            array = array[None]
        arrays.append(array)
    try:
        prepared = artifact.prepare_inputs(arrays)
    except InputError as exc:
        raise RequestError(400, str(exc)) from None
    if len({a.shape[0] for a in prepared}) > 1:
        raise RequestError(400, f"inputs of model {name!r} have different batch sizes "
                                f"{[a.shape[0] for a in prepared]}")
    if prepared[0].shape[0] == 0:
        raise RequestError(400, "empty batch")
    return prepared


def top1(output: np.ndarray) -> np.ndarray:
    return output.argmax(axis=-1) if output.ndim >= 2 else output


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return np.asarray(shifted / shifted.sum(axis=-1, keepdims=True))
