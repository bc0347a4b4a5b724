"""Every Redis client this project opens is built here, from the settings.

``REDIS_URL`` takes four forms, and each component (producers, the worker's bookkeeping,
redrive, the delayed-job mover, the CLI, the metrics collectors) reaches Redis the same
way through ``redis_client`` (``async_redis_client`` for asyncio code: the ingest service):

- ``redis://`` and ``unix://``: one server.
- ``rediss://``: one server over TLS. Its certificate is verified, against
  ``SNACKVIDEO_REDIS_CA_FILE`` when set (a private CA), else the system's trust store.
- ``sentinel://h1:26379;sentinel://h2:26379``: kombu's Sentinel list. The client asks the
  Sentinels for the master named ``SNACKVIDEO_REDIS_SENTINEL_MASTER`` on every new
  connection, so after a failover the next connection reaches the new master. The
  master's user and password are the first URL's ``user:password@`` (as kombu reads
  them); the Sentinels' own password is ``SNACKVIDEO_REDIS_SENTINEL_PASSWORD``.

Celery's broker connection is kombu's; ``worker.celery_ext.broker`` gives it the same
options (``tls_options``, ``sentinel_addresses``). Redis Cluster is refused by the
settings (a cluster URL) and by ``cluster_mode_problem`` (a server in cluster mode).
"""

from __future__ import annotations

import ssl
from typing import Any
from urllib.parse import unquote, urlsplit

import redis
import redis.asyncio
from redis.asyncio.sentinel import Sentinel as AsyncSentinel
from redis.sentinel import Sentinel

from producers.settings import CLUSTER_REFUSAL, EnvSettings

DEFAULT_SENTINEL_PORT = 26379


def is_sentinel_url(url: str) -> bool:
    return url.startswith("sentinel://")


def sentinel_addresses(url: str) -> list[tuple[str, int]]:
    """(host, port) of each Sentinel in kombu's ``sentinel://…;sentinel://…`` list."""
    addresses = []
    for part in url.split(";"):
        parts = urlsplit(part)
        addresses.append((parts.hostname or "127.0.0.1", parts.port or DEFAULT_SENTINEL_PORT))
    return addresses


def tls_options(settings: EnvSettings) -> dict[str, Any]:
    """redis-py's (and kombu's) TLS keywords: verify the server's certificate, always."""
    options: dict[str, Any] = {"ssl_cert_reqs": ssl.CERT_REQUIRED}
    if settings.redis_ca_file:
        options["ssl_ca_certs"] = settings.redis_ca_file
    return options


def sentinel_password(settings: EnvSettings) -> str | None:
    secret = settings.redis_sentinel_password
    return secret.get_secret_value() if secret is not None else None


def redis_client(settings: EnvSettings, **options: Any) -> redis.Redis:
    """A client for the Redis that ``settings.redis_url`` names (its master, under
    Sentinel); ``options`` are redis-py connection keywords (timeouts, retry)."""
    url = settings.redis_url
    if is_sentinel_url(url):
        return _sentinel_master(settings, options)
    if url.startswith("rediss://"):
        options = {**tls_options(settings), **options}
    return redis.Redis.from_url(url, **options)


def async_redis_client(settings: EnvSettings, **options: Any) -> redis.asyncio.Redis:
    """``redis_client`` for asyncio: the same URL forms, TLS rule and Sentinel lookup."""
    url = settings.redis_url
    if is_sentinel_url(url):
        sentinel_kwargs, master_kwargs = _sentinel_options(settings, options)
        sentinel = AsyncSentinel(  # type: ignore[no-untyped-call, unused-ignore]
            sentinel_addresses(url), sentinel_kwargs=sentinel_kwargs, **options
        )
        master: redis.asyncio.Redis = sentinel.master_for(
            settings.redis_sentinel_master, **master_kwargs
        )
        return master
    if url.startswith("rediss://"):
        options = {**tls_options(settings), **options}
    return redis.asyncio.Redis.from_url(url, **options)


# The Sentinel classes are untyped before redis-py 8.2 and typed from it: each call below
# ignores `no-untyped-call`, and `unused-ignore` keeps mypy quiet on either version.
def _sentinel_master(settings: EnvSettings, options: dict[str, Any]) -> redis.Redis:
    sentinel_kwargs, master_kwargs = _sentinel_options(settings, options)
    sentinel = Sentinel(  # type: ignore[no-untyped-call, unused-ignore]
        sentinel_addresses(settings.redis_url), sentinel_kwargs=sentinel_kwargs, **options
    )
    master: redis.Redis = sentinel.master_for(  # type: ignore[no-untyped-call, unused-ignore]
        settings.redis_sentinel_master, **master_kwargs
    )
    return master


def _sentinel_options(
    settings: EnvSettings, options: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(what the Sentinels are asked with, what the master is reached with)."""
    first = urlsplit(url_of_first_sentinel(settings.redis_url))
    # The Sentinels get the timeouts and the retry policy, but not the master's password.
    sentinel_kwargs = {
        name: value
        for name, value in options.items()
        if name.startswith("socket_") or name == "retry"
    }
    password = sentinel_password(settings)
    if password is not None:
        sentinel_kwargs["password"] = password
    master_kwargs = {
        "username": unquote(first.username) if first.username else None,
        "password": unquote(first.password) if first.password else None,
        "db": int(first.path.strip("/") or 0),
    }
    return sentinel_kwargs, master_kwargs


def url_of_first_sentinel(url: str) -> str:
    return url.split(";", 1)[0]


def cluster_mode_problem(client: redis.Redis) -> str | None:
    """Why this Redis cannot be used (it runs in cluster mode), or None. A Redis that does
    not answer, or refuses INFO to this user, is not refused here: its commands will say."""
    try:
        info = client.info("cluster")
    except redis.RedisError:
        return None
    return CLUSTER_REFUSAL if info.get("cluster_enabled") else None
