"""Which Redis this process talks to, and that server's replication role.

``snackvideo status`` and /metrics show it (``worker.cluster_state``): after a failover an
operator must see at a glance which server the processes use and whether it is the
master. A replica refuses every write (``READONLY``), so a worker pointed at one delivers
nothing. The address comes from the client's connection settings, never from the URL, so
no password can reach a status row or a metric label.
"""

from __future__ import annotations

from typing import Any

import redis

#: Redis calls a replica "slave" in INFO; shown as Redis's own documentation now names it.
_ROLES = {"master": "master", "slave": "replica"}


def server_address(client: redis.Redis) -> str:
    """``host:port`` (or the socket path) of the server ``client`` connects to."""
    pool = client.connection_pool
    master_address = getattr(pool, "get_master_address", None)
    if callable(master_address):  # a Sentinel-managed pool: the master it found
        host, port = master_address()
        return f"{host}:{port}"
    kwargs = pool.connection_kwargs
    if "path" in kwargs:
        return str(kwargs["path"])
    return f"{kwargs.get('host', '?')}:{kwargs.get('port', '?')}"


def replication_state(client: redis.Redis) -> dict[str, Any]:
    """``{"address", "role", "connected_replicas", "master_address", "master_link"}``.

    ``role`` is ``master``, ``replica``, or ``unknown`` when the server refuses INFO (an ACL
    without ``+info``): the rest of the state is still worth showing then.
    """
    state: dict[str, Any] = {
        "address": server_address(client),
        "role": "unknown",
        "connected_replicas": None,
        "master_address": None,
        "master_link": None,
    }
    try:
        info = client.info("replication")
    except redis.ResponseError:  # NOPERM: INFO not granted
        return state
    role = str(info.get("role", ""))
    state["role"] = _ROLES.get(role, role or "unknown")
    if role == "master":
        state["connected_replicas"] = int(info.get("connected_slaves", 0))
    elif role == "slave":
        state["master_address"] = f"{info.get('master_host')}:{info.get('master_port')}"
        state["master_link"] = str(info.get("master_link_status", "unknown"))
    return state
