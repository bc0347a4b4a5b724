"""Errors a producer can see.

    DispatchError                       base of every error this project raises on purpose
    ├── ConfigurationError (ValueError)  a setting (a variable or an argument) breaks its rule
    ├── InvalidEvent (ValueError)        the event breaks the request schema; nothing was enqueued
    └── EnqueueError                     the job could not be stored in Redis within the retry bound

The worker extends this tree in ``worker.errors``.
"""

from __future__ import annotations


class DispatchError(Exception):
    """Raised for every failure this project signals on purpose."""


class ConfigurationError(DispatchError, ValueError):
    """Raised when a setting breaks its rule. The message is one line that names each
    offending variable (or argument) and its rule, and never the value: it may be a key
    or a URL with a password."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        self.problems = problems
        detail = "; ".join(f"{name}: {rule}" if name else rule for name, rule in problems)
        super().__init__(f"invalid configuration: {detail}")

    @property
    def names(self) -> list[str]:
        return [name for name, _ in self.problems if name]


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
