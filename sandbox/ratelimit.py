"""Fixed-window rate limiting and the ``X-Ratelimit-*`` / ``Retry-After`` headers it renders.

The limiter is global to one sandbox process (the real endpoint limits per client IP; every
worker of a local run shares one IP anyway). Every request to the endpoint counts,
including the ones it refuses. Where a window starts (``WINDOW_ALIGNMENTS``):

    first-request  at the first request after the previous window expired, like the usual
                   ``INCR`` + ``EXPIRE`` fixed window: the client's own traffic sets the phase
    clock          on multiples of the window length on the server's clock (a key per
                   ``floor(now / window)``): the phase is the server's, a client can only
                   learn it by watching ``Remaining`` jump back up
"""

from __future__ import annotations

import math
import re
from collections import deque
from dataclasses import dataclass

#: How X-Ratelimit-Reset is written: whole seconds until the reset (rounded up, at least 1:
#: the IETF RateLimit draft's delta-seconds), epoch seconds (rounded up), epoch milliseconds.
RESET_STYLES = ("seconds", "epoch", "epoch-ms")
WINDOW_ALIGNMENTS = ("first-request", "clock")

_SPEC = re.compile(r"^\s*(\d+)\s*(?:/\s*(\d+(?:\.\d+)?)\s*)?$")


def parse_rate_limit(spec: str) -> tuple[int, float]:
    """Parse ``"N/S"`` (N requests per S seconds; ``"N"`` means per second) into ``(N, S)``."""
    match = _SPEC.match(spec)
    if match is None:
        raise ValueError(f"rate limit must look like N/S, e.g. 25/1, got {spec!r}")
    limit = int(match.group(1))
    window_seconds = float(match.group(2) or 1)
    if window_seconds <= 0:
        raise ValueError(f"rate limit window must be > 0 seconds, got {spec!r}")
    return limit, window_seconds


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    limit: int
    remaining: int
    reset_at: float  # epoch seconds at which the current window ends
    now: float


class FixedWindowLimiter:
    """Counts requests per fixed window and remembers recent window totals.

    Not thread-safe on purpose: ``SandboxState`` calls it under its own lock, so the hot
    path takes one lock instead of two.
    """

    def __init__(
        self,
        limit: int | None,
        window_seconds: float,
        history: int = 300,
        alignment: str = "first-request",
    ) -> None:
        self.limit = limit
        self.window_seconds = window_seconds
        self.alignment = alignment
        self.peak = 0
        self._start = -math.inf
        self._count = 0
        self._history: deque[tuple[float, int]] = deque(maxlen=history)

    def hit(self, now: float) -> Decision | None:
        """Count one request; return the verdict, or ``None`` when no limit is set.

        Windows are tracked even without a limit so stats can report the peak rate.
        """
        if now >= self._start + self.window_seconds:
            if self._count:
                self._history.append((self._start, self._count))
            self._start = self._window_start(now)
            self._count = 0
        self._count += 1
        if self._count > self.peak:
            self.peak = self._count
        if self.limit is None:
            return None
        return Decision(
            allowed=self._count <= self.limit,
            limit=self.limit,
            remaining=max(0, self.limit - self._count),
            reset_at=self._start + self.window_seconds,
            now=now,
        )

    def configure(
        self, limit: int | None, window_seconds: float, alignment: str = "first-request"
    ) -> None:
        """Switch limits; the next request opens a fresh window, the peak is kept."""
        self.limit = limit
        self.window_seconds = window_seconds
        self.alignment = alignment
        self._close_window()

    def _window_start(self, now: float) -> float:
        if self.alignment == "clock":
            return math.floor(now / self.window_seconds) * self.window_seconds
        return now

    def reset(self) -> None:
        self._start = -math.inf
        self._count = 0
        self.peak = 0
        self._history.clear()

    def windows(self) -> list[dict[str, float | int]]:
        """Recent windows, oldest first, the open one last."""
        rows = [{"start": start, "count": count} for start, count in self._history]
        if self._count:
            rows.append({"start": self._start, "count": self._count})
        return rows

    def _close_window(self) -> None:
        if self._count:
            self._history.append((self._start, self._count))
        self._start = -math.inf
        self._count = 0


def seconds_until_reset(decision: Decision) -> int:
    """Whole seconds until the window resets, rounded up and never 0 (clients sleep on it)."""
    return max(1, math.ceil(decision.reset_at - decision.now))


def render_headers(
    decision: Decision, reset_style: str, announce_limit: int | None = None
) -> list[tuple[str, str]]:
    """The three headers; ``announce_limit`` writes that limit instead of the real one (and
    caps Remaining to it), for a server whose headers lie."""
    limit, remaining = decision.limit, decision.remaining
    if announce_limit is not None:
        limit, remaining = announce_limit, min(remaining, announce_limit)
    if reset_style == "epoch":
        reset = str(math.ceil(decision.reset_at))
    elif reset_style == "epoch-ms":
        reset = str(math.ceil(decision.reset_at * 1000))
    else:
        reset = str(seconds_until_reset(decision))
    return [
        ("X-Ratelimit-Limit", str(limit)),
        ("X-Ratelimit-Remaining", str(remaining)),
        ("X-Ratelimit-Reset", reset),
    ]
