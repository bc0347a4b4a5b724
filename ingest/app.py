"""``create_app()``: the Starlette application, its routes, error handlers and lifespan."""

from __future__ import annotations

import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.routing import Route

from ingest import routes
from ingest.auth import Authenticator
from ingest.errors import ApiError, api_error, http_error, internal_error
from ingest.openapi import build_openapi
from ingest.settings import IngestSettings
from producers.aio import AsyncProducer

log = logging.getLogger("ingest")


def create_app(settings: IngestSettings | None = None) -> Starlette:
    """The service for ``settings`` (default: read from the environment)."""
    settings = settings or IngestSettings.from_env()
    service = routes.Service(
        settings=settings,
        authenticator=Authenticator(settings.ingest_tokens.values()),
        openapi=build_openapi(settings.ingest_max_batch),
    )

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        # Built here, in the loop that serves requests: redis.asyncio binds to its loop.
        service.producer = AsyncProducer(
            settings.redis_url,
            timeout_seconds=settings.enqueue_timeout_seconds,
            idempotency_ttl_seconds=settings.idempotency_ttl_seconds,
            max_payload_bytes=settings.max_payload_bytes,
        )
        if not await service.producer.warm():
            log.warning("ingest: Redis did not answer at start; its connections open on use")
        # What exists now (modules, the app, pydantic's validators) lives as long as the
        # process. Frozen, the collector's full passes skip it and scan only what requests
        # made: unfrozen, each full pass stalled a worker 17-22 ms (bench/ingest.py).
        gc.freeze()
        try:
            yield
        finally:
            await service.producer.aclose()

    app = Starlette(
        routes=[
            Route("/v1/stores/{store_id}/events", routes.post_event, methods=["POST"]),
            Route("/v1/stores/{store_id}/events/batch", routes.post_batch, methods=["POST"]),
            Route("/healthz", routes.healthz, methods=["GET"]),
            Route("/openapi.json", routes.openapi, methods=["GET"]),
        ],
        exception_handlers={
            ApiError: api_error,
            HTTPException: http_error,
            Exception: internal_error,
        },
        lifespan=lifespan,
    )
    # No redirect from "/healthz/" to "/healthz": an unknown path is a 404, as documented.
    app.router.redirect_slashes = False
    app.state.service = service
    return app
