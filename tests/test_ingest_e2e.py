"""The ingest service as a client sees it: ``snackvideo ingest`` (two uvicorn workers), a
real worker, the sandbox as Scalev, a Redis the test stops and restarts."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
from collections.abc import Callable
from typing import Any

import pytest
import requests

from tests.conftest import (
    PYTHON,
    ROOT,
    STORE,
    IngestProcess,
    RedisServer,
    Sandbox,
    Worker,
    wait_until,
    worker_env,
)
from tests.ingest_helpers import (
    AUTH,
    LIMITED_AUTH,
    LIMITED_SECRET,
    OTHER_STORE,
    SECRET,
    TOKENS,
)
from tests.queue_helpers import event

pytestmark = pytest.mark.integration


def post(service: IngestProcess, body: Any, *, key: str | None = None, auth: Any = None) -> Any:
    """POST one event as a backend in any language would: JSON over HTTP, a bearer token."""
    headers = dict(auth or AUTH)
    if key is not None:
        headers["Idempotency-Key"] = key
    return requests.post(
        f"{service.url}/v1/stores/{STORE}/events", json=body, headers=headers, timeout=30
    )


def received(sandbox: Sandbox, click_id: str) -> int:
    return len(sandbox.events(click_id=click_id))


def test_curl_post_reaches_the_sandbox_once_per_key_and_survives_a_redis_restart(
    own_redis: Callable[..., RedisServer],
    sandbox: Sandbox,
    start_worker: Callable[..., Worker],
    start_ingest: Callable[..., IngestProcess],
) -> None:
    server = own_redis()
    start_worker(worker_env(server.url, sandbox.base_url))
    service = start_ingest(
        server.url,
        workers=2,
        SNACKVIDEO_INGEST_TOKENS=TOKENS,
        SNACKVIDEO_ENQUEUE_TIMEOUT_SECONDS="1",
    )

    # curl itself, when the machine has it: the request a PHP or Go backend sends.
    body = json.dumps(event("e2e-curl"))
    if shutil.which("curl"):
        done = subprocess.run(
            ["curl", "-sS", "-X", "POST", f"{service.url}/v1/stores/{STORE}/events",
             "-H", f"Authorization: Bearer {SECRET}", "-H", "Content-Type: application/json",
             "-H", "Idempotency-Key: order-1-purchase", "-d", body, "-w", "\n%{http_code}"],
            capture_output=True, text=True, timeout=30, check=True,
        )  # fmt: skip
        answer, status = done.stdout.rsplit("\n", 1)
        first = {"status": int(status), "json": json.loads(answer)}
    else:
        response = post(service, json.loads(body), key="order-1-purchase")
        first = {"status": response.status_code, "json": response.json()}
    assert first["status"] == 202
    wait_until(lambda: received(sandbox, "e2e-curl") == 1, timeout=60, what="the first event")

    # The client retries with the same key: the first job's id, and nothing queued again.
    again = post(service, event("e2e-curl"), key="order-1-purchase")
    assert again.status_code == 202
    assert again.json() == {"job_id": first["json"]["job_id"], "repeat": True}
    # An event sent after the repeat arrives; by then a second copy would have too.
    assert post(service, event("e2e-after-repeat")).status_code == 202
    wait_until(lambda: received(sandbox, "e2e-after-repeat") == 1, timeout=60, what="the next")
    assert received(sandbox, "e2e-curl") == 1

    # Redis stopped: 503 with Retry-After, and health says so.
    server.stop()
    refused = post(service, event("e2e-outage"), key="order-2-purchase")
    assert refused.status_code == 503
    assert int(refused.headers["Retry-After"]) >= 1
    assert requests.get(f"{service.url}/healthz", timeout=30).status_code == 503

    # Redis back: the client's retry with the same key is accepted and delivered.
    server.start()
    wait_until(
        lambda: requests.get(f"{service.url}/healthz", timeout=30).status_code == 200,
        timeout=30,
        what="health to recover",
    )
    # Retried with the same key until accepted, as a client does: never two jobs.
    wait_until(
        lambda: post(service, event("e2e-outage"), key="order-2-purchase").status_code == 202,
        timeout=60,
        what="the retried event to be accepted",
    )
    wait_until(lambda: received(sandbox, "e2e-outage") == 1, timeout=90, what="the retried event")
    assert post(service, event("e2e-after-outage")).status_code == 202
    wait_until(lambda: received(sandbox, "e2e-after-outage") == 1, timeout=60, what="the next")
    assert received(sandbox, "e2e-outage") == 1

    log = service.log()
    assert "503 for token ci" in log
    assert SECRET not in log and LIMITED_SECRET not in log


def test_a_token_limited_to_one_store_is_refused_on_another(
    redis_url: str, start_ingest: Callable[..., IngestProcess]
) -> None:
    service = start_ingest(redis_url, SNACKVIDEO_INGEST_TOKENS=TOKENS)
    other = f"{service.url}/v1/stores/{OTHER_STORE}/events"
    refused = requests.post(other, json=event("x"), headers=LIMITED_AUTH, timeout=30)
    assert refused.status_code == 403
    assert refused.json()["error"] == "forbidden"
    assert post(service, event("x"), auth=LIMITED_AUTH).status_code == 202
    assert requests.post(other, json=event("x"), headers=AUTH, timeout=30).status_code == 202


def test_an_oversized_body_is_refused_before_it_is_sent(
    redis_url: str, start_ingest: Callable[..., IngestProcess]
) -> None:
    service = start_ingest(redis_url, SNACKVIDEO_INGEST_TOKENS=TOKENS)
    # Headers only: the 413 must come while the 100 MB body has not been sent at all.
    head = (
        f"POST /v1/stores/{STORE}/events HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Authorization: Bearer {SECRET}\r\nContent-Type: application/json\r\n"
        "Content-Length: 100000000\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", service.port), timeout=30) as sock:
        sock.sendall(head.encode())
        answer = b""
        while b"\r\n\r\n" not in answer:
            chunk = sock.recv(65536)
            assert chunk, "the service closed the connection without an answer"
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 413 ")


def test_invalid_settings_stop_it_in_one_line() -> None:
    done = subprocess.run(
        [PYTHON, "-m", "worker.cli", "ingest"],
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", "SNACKVIDEO_INGEST_TOKENS": '{"ci": "short"}'},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "error: invalid configuration: SNACKVIDEO_INGEST_TOKENS: token 1 (in order): its "
        "secret must be 16 to 1000 visible ASCII characters (no spaces)"
    ]
