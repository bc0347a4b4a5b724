"""Reading a JSON request body within its bound, without ever holding more than the bound.

A declared ``Content-Length`` over the bound is refused before any of the body is read;
a chunked body is counted as it streams in and refused at the first byte past the bound.
"""

from __future__ import annotations

import json
from typing import Any

from starlette.requests import Request

from ingest.errors import ApiError

JSON_MEDIA_TYPES = ("application/json",)


def _is_json(content_type: str) -> bool:
    media_type = content_type.split(";", 1)[0].strip().lower()
    return media_type in JSON_MEDIA_TYPES or (
        media_type.startswith("application/") and media_type.endswith("+json")
    )


def _too_large(limit: int, variable: str) -> ApiError:
    return ApiError(413, "payload_too_large", f"the body is over {limit} bytes ({variable})")


async def read_json(request: Request, limit: int, variable: str) -> Any:
    """The decoded body; 415 unless declared JSON, 413 over ``limit``, 400 when malformed."""
    if not _is_json(request.headers.get("content-type", "")):
        raise ApiError(415, "unsupported_media_type", "the body must be application/json")
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _too_large(limit, variable)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _too_large(limit, variable)
        chunks.append(chunk)
    try:
        return json.loads(b"".join(chunks))
    except (ValueError, RecursionError) as exc:
        # ValueError: bad syntax, bad UTF-8, an integer of more digits than Python parses.
        # RecursionError: nesting deeper than the parser goes (the payload bound is 32).
        if isinstance(exc, RecursionError):
            why = "nested too deeply"
        else:
            why = exc.msg if isinstance(exc, json.JSONDecodeError) else str(exc)
        raise ApiError(400, "malformed_json", f"the body is not valid JSON: {why}") from None
