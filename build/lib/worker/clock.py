"""One clock for every due time the project computes: Redis ``TIME``.

Workers, beat and producers run on hosts whose clocks disagree. A due time written by a
host 5 minutes ahead and read by one that is on time is 5 minutes early, so every time
that another process compares against must come from the one clock they all share, the
Redis server's. A Lua script reads ``TIME`` itself. Python code asks ``RedisClock.now()``,
which is this host's clock corrected by the offset measured against ``TIME``: a round
trip every ``refresh_seconds``, not one per call.

The offset is measured as ``redis_time - (sent + received) / 2``; its error is at most
half the round trip, well under a millisecond on a LAN.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import redis

#: How often a process measures its offset again. Clocks drift by milliseconds per hour;
#: a minute is plenty, and costs one TIME round trip a minute per process.
DEFAULT_REFRESH_SECONDS = 60.0


class RedisClock:
    """``now()`` on the Redis server's clock, without a round trip per call.

    A measurement that fails (Redis away) keeps the last offset: a clock must always
    answer, and a stale offset is off by drift only.
    """

    def __init__(
        self,
        client: redis.Redis,
        *,
        refresh_seconds: float = DEFAULT_REFRESH_SECONDS,
        local: Callable[[], float] = time.time,
    ) -> None:
        self.client = client
        self.refresh_seconds = refresh_seconds
        self.local = local
        self.offset_seconds = 0.0
        self.measured_at: float | None = None  # monotonic time of the last measurement
        self._lock = threading.Lock()

    def now(self) -> float:
        """Epoch seconds on the Redis server's clock (as measured at the last refresh)."""
        measured_at = self.measured_at
        if measured_at is None or time.monotonic() - measured_at >= self.refresh_seconds:
            self.refresh()
        return self.local() + self.offset_seconds

    def refresh(self) -> float | None:
        """Measure the offset again; returns it, or None when Redis did not answer."""
        with self._lock:
            try:
                sent = self.local()
                seconds, micros = self.client.time()
                received = self.local()
            except redis.RedisError:
                # Try again at the next refresh, not at every call while Redis is away.
                self.measured_at = time.monotonic()
                return None
            server = float(seconds) + float(micros) / 1e6
            self.offset_seconds = server - (sent + received) / 2
            self.measured_at = time.monotonic()
            return self.offset_seconds
