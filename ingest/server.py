"""``snackvideo ingest``: serve the ingest app with uvicorn and its worker processes.

Bound to ``SNACKVIDEO_INGEST_ADDRESS`` (loopback by default) and ``SNACKVIDEO_INGEST_PORT``,
with ``SNACKVIDEO_INGEST_WORKERS`` processes; flags override the three. Each worker
process builds the app from the environment (``create_app`` is uvicorn's factory), so
settings are checked once here, before anything listens, and refused in one line.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

import uvicorn
from uvicorn.supervisors import Multiprocess

from ingest.settings import IngestSettings
from producers.errors import ConfigurationError
from producers.urls import without_password

log = logging.getLogger("ingest")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="snackvideo ingest", description="Serve the HTTP ingest API (POST events)."
    )
    parser.add_argument("--port", type=int, help="default: SNACKVIDEO_INGEST_PORT (8088)")
    parser.add_argument("--address", help="default: SNACKVIDEO_INGEST_ADDRESS (127.0.0.1)")
    parser.add_argument(
        "--workers", type=int, help="default: SNACKVIDEO_INGEST_WORKERS (half the CPUs, at least 1)"
    )
    return parser


def exec_service(argv: Sequence[str]) -> int:
    """Serve until SIGTERM/SIGINT; 2 for an invalid setting, 1 when it could not listen."""
    args = build_parser().parse_args(list(argv))
    overrides = {
        name: value
        for name, value in (
            ("ingest_port", args.port),
            ("ingest_address", args.address),
            ("ingest_workers", args.workers),
        )
        if value is not None
    }
    try:
        settings = IngestSettings.from_env(**overrides)
    except ConfigurationError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(levelname)s:     %(message)s")
    if not settings.ingest_tokens:
        log.warning("ingest: SNACKVIDEO_INGEST_TOKENS holds no token: every POST gets 401")
    log.info(
        "ingest: http://%s:%d, %d worker(s), Redis %s, tokens: %s",
        settings.ingest_address,
        settings.ingest_port,
        settings.ingest_workers,
        without_password(settings.redis_url),
        ", ".join(sorted(settings.ingest_tokens)) or "none",
    )
    config = uvicorn.Config(
        "ingest.app:create_app",
        factory=True,
        host=settings.ingest_address,
        port=settings.ingest_port,
        workers=settings.ingest_workers,
        # No line per request on the hot path (a reverse proxy logs requests); the service
        # logs what matters itself: a 503, when Redis did not confirm a job.
        access_log=False,
        server_header=False,
        # No X-Forwarded-For trust: nothing here depends on the client's address.
        proxy_headers=False,
        timeout_graceful_shutdown=10,
    )
    if settings.ingest_workers == 1:
        server = uvicorn.Server(config)
        server.run()
        return 0 if server.started else 1
    # What uvicorn.run does for workers > 1: bind once here, serve in each child. (A port
    # already taken is logged and exits 1 inside bind_socket.)
    Multiprocess(config, sockets=[config.bind_socket()]).run()
    return 0
