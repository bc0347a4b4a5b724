"""Polling a condition: every wait in the tests and benchmarks ends on a fact, not a sleep."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from harness.errors import HarnessError

#: How long a test or benchmark waits for work to settle (delivered, dead-lettered,
#: drained) before it calls that a failure. Generous: two cores shared with other runs,
#: and a passing wait ends as soon as its condition holds.
SETTLE_SECONDS = 120.0


def wait_until(
    predicate: Callable[[], Any], timeout: float = 20.0, interval: float = 0.05, what: str = ""
) -> Any:
    """Poll ``predicate`` until it returns something truthy and return that.

    Raises ``HarnessError`` after ``timeout`` seconds (the predicate is called once more
    at the deadline, so a slow machine gets its full time).
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise HarnessError(f"timed out after {timeout:g}s waiting for {what or predicate}")
        time.sleep(interval)
