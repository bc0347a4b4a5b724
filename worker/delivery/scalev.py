"""The Scalev HTTP client: one reused session, explicit timeouts, a hard deadline per
request, and one place where responses and ``requests`` exceptions become this project's
outcome types. The session holds the configuration (proxies, TLS verification, default
headers, the guarded adapter); each POST skips requests' per-request layers and goes
straight to the pool the session would use (``http_route``).

Two things a hostile or broken server must not be able to do:

- Send the event, and the storefront key with it, somewhere else. Redirects are never
  followed (``allow_redirects=False``); a 3xx is a permanent failure that keeps its
  ``Location`` for the dead-letter entry (``RedirectRefused``).
- Hold a worker. requests' timeouts bound each socket read, not the request; the
  watchdog (``request_deadline``) cuts the request at connect + read timeout, name
  resolution included (``guarded_connections``). A cut request is a ``RetryableError``.
- Fill a worker's memory. The body is streamed and read no further than
  ``RESPONSE_BODY_MAX_BYTES`` (decoded: urllib3 bounds what it decompresses too), inside
  the same deadline; a longer body is cut there and its connection closed, not drained.

What a request costs and how it ended is the caller's to count (the dispatcher times each
``send`` for ``snackvideo_delivery_seconds`` and counts refused redirects): this client
records no metrics.
"""

from __future__ import annotations

import http.client
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urljoin, urlsplit

import requests
import urllib3

from producers.models import request_body
from worker.delivery.guarded_connections import DeadlineAdapter
from worker.delivery.http_route import Route
from worker.delivery.request_deadline import CURRENT_GUARD, Resolve, watchdog
from worker.delivery.resolver import bounded_resolver
from worker.errors import (
    DeliveryError,
    PermanentError,
    RateLimited,
    RedirectRefused,
    RetryableError,
)

log = logging.getLogger("snackvideo.scalev")

API_KEY_HEADER = "X-Scalev-Storefront-Api-Key"
EVENTS_PATH = "/v3/stores/{store_id}/public/analytics/snackvideo/events"
# The outcomes table exempts 408, 409, 425 and 429 from "permanent 4xx". 409 (a conflict, e.g. a
# concurrent write on Scalev's side) is retried with backoff like 408 and 425.
RETRYABLE_4XX = frozenset({408, 409, 425})
USER_AGENT = "snackvideo-dispatch/0.1"
#: A Location longer than this is cut before it is kept (it comes from the server).
LOCATION_MAX_CHARS = 2000
#: What an echoed storefront key is replaced with in anything kept from a response.
REDACTED = "[redacted]"
#: The most of a response body read (Scalev's error bodies are a few hundred bytes; a
#: dead-letter entry keeps SNACKVIDEO_DLQ_ERROR_MAX_CHARS of it).
RESPONSE_BODY_MAX_BYTES = 64 * 1024
# What a request can fail with once the watchdog shut its socket down, wherever it was:
# requests wraps most of it, the rest is listed so no cut request escapes as a crash.
_TRANSPORT_ERRORS = (
    requests.RequestException,
    urllib3.exceptions.HTTPError,
    http.client.HTTPException,
    OSError,
)


@dataclass(frozen=True)
class Delivered:
    """A 2xx answer."""

    status_code: int
    headers: dict[str, str] = field(default_factory=dict)


def events_url(base_url: str, store_id: str) -> str:
    return base_url.rstrip("/") + EVENTS_PATH.format(store_id=quote(store_id, safe=""))


def classify(status_code: int, body: str, headers: dict[str, str]) -> Delivered | DeliveryError:
    """Map one HTTP answer onto the README's outcomes table (3xx: never followed)."""
    if 200 <= status_code < 300:
        return Delivered(status_code, headers)
    message = f"Scalev answered {status_code}"
    if 300 <= status_code < 400:
        location = headers.get("location")
        return RedirectRefused(
            f"{message}; redirects are not followed",
            status_code=status_code,
            body=body,
            headers=headers,
            location=location[:LOCATION_MAX_CHARS] if location is not None else None,
        )
    if status_code == 429:
        return RateLimited(message, status_code=status_code, body=body, headers=headers)
    if status_code >= 500 or status_code in RETRYABLE_4XX:
        return RetryableError(message, status_code=status_code, body=body, headers=headers)
    return PermanentError(message, status_code=status_code, body=body, headers=headers)


def redact(text: str, secret: str) -> str:
    """A hostile server may echo the key it was sent (in a body, in a Location): what this
    project keeps from a response must never hold it."""
    return text.replace(secret, REDACTED) if secret and secret in text else text


def _read_environment_once(session: requests.Session, base_url: str) -> None:
    """What requests would read from the environment for each request, read once.

    With ``trust_env`` on, every request scans the whole environment for proxy variables
    (twice) and looks for a ~/.netrc: 100-150 µs of CPU per POST, a fifth of the
    client's, measured (bench/http_deadline.py). Every request here goes to one base
    URL, so its proxies (NO_PROXY honoured) and CA bundle are the same each time. A
    ~/.netrc is not wanted at all: it would add an Authorization header to the POST.
    """
    if not session.trust_env:
        return
    session.proxies.update(requests.utils.get_environ_proxies(base_url))
    ca_bundle = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
    if ca_bundle and session.verify is True:
        session.verify = ca_bundle
    session.trust_env = False


def read_body(response: urllib3.BaseHTTPResponse, limit: int) -> str:
    """At most ``limit`` bytes of a response's body (left unread by ``urlopen``), decoded,
    as text.

    Reading all of it would let a hostile server's endless body be bounded only by the
    request deadline, and held in memory meanwhile. urllib3 stops reading (and
    decompressing) at ``limit``; the charset is the one the server named (as requests
    reads it), else UTF-8 (requests' guessing from the content is slow on a large body
    and pointless on a cut one); undecodable bytes are replaced.
    """
    data = response.read(limit, decode_content=True)
    encoding = requests.utils.get_encoding_from_headers(response.headers) or "utf-8"
    try:
        return str(data.decode(encoding, errors="replace"))
    except LookupError:  # a charset Python does not know
        return str(data.decode("utf-8", errors="replace"))


def close_response(response: urllib3.BaseHTTPResponse) -> None:
    """What ``requests.Response.close`` does: a body read to its end has already given
    its connection back, kept alive; a cut one is closed, not drained, and its (closed)
    connection returned to the pool, which reconnects it when next used."""
    response.close()
    response.release_conn()


def _location_host(url: str, location: str | None) -> str:
    """The host a Location points to (a relative one: this host), for the log line."""
    if not location:
        return "-"
    try:
        return urlsplit(urljoin(url, location)).hostname or "-"
    except ValueError:  # not even a URL: nothing to name
        return "?"


class ScalevClient:
    """Posts events. Create one per worker process: the session keeps connections alive."""

    def __init__(
        self,
        base_url: str,
        *,
        connect_timeout_seconds: float,
        read_timeout_seconds: float,
        session: requests.Session | None = None,
        resolver: Resolve | None = None,
        body_max_bytes: int = RESPONSE_BODY_MAX_BYTES,
    ) -> None:
        self.base_url = base_url
        self.body_max_bytes = body_max_bytes
        self.timeout = urllib3.Timeout(connect=connect_timeout_seconds, read=read_timeout_seconds)
        # The whole request, name resolution to the last byte of the body.
        self.deadline_seconds = connect_timeout_seconds + read_timeout_seconds
        self.resolver: Resolve = resolver or bounded_resolver()
        self.session = session or requests.Session()
        self.session.headers["User-Agent"] = USER_AGENT
        _read_environment_once(self.session, base_url)
        adapter = DeadlineAdapter()
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        # urlopen(redirect=False): a 3xx is returned as it is, its body left unread.
        self.route = Route(self.session, base_url)

    def send(self, store_id: str, api_key: str, payload: dict[str, Any]) -> Delivered:
        """POST one event; return on 2xx, raise a ``DeliveryError`` subclass otherwise."""
        body = request_body(payload)  # the bytes SNACKVIDEO_MAX_PAYLOAD_BYTES measures
        path = EVENTS_PATH.format(store_id=quote(store_id, safe=""))
        started = time.perf_counter()
        guard = watchdog().arm(self.deadline_seconds, self.resolver)
        token = CURRENT_GUARD.set(guard)
        failure: BaseException | None = None
        try:
            response = self.route.post(
                path,
                body,
                {API_KEY_HEADER: api_key, "Content-Type": "application/json"},
                self.timeout,
            )
            try:  # the body is read here, bounded, under the same deadline
                text = read_body(response, self.body_max_bytes)
            finally:
                close_response(response)
        except _TRANSPORT_ERRORS as exc:
            failure = exc
        finally:
            CURRENT_GUARD.reset(token)
            cut = watchdog().disarm(guard)
        if failure is not None:
            # from None: what requests and urllib3 raise can quote the request, headers
            # included (InvalidHeader quotes the key), and Celery reports the whole chain:
            # task-failed and task-retried events, Flower, its state file. The project's
            # error names only the exception's type.
            raise self._transport_error(failure, cut, time.perf_counter() - started) from None
        # Lower-cased once here: header names are case-insensitive and the throttle reads them.
        # A header sent twice reads as one, its values joined with ", " (as requests did).
        headers = {name.lower(): response.headers[name] for name in response.headers}
        if 300 <= response.status < 400:
            url = events_url(self.base_url, store_id)
            headers = self._refuse_redirect(response.status, headers, url, api_key)
        outcome = classify(response.status, redact(text, api_key), headers)
        if isinstance(outcome, DeliveryError):
            raise outcome
        return outcome

    def _transport_error(self, exc: BaseException, cut: bool, seconds: float) -> RetryableError:
        if cut:
            message = (
                f"request to Scalev exceeded its deadline of {self.deadline_seconds:g}s "
                f"(cut after {seconds:.2f}s)"
            )
            # A server that answers this slowly holds a worker: worth a line of its own.
            log.warning("%s; retryable", message)
            return RetryableError(message)
        if isinstance(exc, requests.Timeout):
            return RetryableError(f"Scalev did not answer in time: {type(exc).__name__}")
        if isinstance(exc, requests.ConnectionError):
            return RetryableError(f"could not reach Scalev: {type(exc).__name__}")
        return RetryableError(f"request to Scalev failed: {type(exc).__name__}")

    def _refuse_redirect(
        self, status_code: int, headers: dict[str, str], url: str, api_key: str
    ) -> dict[str, str]:
        location = headers.get("location")
        if location is not None:
            location = redact(location, api_key)
            headers = {**headers, "location": location}
        log.warning(
            "redirect refused: status=%s location_host=%s (not followed: the event and its "
            "key stay here; the job is dead-lettered)",
            status_code,
            _location_host(url, location),
        )
        return headers

    def close(self) -> None:
        self.route.close()
        self.session.close()
