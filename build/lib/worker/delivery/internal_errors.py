"""Errors the dispatcher does not classify, and how they are told apart from outages.

A Redis error is *transient* when the same call may succeed later without anyone acting:
the server is restarting, loading, failing over, full, or out of reach. Then nothing can
be written (not a retry, not a dead letter), so the task asks kombu to requeue the
message. Every other exception (a deterministic Redis error such as ``WRONGTYPE`` or an
out-of-range ``EX``, an ``OverflowError`` from a setting, a ``RecursionError`` from a
payload nested too deep, a bug) would fail the same way on every run: the dispatcher
retries it a few times with backoff and then dead-letters the job as ``internal_error``.

The text kept of such an error (dead-letter entry, log line) is its type and message, with
every configured storefront key replaced: a third-party message may quote a header value.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING
from urllib.parse import quote

from producers.enqueue import TRANSIENT_REDIS_ERRORS

if TYPE_CHECKING:
    from worker.settings import Settings

__all__ = ["TRANSIENT_REDIS_ERRORS", "configured_keys", "describe", "scrub"]

REDACTED = "**********"  # what pydantic's SecretStr prints


def configured_keys(settings: Settings) -> list[str]:
    """Every storefront key in the configuration (the per-store map and the fallback)."""
    keys = [key.get_secret_value() for key in settings.storefront_api_keys.values()]
    if settings.storefront_api_key is not None:
        keys.append(settings.storefront_api_key.get_secret_value())
    return [key for key in keys if key]


def scrub(text: str, secrets: Iterable[str]) -> str:
    """``text`` with each secret, as given and percent-encoded, replaced by asterisks."""
    # Longest first: a key that contains another key must not be left half visible.
    for secret in sorted(set(secrets), key=len, reverse=True):
        for form in {secret, quote(secret, safe="")}:
            text = text.replace(form, REDACTED)
    return text


def describe(exc: BaseException, secrets: Iterable[str], limit: int | None = None) -> str:
    """``Type: message`` of ``exc``, secrets scrubbed, cut to ``limit`` characters."""
    try:
        message = str(exc)
    except Exception:  # a broken __str__ must not hide the error it describes
        message = "(message unavailable)"
    text = scrub(f"{type(exc).__name__}: {message}" if message else type(exc).__name__, secrets)
    return text if limit is None else text[:limit]
