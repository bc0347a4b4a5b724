"""The endpoints: one event, a batch, health, the OpenAPI document.

Each request is authenticated before its body is read, and its body validated whole
before anything is written: a 202 is sent only after Redis confirmed the job.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse

from ingest.auth import Authenticator, authorize
from ingest.body import read_json
from ingest.errors import ApiError, invalid_event, unavailable
from ingest.openapi import batch_key_max_chars
from ingest.settings import IngestSettings, IngestToken
from producers.aio import AsyncProducer
from producers.enqueue import idempotency_key_problem
from producers.errors import EnqueueError, InvalidEvent

log = logging.getLogger("ingest")


@dataclass
class Service:
    """What the routes share, held on ``app.state.service`` for the process's lifetime."""

    settings: IngestSettings
    authenticator: Authenticator
    openapi: dict[str, Any]
    producer: AsyncProducer | None = None  # built by the lifespan, inside the event loop

    def ready_producer(self) -> AsyncProducer:
        assert self.producer is not None, "the app's lifespan did not run"
        return self.producer


def _service(request: Request) -> Service:
    service: Service = request.app.state.service
    return service


def _caller(request: Request, service: Service) -> tuple[IngestToken, str]:
    token = service.authenticator.authenticate(request.headers.get("authorization"))
    store_id: str = request.path_params["store_id"]
    authorize(token, store_id)
    return token, store_id


def _not_confirmed(exc: EnqueueError, token: IngestToken, store_id: str) -> ApiError:
    # The EnqueueError names Redis's answer, never a payload or a secret.
    log.warning("ingest: 503 for token %s, store %r: %s", token.name, store_id, exc)
    return unavailable("Redis did not confirm the job; retry with the same Idempotency-Key")


async def post_event(request: Request) -> JSONResponse:
    service = _service(request)
    token, store_id = _caller(request, service)
    settings = service.settings
    body = await read_json(request, settings.max_payload_bytes, "SNACKVIDEO_MAX_PAYLOAD_BYTES")
    key = request.headers.get("idempotency-key")
    try:
        outcome = await service.ready_producer().enqueue(store_id, body, key)
    except InvalidEvent as exc:
        raise invalid_event(exc, batch=False) from None
    except EnqueueError as exc:
        raise _not_confirmed(exc, token, store_id) from None
    repeat = not outcome.queued_now
    headers = {"Idempotent-Replayed": "true"} if repeat else None
    return JSONResponse({"job_id": outcome.job_id, "repeat": repeat}, 202, headers=headers)


def _batch_problem(message: str) -> ApiError:
    return invalid_event(InvalidEvent([("body", message)]), batch=True)


def _batch_keys(key: str | None, count: int, settings: IngestSettings) -> list[str | None] | None:
    """Body i's key is ``<key>:<i>``: a retried batch repeats each body, and only it."""
    if key is None:
        return None
    longest = batch_key_max_chars(settings.ingest_max_batch)
    problem = idempotency_key_problem(key)
    if problem is None and len(key) > longest:
        problem = f"must be at most {longest} characters in a batch, not {len(key)}"
    if problem is not None:
        raise invalid_event(InvalidEvent([("idempotency_key", problem)]), batch=True)
    return [f"{key}:{index}" for index in range(count)]


async def post_batch(request: Request) -> JSONResponse:
    service = _service(request)
    token, store_id = _caller(request, service)
    settings = service.settings
    bodies = await read_json(
        request, settings.ingest_max_batch_bytes, "SNACKVIDEO_INGEST_MAX_BATCH_BYTES"
    )
    if not isinstance(bodies, list) or not bodies:
        raise _batch_problem("must be a non-empty JSON array of event bodies")
    if len(bodies) > settings.ingest_max_batch:
        raise _batch_problem(
            f"{len(bodies)} bodies, more than SNACKVIDEO_INGEST_MAX_BATCH "
            f"({settings.ingest_max_batch}): split the batch"
        )
    keys = _batch_keys(request.headers.get("idempotency-key"), len(bodies), settings)
    try:
        outcomes = await service.ready_producer().enqueue_many(
            store_id, bodies, idempotency_keys=keys
        )
    except InvalidEvent as exc:
        raise invalid_event(exc, batch=True) from None
    except EnqueueError as exc:
        raise _not_confirmed(exc, token, store_id) from None
    return JSONResponse(
        {
            "job_ids": [outcome.job_id for outcome in outcomes],
            "repeat": [not outcome.queued_now for outcome in outcomes],
        },
        202,
    )


async def healthz(request: Request) -> JSONResponse:
    if await _service(request).ready_producer().ping():
        return JSONResponse({"status": "ok"})
    return JSONResponse({"status": "unavailable"}, 503, headers=unavailable("").headers)


async def openapi(request: Request) -> JSONResponse:
    return JSONResponse(_service(request).openapi)
