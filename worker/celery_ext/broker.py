"""Celery's broker connection (kombu's), reaching Redis the way ``producers.connections``
does: Sentinel's master by name, and TLS that verifies the server's certificate.

kombu on its own falls back to ``ssl_cert_reqs=CERT_NONE`` for a ``rediss://`` broker URL
without ``broker_use_ssl``, while redis-py verifies: the worker would trust a server the
producers refuse. Beat, Flower (its broker page reads the same two settings) and the
``status`` worker ping use this connection too.
"""

from __future__ import annotations

from typing import Any

from producers.connections import is_sentinel_url, sentinel_password, tls_options
from producers.settings import EnvSettings

#: Timeouts for the Sentinels themselves: kombu gives them only what sentinel_kwargs holds.
SENTINEL_SOCKET_TIMEOUT_SECONDS = 5


def sentinel_transport_options(settings: EnvSettings) -> dict[str, Any]:
    """broker_transport_options for a ``sentinel://`` list (none for a single server)."""
    if not is_sentinel_url(settings.redis_url):
        return {}
    sentinel_kwargs: dict[str, Any] = {
        "socket_timeout": SENTINEL_SOCKET_TIMEOUT_SECONDS,
        "socket_connect_timeout": SENTINEL_SOCKET_TIMEOUT_SECONDS,
    }
    password = sentinel_password(settings)
    if password is not None:
        # Celery censors "password" keys, nested ones included, wherever it shows its
        # configuration (Flower's config page, celery inspect conf).
        sentinel_kwargs["password"] = password
    return {"master_name": settings.redis_sentinel_master, "sentinel_kwargs": sentinel_kwargs}


def broker_use_ssl(settings: EnvSettings) -> dict[str, Any] | None:
    """Celery's broker_use_ssl: verification on for ``rediss://``, None otherwise."""
    return tls_options(settings) if settings.redis_url.startswith("rediss://") else None
