"""urllib3 connections that obey the running request's deadline (``request_deadline``).

Three places where a request could outlive its deadline, and what closes each:

- Name resolution: ``resolver`` runs it with the time the request has left.
- Connecting: urllib3 tries every address the name resolved to, each for the whole
  connect timeout. Here each try gets at most the time left.
- Everything after (a proxy tunnel, sending, the status line, headers and body, however
  slowly they trickle in): the socket is handed to the watchdog, which shuts it down at
  the deadline. The TLS handshake needs nothing more: CPython bounds the whole handshake
  by the socket's timeout, the connect timeout here (tested with a trickled handshake).

``DeadlineAdapter`` mounts these on a ``requests.Session``; requests' API, its error types
and its connection pool stay as they are. A request made without a guard (none armed in
``CURRENT_GUARD``) behaves as plain urllib3 would, with the bounded resolver.
"""

from __future__ import annotations

import socket
from typing import Any

from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import ConnectTimeoutError, NameResolutionError, NewConnectionError
from urllib3.poolmanager import PoolManager
from urllib3.util.connection import allowed_gai_family

from worker.delivery.request_deadline import CURRENT_GUARD, Guard, watchdog
from worker.delivery.resolver import bounded_resolver


def open_socket(
    host: str,
    port: int,
    *,
    connect_timeout: float | None,
    guard: Guard | None,
    source_address: tuple[str, int] | None = None,
    socket_options: Any = None,
) -> socket.socket:
    """urllib3's ``create_connection``, bounded by the guard's deadline as a whole."""
    if host.startswith("["):
        host = host.strip("[]")
    resolve = guard.resolve if guard is not None else bounded_resolver()

    def time_left() -> float:
        left = guard.remaining() if guard is not None else float("inf")
        if connect_timeout is not None:
            left = min(left, connect_timeout)
        return left

    error: OSError | None = None
    addresses = resolve(host, port, allowed_gai_family(), time_left())
    for family, kind, proto, _name, address in addresses:
        left = time_left()
        if left <= 0:
            raise socket.timeout(f"no time left to connect to {host}")
        sock = socket.socket(family, kind, proto)
        try:
            for option in socket_options or ():
                sock.setsockopt(*option)
            sock.settimeout(left)
            if source_address:
                sock.bind(source_address)
            sock.connect(address)
            # What urllib3 leaves on the socket until it sets the read timeout.
            sock.settimeout(connect_timeout)
            return sock
        except OSError as exc:
            error = exc
            sock.close()
    raise error if error is not None else OSError(f"getaddrinfo returned nothing for {host}")


class _GuardedMixin:
    """For HTTPConnection subclasses: new sockets obey the deadline, every request's
    socket is handed to the watchdog."""

    host: str
    port: int
    timeout: Any
    source_address: tuple[str, int] | None
    socket_options: Any
    sock: Any
    _dns_host: str

    def _new_conn(self) -> socket.socket:
        guard = CURRENT_GUARD.get()
        # The same exception types as urllib3's own _new_conn, so requests maps them
        # to the same errors (ConnectTimeout, ConnectionError).
        try:
            sock = open_socket(
                self._dns_host,
                self.port,
                connect_timeout=self.timeout if isinstance(self.timeout, int | float) else None,
                guard=guard,
                source_address=self.source_address,
                socket_options=self.socket_options,
            )
        except socket.gaierror as exc:
            raise NameResolutionError(self.host, self, exc) from exc  # type: ignore[arg-type]
        except TimeoutError as exc:
            raise ConnectTimeoutError(
                self, f"Connection to {self.host} timed out. ({exc})"
            ) from exc
        except OSError as exc:
            raise NewConnectionError(
                self,  # type: ignore[arg-type]
                f"Failed to establish a new connection: {exc}",
            ) from exc
        if guard is not None:
            watchdog().attach(guard, sock)
        return sock

    def request(self, *args: Any, **kwargs: Any) -> None:
        guard = CURRENT_GUARD.get()
        if guard is not None and self.sock is not None:
            # A kept-alive connection: this request reads from its socket now.
            watchdog().attach(guard, self.sock)
        super().request(*args, **kwargs)  # type: ignore[misc]


class GuardedHTTPConnection(_GuardedMixin, HTTPConnection):
    pass


class GuardedHTTPSConnection(_GuardedMixin, HTTPSConnection):
    """The TLS handshake wraps the new socket in an ``SSLSocket``, which detaches the
    plain socket object the watchdog held: it gets the wrapped one. Should the deadline
    pass in between, ``attach`` cuts the wrapped socket at once."""

    def connect(self) -> None:
        super().connect()
        guard = CURRENT_GUARD.get()
        if guard is not None and self.sock is not None:
            watchdog().attach(guard, self.sock)


class GuardedHTTPConnectionPool(HTTPConnectionPool):
    ConnectionCls = GuardedHTTPConnection


class GuardedHTTPSConnectionPool(HTTPSConnectionPool):
    ConnectionCls = GuardedHTTPSConnection


GUARDED_POOLS = {"http": GuardedHTTPConnectionPool, "https": GuardedHTTPSConnectionPool}


class DeadlineAdapter(HTTPAdapter):
    """requests' adapter, its pools built from the guarded connections above."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = dict(GUARDED_POOLS)

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> PoolManager:
        manager: PoolManager = super().proxy_manager_for(proxy, **proxy_kwargs)
        # An HTTP(S) proxy (HTTPS_PROXY): the connection to the proxy obeys the deadline
        # too. A SOCKS proxy's manager builds connections of its own kind: left as is.
        if manager.pool_classes_by_scheme.get("https") is HTTPSConnectionPool:
            manager.pool_classes_by_scheme = dict(GUARDED_POOLS)
        return manager
