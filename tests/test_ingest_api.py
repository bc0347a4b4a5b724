"""The ingest API in-process (Starlette's TestClient) against a real redis-server."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from starlette.testclient import TestClient

from ingest.app import create_app
from producers.keys import DELIVERY_QUEUE
from tests.conftest import STORE, RedisServer, wait_until
from tests.ingest_helpers import (
    AUTH,
    LIMITED_AUTH,
    LIMITED_SECRET,
    OTHER_STORE,
    SECRET,
    ingest_settings,
)
from tests.queue_helpers import event, queued

EVENTS = f"/v1/stores/{STORE}/events"
BATCH = f"/v1/stores/{STORE}/events/batch"


@pytest.fixture
def make_client(redis_url: str) -> Iterator[Callable[..., TestClient]]:
    clients: list[TestClient] = []

    def make(url: str = redis_url, **variables: str) -> TestClient:
        client = TestClient(create_app(ingest_settings(url, **variables)))
        client.__enter__()  # runs the lifespan: the producer is built in the app's loop
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.__exit__(None, None, None)


@pytest.fixture
def client(make_client: Callable[..., TestClient]) -> TestClient:
    return make_client()


def error_of(response: Any) -> dict[str, Any]:
    assert response.headers["content-type"] == "application/json"
    body: dict[str, Any] = response.json()
    assert set(body) <= {"error", "message", "problems"}
    return body


def test_an_event_is_in_redis_when_the_answer_is_202(
    client: TestClient, redis_client: redis.Redis
) -> None:
    body = event("clk-1", event_source_url="https://shop.example/a")
    response = client.post(EVENTS, json=body, headers=AUTH)
    assert response.status_code == 202
    job_id = response.json()["job_id"]
    assert response.json() == {"job_id": job_id, "repeat": False}
    [message] = queued(redis_client)
    assert message.kwargs["job_id"] == job_id
    assert message.kwargs["store_id"] == STORE
    assert message.kwargs["payload"] == body


def test_a_repeated_idempotency_key_returns_the_first_job_and_says_so(
    client: TestClient, redis_client: redis.Redis
) -> None:
    headers = {**AUTH, "Idempotency-Key": "order-1001-purchase"}
    first = client.post(EVENTS, json=event("clk-1"), headers=headers)
    again = client.post(EVENTS, json=event("clk-1-retry"), headers=headers)
    assert first.status_code == again.status_code == 202
    assert again.json() == {"job_id": first.json()["job_id"], "repeat": True}
    assert again.headers["Idempotent-Replayed"] == "true"
    assert "Idempotent-Replayed" not in first.headers
    assert [m.kwargs["payload"]["click_id"] for m in queued(redis_client)] == ["clk-1"]
    # The same key for another store is another event.
    other = client.post(f"/v1/stores/{OTHER_STORE}/events", json=event("clk-2"), headers=headers)
    assert other.json()["repeat"] is False
    assert redis_client.llen(DELIVERY_QUEUE) == 2


def test_a_batch_is_queued_whole(client: TestClient, redis_client: redis.Redis) -> None:
    bodies = [event(f"clk-{i}") for i in range(5)]
    response = client.post(BATCH, json=bodies, headers=AUTH)
    assert response.status_code == 202
    job_ids = response.json()["job_ids"]
    assert response.json()["repeat"] == [False] * 5
    assert [m.kwargs["job_id"] for m in queued(redis_client)] == job_ids
    assert [m.kwargs["payload"] for m in queued(redis_client)] == bodies


def test_a_batch_with_a_key_is_idempotent_per_body(
    client: TestClient, redis_client: redis.Redis
) -> None:
    headers = {**AUTH, "Idempotency-Key": "import-7"}
    bodies = [event(f"clk-{i}") for i in range(3)]
    first = client.post(BATCH, json=bodies, headers=headers)
    again = client.post(BATCH, json=bodies, headers=headers)
    assert again.json() == {"job_ids": first.json()["job_ids"], "repeat": [True] * 3}
    assert redis_client.llen(DELIVERY_QUEUE) == 3


def test_one_bad_body_in_a_batch_queues_nothing_and_names_its_index(
    client: TestClient, redis_client: redis.Redis
) -> None:
    bad = {"click_id": 7, "events": [{"event_name": "purchase", "properties": {"value": True}}]}
    response = client.post(BATCH, json=[event("ok-0"), bad, event("ok-2"), []], headers=AUTH)
    assert response.status_code == 422
    problems = error_of(response)["problems"]
    assert "body 1: click_id: must be a string, not int" in error_of(response)["message"]
    assert {(p["index"], p["field"]) for p in problems} == {
        (1, "click_id"),
        (1, "events.0.properties.value"),
        (3, "payload"),
    }
    assert redis_client.llen(DELIVERY_QUEUE) == 0


@pytest.mark.parametrize(
    "bodies, why",
    [({"click_id": "x"}, "non-empty JSON array"), ([], "non-empty JSON array")],
    ids=["object", "empty"],
)
def test_a_batch_must_be_a_non_empty_array(client: TestClient, bodies: Any, why: str) -> None:
    response = client.post(BATCH, json=bodies, headers=AUTH)
    assert response.status_code == 422
    assert why in error_of(response)["problems"][0]["message"]


def test_a_batch_over_its_bound_is_refused(
    make_client: Callable[..., TestClient], redis_client: redis.Redis
) -> None:
    client = make_client(SNACKVIDEO_INGEST_MAX_BATCH="3")
    response = client.post(BATCH, json=[event(f"c{i}") for i in range(4)], headers=AUTH)
    assert response.status_code == 422
    assert "SNACKVIDEO_INGEST_MAX_BATCH (3)" in error_of(response)["problems"][0]["message"]
    assert client.post(BATCH, json=[event("a")] * 3, headers=AUTH).status_code == 202


def test_invalid_event_names_each_field(client: TestClient, redis_client: redis.Redis) -> None:
    body = {"events": [{"event_name": 5, "properties": {"value": "150000"}}], "variants": None}
    response = client.post(EVENTS, json=body, headers=AUTH)
    assert response.status_code == 422
    error = error_of(response)
    assert error["error"] == "invalid_event"
    assert {p["field"] for p in error["problems"]} == {
        "click_id",
        "events.0.event_name",
        "events.0.properties.value",
        "variants",
    }
    assert redis_client.llen(DELIVERY_QUEUE) == 0


def test_an_invalid_idempotency_key_or_store_is_a_422(client: TestClient) -> None:
    long_key = {**AUTH, "Idempotency-Key": "k" * 1001}
    response = client.post(EVENTS, json=event("a"), headers=long_key)
    assert response.status_code == 422
    assert error_of(response)["problems"][0]["field"] == "Idempotency-Key"
    for key in ("", "k" * 997):  # a batch's keys are <key>:<index>, up to :999
        response = client.post(BATCH, json=[event("a")], headers={**AUTH, "Idempotency-Key": key})
        assert response.status_code == 422
        assert error_of(response)["problems"][0]["field"] == "Idempotency-Key"
    response = client.post("/v1/stores/..%20x/events", json=event("a"), headers=AUTH)
    assert response.status_code == 422
    assert error_of(response)["problems"][0]["field"] == "store_id"


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong-secret-0000000000"}, {"Authorization": SECRET},
     {"Authorization": f"Basic {SECRET}"}, {"Authorization": "Bearer "}],
    ids=["missing", "unknown", "no-scheme", "basic", "empty"],
)  # fmt: skip
def test_no_valid_token_is_a_401_asking_for_bearer(
    client: TestClient, redis_client: redis.Redis, headers: dict[str, str]
) -> None:
    for path, body in ((EVENTS, event("a")), (BATCH, [event("a")])):
        response = client.post(path, json=body, headers=headers)
        assert response.status_code == 401
        assert response.headers["WWW-Authenticate"] == "Bearer"
        assert error_of(response)["error"] == "unauthorized"
    assert redis_client.llen(DELIVERY_QUEUE) == 0


def test_a_token_limited_to_a_store_is_refused_on_another(
    client: TestClient, redis_client: redis.Redis
) -> None:
    refused = client.post(f"/v1/stores/{OTHER_STORE}/events", json=event("a"), headers=LIMITED_AUTH)
    assert refused.status_code == 403
    assert error_of(refused)["error"] == "forbidden"
    assert LIMITED_SECRET not in refused.text
    assert client.post(EVENTS, json=event("a"), headers=LIMITED_AUTH).status_code == 202
    assert redis_client.llen(DELIVERY_QUEUE) == 1


def test_a_body_that_is_not_json_is_refused(client: TestClient) -> None:
    as_text = {**AUTH, "Content-Type": "text/plain"}
    response = client.post(EVENTS, content=b'{"click_id": "a"}', headers=as_text)
    assert (response.status_code, error_of(response)["error"]) == (415, "unsupported_media_type")
    response = client.post(EVENTS, content=b"{}", headers={**AUTH, "Content-Type": ""})
    assert response.status_code == 415
    as_json = {**AUTH, "Content-Type": "application/json; charset=utf-8"}
    for malformed in (b'{"click_id": ', b"\xff\xfe", b"[" * 50_000, b"1" * 5_000):
        response = client.post(EVENTS, content=malformed, headers=as_json)
        assert (response.status_code, error_of(response)["error"]) == (400, "malformed_json")


def test_a_body_over_the_bound_is_a_413(
    make_client: Callable[..., TestClient], redis_client: redis.Redis
) -> None:
    client = make_client(SNACKVIDEO_MAX_PAYLOAD_BYTES="2048")
    big = event("big", padding="x" * 3000)
    response = client.post(EVENTS, json=big, headers=AUTH)
    assert response.status_code == 413
    assert "SNACKVIDEO_MAX_PAYLOAD_BYTES" in error_of(response)["message"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it streams in
        yield b'{"click_id": "big", "padding": "'
        for _ in range(10):
            yield b"x" * 1000
        yield b'"}'

    response = client.post(
        EVENTS, content=chunks(), headers={**AUTH, "Content-Type": "application/json"}
    )
    assert response.status_code == 413
    assert redis_client.llen(DELIVERY_QUEUE) == 0


def test_unknown_routes_and_methods_answer_json(client: TestClient) -> None:
    response = client.get("/nowhere")
    assert (response.status_code, error_of(response)["error"]) == (404, "not_found")
    response = client.get(EVENTS, headers=AUTH)
    assert (response.status_code, error_of(response)["error"]) == (405, "method_not_allowed")
    assert response.headers["Allow"] == "POST"
    assert client.get("/healthz/").status_code == 404


def test_health_and_503_follow_redis(
    make_client: Callable[..., TestClient], own_redis: Callable[..., RedisServer]
) -> None:
    server = own_redis()
    client = make_client(server.url, SNACKVIDEO_ENQUEUE_TIMEOUT_SECONDS="0.5")
    assert client.get("/healthz").json() == {"status": "ok"}
    server.stop()
    health = client.get("/healthz")
    assert health.status_code == 503
    assert health.headers["Retry-After"].isdigit()
    headers = {**AUTH, "Idempotency-Key": "order-9"}
    response = client.post(EVENTS, json=event("down"), headers=headers)
    assert response.status_code == 503
    assert response.headers["Retry-After"].isdigit()
    assert "Idempotency-Key" in error_of(response)["message"]
    response = client.post(BATCH, json=[event("down")], headers=AUTH)
    assert response.status_code == 503
    server.start()
    # As a client does: retry with the same key until accepted (a loaded machine may need
    # more than one try within the 0.5 s bound); the key keeps it one job.
    wait_until(
        lambda: client.post(EVENTS, json=event("down"), headers=headers).status_code == 202,
        timeout=30,
        what="the retried event to be accepted",
    )
    assert client.get("/healthz").status_code == 200
    assert client.post(EVENTS, json=event("down"), headers=headers).json()["repeat"] is True
    with redis.Redis.from_url(server.url) as direct:
        assert [m.kwargs["payload"]["click_id"] for m in queued(direct)] == ["down"]


def test_no_secret_reaches_redis(client: TestClient, redis_client: redis.Redis) -> None:
    client.post(EVENTS, json=event("a"), headers={**AUTH, "Idempotency-Key": "k1"})
    client.post(BATCH, json=[event("b")], headers=LIMITED_AUTH)
    client.post(EVENTS, json=event("c"), headers={"Authorization": "Bearer not-a-token"})
    dump = b"".join(
        key + (redis_client.dump(key) or b"") for key in redis_client.scan_iter(match="*")
    )
    assert dump and SECRET.encode() not in dump and LIMITED_SECRET.encode() not in dump


def test_the_openapi_document_describes_the_service(client: TestClient) -> None:
    document = client.get("/openapi.json").json()
    assert document["openapi"].startswith("3.1")
    assert set(document["paths"]) == {
        "/v1/stores/{store_id}/events",
        "/v1/stores/{store_id}/events/batch",
        "/healthz",
    }
    assert document["components"]["schemas"]["EventRequest"]["required"] == [
        "click_id",
        "events",
    ]
