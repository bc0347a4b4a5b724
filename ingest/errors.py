"""Every refusal the service gives: one JSON shape, one status each, never a 500 for input.

    ApiError                  a refusal with its status, a code and a message
    ├── 400 malformed_json     the body is not valid JSON (or nests deeper than a parser goes)
    ├── 401 unauthorized       no token, or not one of SNACKVIDEO_INGEST_TOKENS
    ├── 403 forbidden          the token is limited to other stores
    ├── 413 payload_too_large  the body is over its bound (refused before it is all read)
    ├── 415 unsupported_media_type  the body is not declared application/json
    ├── 422 invalid_event      the problems, field by field (and index by index in a batch)
    └── 503 unavailable        Redis did not confirm the job: retry with the same key

The body is ``{"error": code, "message": text, "problems": [...]}``; ``problems`` is
there for 422 only, each ``{"field", "message"}`` plus ``"index"`` in a batch.
"""

from __future__ import annotations

import re
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse

from producers.errors import InvalidEvent

#: Seconds a client waits before it retries a 503. Redis restarts within seconds; the
#: producer already retried for SNACKVIDEO_ENQUEUE_TIMEOUT_SECONDS before giving up.
RETRY_AFTER_SECONDS = 2
#: What the producer calls a field, where the HTTP request has it under another name.
_HTTP_NAMES = {"idempotency_key": "Idempotency-Key"}
#: How the producer names a field of one payload of a batch (``producers.enqueue``).
_BATCH_FIELD = re.compile(r"^payloads\[(\d+)\]\.(.*)$", re.DOTALL)


class ApiError(Exception):
    """Raised by a route to answer with an error status and its JSON body."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        problems: list[dict[str, Any]] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.problems = problems
        self.headers = headers or {}

    def response(self) -> JSONResponse:
        return error_response(
            self.status, self.code, self.message, problems=self.problems, headers=self.headers
        )


def error_response(
    status: int,
    code: str,
    message: str,
    *,
    problems: list[dict[str, Any]] | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body: dict[str, Any] = {"error": code, "message": message}
    if problems is not None:
        body["problems"] = problems
    return JSONResponse(body, status_code=status, headers=headers)


def unauthorized(message: str) -> ApiError:
    return ApiError(401, "unauthorized", message, headers={"WWW-Authenticate": "Bearer"})


def unavailable(message: str) -> ApiError:
    return ApiError(503, "unavailable", message, headers={"Retry-After": str(RETRY_AFTER_SECONDS)})


def invalid_event(exc: InvalidEvent, *, batch: bool) -> ApiError:
    """422 naming each field as ``InvalidEvent`` does; in a batch, each body by its index."""
    problems: list[dict[str, Any]] = []
    for field, message in exc.problems:
        problem: dict[str, Any] = {"field": _HTTP_NAMES.get(field, field), "message": message}
        found = _BATCH_FIELD.match(field) if batch else None
        if found is not None:
            problem = {"index": int(found[1]), "field": found[2], "message": message}
        problems.append(problem)
    detail = "; ".join(
        ("" if "index" not in p else f"body {p['index']}: ") + f"{p['field']}: {p['message']}"
        for p in problems
    )
    return ApiError(422, "invalid_event", f"invalid event: {detail}", problems=problems)


async def api_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return exc.response()


async def http_error(request: Request, exc: Exception) -> JSONResponse:
    """Starlette's own refusals (unknown route, wrong method) in the same JSON shape."""
    assert isinstance(exc, HTTPException)
    codes = {404: "not_found", 405: "method_not_allowed"}
    return error_response(
        exc.status_code,
        codes.get(exc.status_code, "http_error"),
        str(exc.detail),
        headers=dict(exc.headers or {}),
    )


async def internal_error(request: Request, exc: Exception) -> JSONResponse:
    # A bug, never input: the message says nothing of the request (it may hold a token).
    return error_response(500, "internal_error", "the service failed; see its log")
