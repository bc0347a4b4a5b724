"""``worker.delivery.scalev``: the response classification (pure) and the HTTP client (real
sandbox)."""

from __future__ import annotations

import json
import traceback
from collections.abc import Callable
from typing import Any

import pytest
import requests

from tests.conftest import STORE, STORE_KEY, Sandbox, free_port
from tests.hostile_http import HostileServer
from worker.delivery.scalev import (
    API_KEY_HEADER,
    USER_AGENT,
    Delivered,
    ScalevClient,
    classify,
    events_url,
)
from worker.errors import DeliveryError, PermanentError, RateLimited, RetryableError

# -- classify ------------------------------------------------------------------------


@pytest.mark.parametrize("status", [200, 201, 202, 204, 299])
def test_2xx_is_delivered(status: int) -> None:
    outcome = classify(status, "", {"x-ratelimit-remaining": "3"})
    assert outcome == Delivered(status, {"x-ratelimit-remaining": "3"})


@pytest.mark.parametrize("status", [400, 401, 403, 404, 422, 410, 418])
def test_other_4xx_is_permanent(status: int) -> None:
    outcome = classify(status, '{"error":"x"}', {})
    assert type(outcome) is PermanentError
    assert outcome.status_code == status
    assert outcome.body == '{"error":"x"}'
    assert str(status) in str(outcome)


@pytest.mark.parametrize("status", [408, 409, 425, 500, 502, 503, 504, 599])
def test_408_409_425_and_5xx_are_retryable(status: int) -> None:
    outcome = classify(status, "busy", {"retry-after": "1"})
    assert type(outcome) is RetryableError
    assert outcome.status_code == status
    assert outcome.body == "busy"
    assert outcome.headers == {"retry-after": "1"}


def test_429_is_rate_limited_with_its_headers() -> None:
    headers = {"x-ratelimit-reset": "2", "retry-after": "2"}
    outcome = classify(429, "Too Many Requests", headers)
    assert type(outcome) is RateLimited
    assert outcome.status_code == 429
    assert outcome.headers == headers
    assert outcome.body == "Too Many Requests"


def test_every_non_2xx_is_a_delivery_error() -> None:
    for status in (400, 401, 403, 404, 408, 409, 422, 425, 429, 500, 503):
        assert isinstance(classify(status, "", {}), DeliveryError)


def test_events_url_quotes_the_store_and_ignores_a_trailing_slash() -> None:
    assert events_url("http://h:1/", "s 1") == (
        "http://h:1/v3/stores/s%201/public/analytics/snackvideo/events"
    )


# -- the client against the sandbox -----------------------------------------------------


def payload(click_id: str = "clk-scalev-1") -> dict[str, Any]:
    # Extra top-level keys, a URL pydantic would normalise and non-ASCII text: all must
    # reach Scalev exactly as given, in the given key order.
    return {
        "events": [{"event_name": "purchase", "properties": {"currency": "IDR", "value": 1}}],
        "click_id": click_id,
        "event_source_url": "https://shop.example",
        "custom_note": "kopi susu ☕ — 50% off",
        "z_first": {"b": 1, "a": [1.5, None, True]},
    }


def client_for(base_url: str, *, read_timeout: float = 5.0) -> ScalevClient:
    return ScalevClient(base_url, connect_timeout_seconds=2.0, read_timeout_seconds=read_timeout)


def test_delivers_with_the_key_header_and_the_payload_unchanged(sandbox: Sandbox) -> None:
    client = client_for(sandbox.base_url)
    sent = payload()
    result = client.send(STORE, STORE_KEY, sent)
    client.close()

    assert result.status_code == 204
    (event,) = sandbox.events(click_id=sent["click_id"])
    assert event["store_id"] == STORE
    assert event["body"] == sent
    assert list(event["body"]) == list(sent)  # same key order


def test_the_bytes_on_the_wire() -> None:
    # What a server reads: the key and the content type, requests' default headers (the
    # client posts through urllib3 with the session's headers), the compact JSON body.
    server = HostileServer().start()
    client = client_for(server.url)
    sent = payload()
    try:
        assert client.send(STORE, STORE_KEY, sent).status_code == 204
    finally:
        client.close()
        server.stop()
    (request,) = server.requests()
    assert request.method == "POST"
    assert request.path == f"/v3/stores/{STORE}/public/analytics/snackvideo/events"
    assert request.header(API_KEY_HEADER) == STORE_KEY
    assert request.header("Content-Type") == "application/json"
    assert request.header("User-Agent") == USER_AGENT
    assert request.header("Accept") == "*/*"
    assert request.header("Accept-Encoding") == requests.utils.DEFAULT_ACCEPT_ENCODING
    assert request.header("Content-Length") == str(len(request.body))
    assert request.body == json.dumps(sent, separators=(",", ":"), ensure_ascii=False).encode()
    assert 'https://shop.example"' in request.body.decode()  # no trailing slash added


def test_a_wrong_key_is_refused_by_the_sandbox(sandbox: Sandbox) -> None:
    # Proves the header above is what the sandbox checks: a wrong key gets 403.
    client = client_for(sandbox.base_url)
    with pytest.raises(PermanentError) as info:
        client.send(STORE, "pk_wrong", payload())
    client.close()
    assert info.value.status_code == 403
    assert "invalid_api_key" in info.value.body


def test_an_unknown_store_is_a_permanent_404_with_the_body(sandbox: Sandbox) -> None:
    client = client_for(sandbox.base_url)
    with pytest.raises(PermanentError) as info:
        client.send("store_nobody", STORE_KEY, payload())
    client.close()
    assert info.value.status_code == 404
    assert "store_not_found" in info.value.body


def test_a_503_is_retryable(start_sandbox: Callable[..., Sandbox]) -> None:
    sandbox = start_sandbox("--fail-first", "1")
    client = client_for(sandbox.base_url)
    with pytest.raises(RetryableError) as info:
        client.send(STORE, STORE_KEY, payload())
    assert info.value.status_code == 503
    assert client.send(STORE, STORE_KEY, payload()).status_code == 204
    client.close()


def test_a_429_is_rate_limited_with_lower_cased_headers(
    start_sandbox: Callable[..., Sandbox],
) -> None:
    sandbox = start_sandbox("--rate-limit", "1/60")
    client = client_for(sandbox.base_url)
    first = client.send(STORE, STORE_KEY, payload("clk-a"))
    assert first.headers["x-ratelimit-limit"] == "1"
    with pytest.raises(RateLimited) as info:
        client.send(STORE, STORE_KEY, payload("clk-b"))
    client.close()
    assert info.value.status_code == 429
    assert "x-ratelimit-reset" in info.value.headers
    assert "retry-after" in info.value.headers


def test_a_read_timeout_is_retryable(start_sandbox: Callable[..., Sandbox]) -> None:
    sandbox = start_sandbox("--latency-ms", "1000")
    client = client_for(sandbox.base_url, read_timeout=0.1)
    with pytest.raises(RetryableError) as info:
        client.send(STORE, STORE_KEY, payload())
    client.close()
    assert info.value.status_code is None
    assert str(info.value) == "Scalev did not answer in time: ReadTimeout"
    # requests' exception is not chained: Celery would report it, and its text can
    # quote the request (worker.delivery.scalev).
    assert info.value.__cause__ is None and info.value.__context__ is None


def test_connection_refused_is_retryable() -> None:
    closed = free_port()  # bound, then released: nothing listens there
    client = client_for(f"http://127.0.0.1:{closed}")
    with pytest.raises(RetryableError) as info:
        client.send(STORE, STORE_KEY, payload())
    client.close()
    assert info.value.status_code is None
    assert str(info.value) == "could not reach Scalev: ConnectionError"
    assert info.value.__cause__ is None and info.value.__context__ is None


def test_errors_never_carry_the_key(sandbox: Sandbox) -> None:
    client = client_for(sandbox.base_url)
    with pytest.raises(PermanentError) as info:
        client.send("store_nobody", STORE_KEY, payload())
    client.close()
    exc = info.value
    assert STORE_KEY not in str(exc)
    assert STORE_KEY not in exc.body
    assert STORE_KEY not in repr(exc.headers)


def test_a_transport_error_chains_nothing_that_could_quote_the_key() -> None:
    # requests' InvalidHeader quotes the whole header value; chained under the project's
    # error it reached Celery's task-failed traceback, Flower and Flower's state file.
    # Settings refuse such a key at start now; the client still chains nothing.
    server = HostileServer().start()
    client = client_for(server.url)
    bad_key = f"{STORE_KEY}\r\nX-Injected: 1"
    try:
        with pytest.raises(RetryableError) as info:
            client.send(STORE, bad_key, payload())
    finally:
        client.close()
        server.stop()
    error = info.value
    assert str(error) == "request to Scalev failed: InvalidHeader"
    assert error.__cause__ is None and error.__context__ is None
    rendered = "".join(traceback.format_exception(error))
    assert STORE_KEY not in rendered and "InvalidHeader" in rendered
    assert server.requests() == []  # refused before anything was sent
