"""The OpenAPI description of the server's endpoints (served at `/openapi.json`): the seed endpoints and the
Open Inference Protocol v2 routes, with request schemas tight enough to fuzz against and every error answered as
`{"error": "..."}`."""

from __future__ import annotations

from typing import Any

ERROR = {"type": "object", "properties": {"error": {"type": "string"}}, "required": ["error"]}
DATATYPES = ["BOOL", "UINT8", "INT8", "INT16", "INT32", "INT64", "FP16", "FP32", "FP64"]
_NESTED_NUMBERS: dict[str, Any] = {"type": "array", "items": {}}
_TENSOR = {
    "type": "object", "required": ["name", "shape", "datatype"],
    "properties": {"name": {"type": "string"}, "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
                   "datatype": {"type": "string", "enum": DATATYPES}, "data": _NESTED_NUMBERS,
                   "parameters": {"type": "object"}},
}

_OUTPUT = {"type": "object", "required": ["name"],
           "properties": {"name": {"type": "string"}, "parameters": {"type": "object"}}}


def _responses(*errors: int, body: dict[str, Any] | None = None) -> dict[str, Any]:
    ok = {"description": "OK", "content": {"application/json": {"schema": body or {"type": "object"}}}}
    responses: dict[str, Any] = {"200": ok}
    for status in errors:
        responses[str(status)] = {"description": "refused", "content": {"application/json": {"schema": ERROR}}}
    return responses


def _get(summary: str, *errors: int, parameters: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {"get": {"summary": summary, "parameters": parameters or [], "responses": _responses(*errors)}}


def _post(summary: str, schema: dict[str, Any], *errors: int, parameters: list[dict[str, Any]] | None = None
          ) -> dict[str, Any]:
    return {"post": {"summary": summary, "parameters": parameters or [],
                     "requestBody": {"required": True, "content": {"application/json": {"schema": schema}}},
                     "responses": _responses(*errors)}}


_GENERATE = {"type": "object", "required": ["input_ids"],
             "properties": {"input_ids": {"type": "array", "items": {"type": "integer", "minimum": 0}},
                            "max_tokens": {"type": "integer", "minimum": 1}, "id": {"type": "string"},
                            "parameters": {"type": "object", "properties": {
                                "max_tokens": {"type": "integer", "minimum": 1}, "temperature": {"type": "number"},
                                "stream": {"type": "boolean"}}}}}


def openapi_document(models: list[str], generators: list[str]) -> dict[str, Any]:
    """The OpenAPI 3.0 document of a server serving `models` (single pass) and `generators` (generative)."""
    name = [{"name": "name", "in": "path", "required": True, "schema": {"type": "string", "enum": models or [""]}}]
    generator = [{"name": "name", "in": "path", "required": True, "schema": {"type": "string", "enum": generators}}]
    model_query = [{"name": "model", "in": "query", "required": False, "schema": {"type": "string"}}]
    refused = (400, 404, 413, 503)
    stream = _post("greedy generation, each token a server-sent event", _GENERATE, *refused, 429,
                   parameters=generator)
    stream["post"]["responses"]["200"]["content"] = {"text/event-stream": {"schema": {"type": "string"}}}
    return {
        "openapi": "3.0.3",
        "info": {"title": "deploycheck server", "version": "1"},
        "paths": {
            "/predict": _post("run a model on a batch", {
                "type": "object", "properties": {"input": _NESTED_NUMBERS, "inputs": {"type": "object"},
                                                 "id": {"type": "string"}, "softmax": {"type": "boolean"}}},
                *refused, parameters=model_query),
            "/feedback": _post("a ground-truth label for an earlier request", {
                "type": "object", "required": ["request_id", "label"],
                "properties": {"request_id": {"type": "string"}, "label": {}, "model": {"type": "string"}}},
                *refused),
            "/health": _get("readiness, per model", 503),
            "/health/live": _get("liveness"),
            "/health/ready": _get("readiness", 503),
            "/alerts": _get("alerts per model"),
            "/v2": _get("server metadata"),
            "/v2/health/live": _get("liveness"),
            "/v2/health/ready": _get("readiness", 503),
            "/v2/models": _get("the model repository index"),
            "/v2/models/{name}": _get("model metadata", 404, parameters=name),
            "/v2/models/{name}/ready": _get("model readiness", 400, 404, parameters=name),
            "/v2/models/{name}/infer": _post("inference (Open Inference Protocol v2)", {
                "type": "object", "required": ["inputs"],
                "properties": {"id": {"type": "string"}, "parameters": {"type": "object"},
                               "inputs": {"type": "array", "items": _TENSOR},
                               "outputs": {"type": "array", "items": _OUTPUT}}},
                *refused, parameters=name),
            **({"/v2/models/{name}/generate": _post("greedy generation, answered once (the generate extension)",
                                                    _GENERATE, *refused, 429, parameters=generator),
                "/v2/models/{name}/generate_stream": stream} if generators else {}),
        },
    }
