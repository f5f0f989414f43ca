"""Open Inference Protocol v2 and seed-endpoint decoding: JSON and binary tensors in, validated numpy arrays
out, and every malformed request a `RequestError` with its 4xx status and a message naming what was expected."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import orjson
from starlette.requests import Request
from starlette.responses import Response

from deploycheck.artifact import TensorSpec, check_inputs
from deploycheck.errors import DeployCheckError, InputError

DATATYPES = {"FP32": np.float32, "FP64": np.float64, "FP16": np.float16, "INT64": np.int64, "INT32": np.int32,
             "INT16": np.int16, "INT8": np.int8, "UINT8": np.uint8, "BOOL": np.bool_}


class RequestError(Exception):
    """A request the server refuses, with its HTTP status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status

    def __reduce__(self) -> tuple[type[RequestError], tuple[int, str]]:
        return type(self), (self.status, str(self))  # travels back from the decoding process


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
    1e999 that many clients send, which are then refused by name as non-finite input. Nesting deeper than
    either parser goes is malformed, not a crash."""
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        try:
            return json.loads(raw)
        except (ValueError, UnicodeDecodeError, RecursionError):
            raise RequestError(400, f"malformed JSON: {exc}") from None


def json_object(value: Any, where: str) -> dict[str, Any]:
    """`value` if it is a JSON object (absent: empty), else a 400 naming where it was expected."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise RequestError(400, f"{where} must be a JSON object, got {type(value).__name__}")
    return value


def header_length(value: str | None, body_bytes: int) -> int | None:
    """The `Inference-Header-Content-Length` of a binary OIP request: a decimal count of bytes within the body."""
    if value is None:
        return None
    if not (value.isascii() and value.isdigit()) or int(value) > body_bytes:
        raise RequestError(400, f"Inference-Header-Content-Length {value!r} is not a byte count within the "
                                f"{body_bytes}-byte body")
    return int(value)


def tensor_data(tensor: dict[str, Any], binary: bytes, offset: int) -> tuple[Any, int]:
    """An OIP input's values: `data` (nested or flat JSON), or its slice of the binary tensor data."""
    datatype = tensor.get("datatype")
    if not isinstance(datatype, str) or datatype not in DATATYPES:
        raise RequestError(400, f"input {tensor['name']!r}: datatype {datatype!r} is not one of "
                                f"{', '.join(DATATYPES)}")
    size = json_object(tensor.get("parameters"), f"input {tensor['name']!r} parameters").get("binary_data_size")
    if size is None:
        if "data" not in tensor:
            raise RequestError(400, f"input {tensor['name']!r} has no data")
        return as_array(tensor["data"], DATATYPES[datatype], tensor["name"]), offset
    if not isinstance(size, int) or isinstance(size, bool) or size < 0 or offset + size > len(binary):
        raise RequestError(400, f"input {tensor['name']!r}: binary_data_size {size!r} does not fit the body")
    itemsize = np.dtype(DATATYPES[datatype]).itemsize
    if size % itemsize:
        raise RequestError(400, f"input {tensor['name']!r}: {size} bytes is not a whole number of {datatype}")
    return np.frombuffer(binary[offset:offset + size], dtype=DATATYPES[datatype]), offset + size


_KINDS = {"b": "booleans", "i": "integers", "u": "integers", "f": "numbers"}


def as_array(value: Any, dtype: Any, name: str) -> np.ndarray:
    """JSON values as an array of `dtype`, refusing what would change meaning on the way: booleans for numbers,
    integers beyond the type's range, numbers too large for it (1e300 is no float32), ragged or non-numeric
    data."""
    wanted = np.dtype(dtype)
    try:
        array = np.asarray(value)
    except (ValueError, TypeError, OverflowError, RecursionError) as exc:
        raise RequestError(400, f"input {name!r}: not a rectangular array of numbers ({exc})") from None
    if array.dtype.kind not in _KINDS:
        raise RequestError(400, f"input {name!r}: not a rectangular array of numbers (got {array.dtype} values; "
                                "an integer beyond 64 bits or a string is not a number)")
    if (array.dtype.kind == "b") != (wanted.kind == "b") and array.size:
        raise RequestError(400, f"input {name!r}: expected {_KINDS.get(wanted.kind, wanted.name)} of {wanted}, "
                                f"got {_KINDS[array.dtype.kind]}")
    if wanted.kind in "iu" and array.size:
        if array.dtype.kind == "f" and not np.array_equal(array, np.round(array)):
            raise RequestError(400, f"input {name!r}: expected integers ({wanted}), got fractions")
        info = np.iinfo(wanted)
        if float(array.min()) < info.min or float(array.max()) > info.max:
            raise RequestError(400, f"input {name!r}: values outside the range of {wanted} "
                                    f"[{info.min}, {info.max}]")
    with np.errstate(over="ignore", invalid="ignore"):
        converted = array.astype(wanted)
    if wanted.kind == "f" and array.dtype.kind == "f" and not np.array_equal(
            np.isfinite(converted), np.isfinite(array)):
        raise RequestError(400, f"input {name!r}: values too large for {wanted} (at most "
                                f"{float(np.finfo(wanted).max):.3g})")
    return converted


def decode_predict(raw: bytes, model: str, declared: Sequence[TensorSpec], max_rows: int | None
                   ) -> tuple[dict[str, Any], list[np.ndarray]]:
    """A /predict body: the request's other fields, and its inputs checked and converted. A plain function of
    picklable arguments, so a large body can be decoded in another process."""
    body = parse_json(raw)
    names = [s.name for s in declared]
    if not isinstance(body, dict) or ("input" not in body and "inputs" not in body):
        raise RequestError(400, 'expected a JSON object {"input": [...]} (or {"inputs": {name: [...]}} for '
                                f"several inputs: {names})")
    given = body.pop("inputs", body.pop("input", None))
    named = given if isinstance(given, dict) else {names[0]: given}
    if not isinstance(given, dict) and len(declared) > 1:
        raise RequestError(400, f"model {model!r} has inputs {names}; send {{\"inputs\": {{name: [...]}}}}")
    return body, prepare_inputs(model, declared, {n: (v, None) for n, v in named.items()}, max_rows)


def decode_infer(raw: bytes, header: str | None, model: str, declared: Sequence[TensorSpec],
                 max_rows: int | None) -> tuple[dict[str, Any], list[np.ndarray]]:
    """An Open Inference Protocol v2 infer body (JSON, or JSON then binary tensor data when `header`, the
    Inference-Header-Content-Length, is given): its other fields, and its inputs checked and converted."""
    length = header_length(header, len(raw))
    binary = b""
    if length is not None:
        raw, binary = raw[:length], raw[length:]
    body = parse_json(raw)
    if not isinstance(body, dict) or not isinstance(body.get("inputs"), list):
        raise RequestError(400, 'expected {"inputs": [{"name", "shape", "datatype", "data"}, ...]}')
    json_object(body.get("parameters"), "parameters")
    named: dict[str, tuple[Any, Any]] = {}
    offset = 0
    for position, tensor in enumerate(body.pop("inputs")):
        if not isinstance(tensor, dict) or not isinstance(tensor.get("name"), str):
            raise RequestError(400, f"inputs[{position}] is not an object with a name")
        value, offset = tensor_data(tensor, binary, offset)
        named[tensor["name"]] = (value, tensor.get("shape"))
    return body, prepare_inputs(model, declared, named, max_rows)


def prepare_inputs(name: str, declared: Sequence[TensorSpec], named: Mapping[str, tuple[Any, Any]],
                   max_rows: int | None = None) -> list[np.ndarray]:
    """The request's inputs in the artifact's order, with names, shapes, dtypes, values and the number of rows
    (at most `max_rows`: 413 beyond, checked before the values are converted) checked."""
    expected = [s.name for s in declared]
    unknown = sorted(set(named) - set(expected))
    missing = [n for n in expected if n not in named]
    if unknown or missing:
        problems = [f"unknown {unknown}" if unknown else "", f"missing {missing}" if missing else ""]
        raise RequestError(400, f"model {name!r} expects inputs {expected}; "
                                f"{' '.join(p for p in problems if p)}")
    arrays = []
    for spec in declared:
        value, shape = named[spec.name]
        if shape is not None and not (isinstance(shape, list) and all(
                isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)):
            raise RequestError(400, f"input {spec.name!r}: shape {shape!r} is not a list of non-negative integers")
        batched = len(shape) == len(spec.shape) if shape is not None else (
            isinstance(value, list) and _depth(value) == len(spec.shape))
        rows = (shape[0] if shape else 1) if shape is not None else (len(value) if isinstance(value, list) else 1)
        if max_rows is not None and batched and rows > max_rows:
            raise RequestError(413, f"input {spec.name!r} has {rows} rows; this server takes at most {max_rows} per "
                                    "request (--max-rows): split the request")
        array = value if isinstance(value, np.ndarray) else as_array(value, np.dtype(spec.dtype), spec.name)
        if shape is not None:
            if math.prod(shape) != array.size:
                raise RequestError(400, f"input {spec.name!r}: shape {shape} does not match its {array.size} "
                                        "values")
            array = array.reshape(shape)
        if array.ndim == len(spec.shape) - 1:
            array = array[None]
        arrays.append(array)
    try:
        prepared = check_inputs(name, declared, arrays)
    except InputError as exc:
        raise RequestError(400, str(exc)) from None
    for spec, array in zip(declared, prepared):
        if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
            raise RequestError(400, f"input {spec.name!r} contains NaN or Inf (as {array.dtype})")
    if prepared[0].shape[0] == 0:
        raise RequestError(400, "empty batch")
    if max_rows is not None and prepared[0].shape[0] > max_rows:
        raise RequestError(413, f"{prepared[0].shape[0]} rows; this server takes at most {max_rows} per request "
                                "(--max-rows): split the request")
    return prepared


def _depth(value: Any) -> int:
    """How deep the first elements of nested lists go (a batch of 8x8 images: 3)."""
    depth = 0
    while isinstance(value, list) and value:
        value, depth = value[0], depth + 1
    return depth


def top1(output: np.ndarray) -> np.ndarray:
    return output.argmax(axis=-1) if output.ndim >= 2 else output


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return np.asarray(shifted / shifted.sum(axis=-1, keepdims=True))
