"""Errors a producer can see.

    DispatchError                 base of every error this project raises on purpose
    ├── InvalidEvent (ValueError)  the event breaks the request schema; nothing was enqueued
    └── EnqueueError               the job could not be stored in Redis within the retry bound

The worker extends this tree in ``worker.errors``.
"""

from __future__ import annotations


class DispatchError(Exception):
    """Raised for every failure this project signals on purpose."""


class InvalidEvent(DispatchError, ValueError):
    """Raised when an event payload breaks the request schema; names every offending field."""

    def __init__(self, problems: list[tuple[str, str]], *, prefix: str = "") -> None:
        self.problems = problems
        detail = "; ".join(f"{field}: {message}" for field, message in problems)
        super().__init__(f"{prefix}invalid event: {detail}")

    @property
    def fields(self) -> list[str]:
        return [field for field, _ in self.problems]


class EnqueueError(DispatchError):
    """Raised when Redis did not accept the job within the publish retry bound."""
