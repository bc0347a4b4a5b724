"""A wall-clock deadline for one HTTP request, enforced by one watchdog thread per process.

requests' read timeout bounds each socket read, not the request: a server that sends one
byte every half second keeps a POST alive for as long as it likes. The watchdog cuts the
request instead: at the deadline it shuts down the request's socket, so the blocked read
in the delivering thread returns at once with an error, and the request fails.

One thread with a heap of deadlines, not a ``threading.Timer`` per request: arming costs a
lock and a ``heappush`` on the hot path, and a finished request is only marked ``done``
(its heap entry is dropped whenever the thread next wakes). The thread sleeps until the
earliest deadline of a request still running.

The delivering thread tells the watchdog which socket to cut through ``attach``: the
connection classes in ``guarded_connections`` call it for a new socket as soon as
it is connected (so a TLS handshake is covered too) and for a kept-alive one at the start
of each request. They find the running request's guard in ``CURRENT_GUARD``, a context
variable, which works the same in a prefork child and in each thread of the threads pool.
"""

from __future__ import annotations

import heapq
import itertools
import os
import socket
import threading
import time
from collections.abc import Callable
from contextvars import ContextVar
from typing import Any

#: (host, port, family, timeout) -> getaddrinfo's list; see ``resolver``.
Resolve = Callable[[str, int, int, float], list[Any]]


class Guard:
    """One request's deadline, and the socket to cut when it passes."""

    __slots__ = ("deadline", "resolve", "sock", "fired", "done")

    def __init__(self, deadline: float, resolve: Resolve) -> None:
        self.deadline = deadline  # time.monotonic()
        self.resolve = resolve
        self.sock: socket.socket | None = None
        self.fired = False  # the deadline passed while the request was running
        self.done = False  # the request ended (disarmed)

    def remaining(self) -> float:
        return self.deadline - time.monotonic()


#: The guard of the request running in this thread (or context), if any.
CURRENT_GUARD: ContextVar[Guard | None] = ContextVar("snackvideo_request_guard", default=None)


def cut(sock: socket.socket) -> None:
    """Shut the socket down both ways: a read blocked on it in another thread returns.

    The plain socket method, even for an ``ssl.SSLSocket``: its own ``shutdown`` also drops
    the TLS object under the feet of the thread that is reading. A socket closed meanwhile
    (fileno -1) raises EBADF, which is harmless here.
    """
    try:
        socket.socket.shutdown(sock, socket.SHUT_RDWR)
    except OSError:
        pass


class Watchdog:
    """Cuts requests at their deadline. One per process (``watchdog()``)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._heap: list[tuple[float, int, Guard]] = []
        self._order = itertools.count()  # ties on the deadline never compare two Guards
        self._thread: threading.Thread | None = None

    def arm(self, seconds: float, resolve: Resolve) -> Guard:
        """Start the clock for one request: cut it ``seconds`` from now."""
        guard = Guard(time.monotonic() + seconds, resolve)
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="snackvideo-request-deadline", daemon=True
                )
                self._thread.start()
            heapq.heappush(self._heap, (guard.deadline, next(self._order), guard))
            # With one timeout setting every new deadline is the latest, so the thread,
            # asleep until the earliest one, rarely needs waking.
            if self._heap[0][2] is guard:
                self._wake.notify()
        return guard

    def attach(self, guard: Guard, sock: socket.socket) -> None:
        """The request now reads from ``sock``; cut it at once if its deadline passed."""
        with self._lock:
            if guard.done:
                return
            guard.sock = sock
            if guard.fired:
                cut(sock)

    def disarm(self, guard: Guard) -> bool:
        """The request ended; True when the watchdog had cut it (its deadline passed)."""
        with self._lock:
            guard.done = True
            guard.sock = None
            return guard.fired

    def _run(self) -> None:
        with self._lock:
            while True:
                now = time.monotonic()
                heap = self._heap
                while heap and (heap[0][2].done or heap[0][0] <= now):
                    _, _, guard = heapq.heappop(heap)
                    if not guard.done and not guard.fired:
                        guard.fired = True
                        if guard.sock is not None:
                            cut(guard.sock)
                self._wake.wait(heap[0][0] - now if heap else None)

    def _forget_after_fork(self) -> None:
        # A forked child has no watchdog thread, and the lock may have been held by the
        # parent's thread at the fork: start from scratch.
        self.__init__()  # type: ignore[misc]


_WATCHDOG = Watchdog()
os.register_at_fork(after_in_child=_WATCHDOG._forget_after_fork)


def watchdog() -> Watchdog:
    """This process's watchdog (its thread starts with the first request)."""
    return _WATCHDOG
