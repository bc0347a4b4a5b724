"""The service's OpenAPI 3.1 document, built from the producer's own pydantic models.

The request body's schema is ``EventRequest.model_json_schema()``: what the document
promises is what ``validate_payload`` checks. (The models also refuse what a JSON schema
cannot say, such as a relative URL; such a body is a documented 422.) Every operation
documents a ``default`` error response, so an unknown route's 404 conforms too.
"""

from __future__ import annotations

from typing import Any

from producers.enqueue import MAX_IDEMPOTENCY_KEY_CHARS
from producers.models import MAX_ID_CHARS, EventRequest

_REF = "#/components/schemas/{model}"


def _error(description: str, *, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }
    if headers:
        response["headers"] = headers
    return response


_RETRY_AFTER = {
    "Retry-After": {
        "description": "seconds to wait before retrying (with the same Idempotency-Key)",
        "schema": {"type": "string", "pattern": "^[0-9]+$"},
    }
}
_WWW_AUTHENTICATE = {"WWW-Authenticate": {"schema": {"type": "string"}}}


def _refusals(*, body: bool) -> dict[str, Any]:
    responses = {
        "401": _error("no token, or an unknown one", headers=_WWW_AUTHENTICATE),
        "403": _error("the token may not enqueue for this store"),
        "503": _error("Redis did not confirm the job: retry later", headers=_RETRY_AFTER),
        "default": _error("any other refusal (400 malformed JSON, 404, 405)"),
    }
    if body:
        responses |= {
            "400": _error("the body is not valid JSON"),
            "413": _error("the body is over its bound"),
            "415": _error("the body is not application/json"),
            "422": _error("the event breaks the schema: every problem, by field"),
        }
    return responses


def _store_id() -> dict[str, Any]:
    return {
        "name": "store_id",
        "in": "path",
        "required": True,
        "description": "the store's unique id, as in Scalev's endpoint",
        "schema": {"type": "string", "minLength": 1, "maxLength": MAX_ID_CHARS},
    }


def _idempotency_key(meaning: str, max_chars: int = MAX_IDEMPOTENCY_KEY_CHARS) -> dict[str, Any]:
    return {
        "name": "Idempotency-Key",
        "in": "header",
        "required": False,
        "description": meaning,
        "schema": {"type": "string", "minLength": 1, "maxLength": max_chars},
    }


def _refuse_null(schema: dict[str, Any], *fields: str) -> None:
    """The models refuse an explicit null for these (absent is fine): say so."""
    for field in fields:
        prop = schema["properties"][field]
        prop.update(next(option for option in prop.pop("anyOf") if option != {"type": "null"}))
        prop.pop("default", None)


def batch_key_max_chars(max_batch: int) -> int:
    """The longest batch Idempotency-Key: each body's key, ``<key>:<index>``, must fit."""
    return MAX_IDEMPOTENCY_KEY_CHARS - len(f":{max_batch - 1}")


def _schemas(max_batch: int) -> dict[str, Any]:
    event = EventRequest.model_json_schema(ref_template=_REF)
    schemas: dict[str, Any] = dict(event.pop("$defs", {}))
    _refuse_null(event, "variants", "bundle_price_options")
    _refuse_null(schemas["ConversionEvent"], "properties")
    schemas["EventRequest"] = event
    schemas["EventBatch"] = {
        "type": "array",
        "items": {"$ref": _REF.format(model="EventRequest")},
        "minItems": 1,
        "maxItems": max_batch,
    }
    schemas["Accepted"] = {
        "type": "object",
        "required": ["job_id", "repeat"],
        "properties": {
            "job_id": {"type": "string"},
            "repeat": {
                "type": "boolean",
                "description": "true: an earlier request holds this Idempotency-Key; "
                "job_id is its job, and nothing new was queued",
            },
        },
    }
    schemas["BatchAccepted"] = {
        "type": "object",
        "required": ["job_ids", "repeat"],
        "properties": {
            "job_ids": {"type": "array", "items": {"type": "string"}},
            "repeat": {"type": "array", "items": {"type": "boolean"}},
        },
    }
    schemas["Health"] = {
        "type": "object",
        "required": ["status"],
        "properties": {"status": {"type": "string", "enum": ["ok", "unavailable"]}},
    }
    schemas["Problem"] = {
        "type": "object",
        "required": ["field", "message"],
        "properties": {
            "index": {"type": "integer", "minimum": 0},
            "field": {"type": "string"},
            "message": {"type": "string"},
        },
    }
    schemas["Error"] = {
        "type": "object",
        "required": ["error", "message"],
        "properties": {
            "error": {"type": "string"},
            "message": {"type": "string"},
            "problems": {"type": "array", "items": {"$ref": _REF.format(model="Problem")}},
        },
    }
    return schemas


def _json_body(schema: str) -> dict[str, Any]:
    return {
        "required": True,
        "content": {"application/json": {"schema": {"$ref": _REF.format(model=schema)}}},
    }


def _accepted(schema: str) -> dict[str, Any]:
    return {
        "description": "the job is in Redis",
        "content": {"application/json": {"schema": {"$ref": _REF.format(model=schema)}}},
    }


def build_openapi(max_batch: int) -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "snackvideo-dispatch ingest",
            "version": "1",
            "description": "Enqueue SnackVideo conversion events over HTTP. A 202 means the "
            "job is in Redis, as a returned producers.enqueue does.",
        },
        "paths": {
            "/v1/stores/{store_id}/events": {
                "post": {
                    "operationId": "enqueueEvent",
                    "summary": "enqueue one event (the SnackVideo request body)",
                    "parameters": [
                        _store_id(),
                        _idempotency_key(
                            "the same key within its window (48 h by default) "
                            "returns the first job id and queues nothing"
                        ),
                    ],
                    "requestBody": _json_body("EventRequest"),
                    "responses": {"202": _accepted("Accepted"), **_refusals(body=True)},
                }
            },
            "/v1/stores/{store_id}/events/batch": {
                "post": {
                    "operationId": "enqueueEvents",
                    "summary": "enqueue a batch: all validated first, then one atomic write",
                    "parameters": [
                        _store_id(),
                        _idempotency_key(
                            "body i gets the key <Idempotency-Key>:<i>",
                            batch_key_max_chars(max_batch),
                        ),
                    ],
                    "requestBody": _json_body("EventBatch"),
                    "responses": {"202": _accepted("BatchAccepted"), **_refusals(body=True)},
                }
            },
            "/healthz": {
                "get": {
                    "operationId": "health",
                    "summary": "200 when Redis answers, 503 when it does not",
                    "security": [],
                    "responses": {
                        "200": {
                            "description": "Redis answers",
                            "content": {
                                "application/json": {
                                    "schema": {"$ref": _REF.format(model="Health")}
                                }
                            },
                        },
                        "503": {
                            "description": "Redis does not answer",
                            "headers": _RETRY_AFTER,
                            "content": {
                                "application/json": {
                                    "schema": {"$ref": _REF.format(model="Health")}
                                }
                            },
                        },
                        "default": _error("any other refusal"),
                    },
                }
            },
        },
        "components": {
            "schemas": _schemas(max_batch),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}],
    }
