"""The Scalev HTTP client: one reused session, explicit timeouts, and one place where
responses and ``requests`` exceptions become this project's outcome types.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import requests

from worker import metrics
from worker.errors import DeliveryError, PermanentError, RateLimited, RetryableError

API_KEY_HEADER = "X-Scalev-Storefront-Api-Key"
EVENTS_PATH = "/v3/stores/{store_id}/public/analytics/snackvideo/events"
# DESIGN.md exempts 408, 409, 425 and 429 from "permanent 4xx". 409 (a conflict, e.g. a
# concurrent write on Scalev's side) is retried with backoff like 408 and 425.
RETRYABLE_4XX = frozenset({408, 409, 425})
USER_AGENT = "snackvideo-dispatch/0.1"


@dataclass(frozen=True)
class Delivered:
    """A 2xx answer."""

    status_code: int
    headers: dict[str, str] = field(default_factory=dict)


def events_url(base_url: str, store_id: str) -> str:
    return base_url.rstrip("/") + EVENTS_PATH.format(store_id=quote(store_id, safe=""))


def classify(status_code: int, body: str, headers: dict[str, str]) -> Delivered | DeliveryError:
    """Map one HTTP answer onto the outcomes table of DESIGN.md."""
    if 200 <= status_code < 300:
        return Delivered(status_code, headers)
    message = f"Scalev answered {status_code}"
    if status_code == 429:
        return RateLimited(message, status_code=status_code, body=body, headers=headers)
    if status_code >= 500 or status_code in RETRYABLE_4XX:
        return RetryableError(message, status_code=status_code, body=body, headers=headers)
    return PermanentError(message, status_code=status_code, body=body, headers=headers)


class ScalevClient:
    """Posts events. Create one per worker process: the session keeps connections alive."""

    def __init__(
        self,
        base_url: str,
        *,
        connect_timeout_seconds: float,
        read_timeout_seconds: float,
        session: requests.Session | None = None,
    ) -> None:
        self.base_url = base_url
        self.timeout = (connect_timeout_seconds, read_timeout_seconds)
        self.session = session or requests.Session()
        self.session.headers["User-Agent"] = USER_AGENT

    def send(self, store_id: str, api_key: str, payload: dict[str, Any]) -> Delivered:
        """POST one event; return on 2xx, raise a ``DeliveryError`` subclass otherwise."""
        body = json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        started = time.perf_counter()
        try:
            response = self.session.post(
                events_url(self.base_url, store_id),
                data=body,
                headers={API_KEY_HEADER: api_key, "Content-Type": "application/json"},
                timeout=self.timeout,
            )
        except requests.Timeout as exc:
            raise RetryableError(f"Scalev did not answer in time: {type(exc).__name__}") from exc
        except requests.ConnectionError as exc:
            raise RetryableError(f"could not reach Scalev: {type(exc).__name__}") from exc
        except requests.RequestException as exc:
            raise RetryableError(f"request to Scalev failed: {type(exc).__name__}") from exc
        finally:
            metrics.observe_http_seconds(time.perf_counter() - started)
        # Lower-cased once here: header names are case-insensitive and the throttle reads them.
        headers = {name.lower(): value for name, value in response.headers.items()}
        outcome = classify(response.status_code, response.text, headers)
        if isinstance(outcome, DeliveryError):
            raise outcome
        return outcome

    def close(self) -> None:
        self.session.close()
