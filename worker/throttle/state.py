"""What ``snackvideo status`` and /metrics read of the throttle: each scope's budget, as
the two scripts left it, on Redis's clock. Reads only; the scripts alone write.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

import redis

from worker.connections import reply_text
from worker.keys import THROTTLE_SCOPES, throttle_in_flight_key, throttle_key
from worker.throttle.budget import TRACKED_SCOPES_MAX


@dataclass(frozen=True)
class ThrottleState:
    """What ``snackvideo status`` shows for one scope (times read on Redis's clock)."""

    scope: str
    limit: int | None
    remaining: int | None
    reset_in_seconds: float | None
    window_seconds: float | None
    blocked_until: float | None  # epoch seconds; None when not blocked
    blocked_for_seconds: float
    in_flight: int
    rate_limited_total: int
    taken_total: int

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready; ``remaining`` is what the server last said, before in-flight requests."""
        blocked_until = (
            datetime.fromtimestamp(self.blocked_until, UTC).isoformat(timespec="milliseconds")
            if self.blocked_until is not None
            else None
        )
        return {
            "limit": self.limit,
            "remaining": self.remaining,
            "reset_in_s": self.reset_in_seconds,
            "blocked_until": blocked_until,
            "blocked_for_s": self.blocked_for_seconds,
            "in_flight": self.in_flight,
            "window_s": self.window_seconds,
            "taken": self.taken_total,
            "rate_limited": self.rate_limited_total,
        }


def read_states(client: redis.Redis, scopes: list[str]) -> list[ThrottleState]:
    """The throttle states of ``scopes``: two round trips, however many there are."""
    seconds, micros = client.time()
    now = float(seconds) + float(micros) / 1e6
    with client.pipeline(transaction=False) as pipe:
        for scope in scopes:
            pipe.hgetall(throttle_key(scope))
            pipe.zcount(throttle_in_flight_key(scope), f"({now}", "+inf")
        replies = pipe.execute()
    return [
        _state(scope, replies[2 * i], replies[2 * i + 1], now) for i, scope in enumerate(scopes)
    ]


def _state(scope: str, raw: dict[Any, Any], in_flight: int, now: float) -> ThrottleState:
    fields = {reply_text(key): reply_text(value) for key, value in raw.items()}

    def number(name: str) -> float | None:
        try:
            return float(fields[name])
        except (KeyError, ValueError):
            return None

    limit, remaining = number("limit"), number("remaining")
    reset_at, blocked_until = number("reset_at"), number("blocked_until")
    if blocked_until is not None and blocked_until <= now:
        blocked_until = None
    window = number("window_s")
    return ThrottleState(
        scope=scope,
        limit=int(limit) if limit is not None else None,
        remaining=int(remaining) if remaining is not None else None,
        reset_in_seconds=round(max(0.0, reset_at - now), 3) if reset_at is not None else None,
        window_seconds=round(window, 3) if window is not None else None,
        blocked_until=blocked_until,
        blocked_for_seconds=round(blocked_until - now, 3) if blocked_until else 0.0,
        in_flight=int(in_flight),
        rate_limited_total=int(number("rate_limited") or 0),
        taken_total=int(number("taken") or 0),
    )


def throttle_status(client: redis.Redis) -> dict[str, dict[str, Any]]:
    """``{scope: state}`` for the scopes of the index (at most ``TRACKED_SCOPES_MAX``, the
    most recently answered), in three round trips whatever the number of stores."""
    scopes = known_scopes(client)
    states = read_states(client, scopes) if scopes else []
    return {state.scope: state.as_dict() for state in sorted(states, key=lambda s: s.scope)}


def known_scopes(client: redis.Redis) -> list[str]:
    """The scopes in the index, most recently answered first (the record script trims it
    to ``TRACKED_SCOPES_MAX`` and to the scopes whose state still lives)."""
    members = cast(list[bytes], client.zrevrange(THROTTLE_SCOPES, 0, TRACKED_SCOPES_MAX - 1))
    return [reply_text(member) for member in members]


