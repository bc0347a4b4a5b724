"""Placeholder throttle: lets every request through. The header-driven, Redis-shared
budget replaces it (see the throttle issue); the dispatcher only uses this interface.
"""

from __future__ import annotations

from collections.abc import Mapping

import redis


class Throttle:
    def __init__(self, client: redis.Redis, *, default_rate_per_second: float) -> None:
        self.client = client
        self.default_rate_per_second = default_rate_per_second

    def acquire(self, scope: str, now: float | None = None) -> float:
        """Take a slot: 0.0 when a request may go now (it then counts as in flight),
        else the seconds to wait before asking again (nothing taken)."""
        return 0.0

    def record(
        self,
        scope: str,
        status_code: int | None,
        headers: Mapping[str, str],
        now: float | None = None,
    ) -> None:
        """Release the slot taken by ``acquire`` and learn from the response headers
        (``status_code`` None: no response, e.g. a timeout)."""
