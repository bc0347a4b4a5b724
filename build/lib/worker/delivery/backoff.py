"""Retry waits: exponential with jitter, each longer than the one before until the cap."""

from __future__ import annotations

import random


def backoff(attempt: int, base: float, cap: float, rng: random.Random | None = None) -> float:
    """Seconds to wait after failed attempt number ``attempt`` (1 for the first failure).

    The raw wait doubles per attempt and the jitter only stretches it by up to half, so a
    wait is always longer than the previous one (2x > 1.5x) until both reach ``cap``.
    """
    if attempt < 1:
        raise ValueError("attempt starts at 1")
    uniform = (rng or random).uniform
    exponent = min(attempt - 1, 64)  # 2**64 * base is past any cap; avoid float overflow
    raw = base * (2.0**exponent)
    return min(cap, raw * uniform(1.0, 1.5))
