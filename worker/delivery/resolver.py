"""Name resolution with a time bound.

``socket.getaddrinfo`` takes no timeout, and requests' connect timeout starts only after
it returned: a slow resolver (an unreachable DNS server costs five seconds per try, and
libc tries several times) would hold a request past its deadline, and the watchdog
cannot cut a lookup, as there is no socket yet. So the lookup runs in a daemon thread and
the caller waits for it at most the time it has left. At most ``RESOLVER_THREADS``
lookups run at once: with that many stuck, a new one waits for a free slot within the
same bound, so a dead resolver never piles up threads. Daemon threads, so a stuck lookup
never holds up the exit of a worker process.

Only new connections resolve: the session keeps its connection alive, so this runs once
per connection, not per request. An IP literal skips the thread.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger("snackvideo.resolver")

RESOLVER_THREADS = 4
#: ``socket.getaddrinfo``'s shape: (host, port, family, type) -> addresses.
Lookup = Callable[[str, int, int, int], list[Any]]


class ResolveTimeout(socket.timeout):
    """Name resolution did not finish in the time the request had left."""


def _is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


class _Lookup:
    """One lookup running in its own thread; the caller reads it when ``done`` is set."""

    def __init__(self, lookup: Lookup, args: tuple[str, int, int, int]) -> None:
        self.lookup = lookup
        self.args = args
        self.done = threading.Event()
        self.result: list[Any] = []
        self.error: BaseException | None = None

    def run(self, slots: threading.BoundedSemaphore) -> None:
        try:
            self.result = self.lookup(*self.args)
        except BaseException as exc:  # handed to the caller, if it still waits
            self.error = exc
        finally:
            slots.release()
            self.done.set()


def _timed_out(message: str) -> ResolveTimeout:
    # A dead resolver fails every new connection: say so plainly, once per attempt.
    log.warning("%s; the request fails and is retried", message)
    return ResolveTimeout(message)


class BoundedResolver:
    def __init__(self, threads: int = RESOLVER_THREADS, lookup: Lookup | None = None) -> None:
        self.threads = threads
        # A seam for tests: a lookup that is slow on purpose.
        self.lookup: Lookup = lookup or socket.getaddrinfo
        self._slots = threading.BoundedSemaphore(threads)

    def __call__(self, host: str, port: int, family: int, timeout: float) -> list[Any]:
        """``getaddrinfo(host, port, family, SOCK_STREAM)``, or ``ResolveTimeout`` after
        ``timeout`` seconds."""
        if _is_ip_literal(host):
            return socket.getaddrinfo(
                host, port, family, socket.SOCK_STREAM, 0, socket.AI_NUMERICHOST
            )
        deadline = time.monotonic() + timeout
        if timeout <= 0 or not self._slots.acquire(timeout=timeout):
            raise _timed_out(f"resolving {host}: every resolver thread is busy")
        job = _Lookup(self.lookup, (host, port, family, socket.SOCK_STREAM))
        threading.Thread(
            target=job.run, args=(self._slots,), name="snackvideo-dns", daemon=True
        ).start()
        if not job.done.wait(max(0.0, deadline - time.monotonic())):
            raise _timed_out(f"resolving {host} took longer than {timeout:.2f}s")
        if job.error is not None:
            raise job.error
        return job.result

    def _forget_after_fork(self) -> None:
        # Lookups running in the parent do not exist in a forked child: all slots free.
        self._slots = threading.BoundedSemaphore(self.threads)


_RESOLVER = BoundedResolver()
os.register_at_fork(after_in_child=_RESOLVER._forget_after_fork)


def bounded_resolver() -> BoundedResolver:
    """This process's resolver."""
    return _RESOLVER
