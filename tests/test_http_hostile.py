"""The Scalev client and real workers against hostile servers (``tests/hostile_http.py``):
redirects to another host, answers trickled a byte at a time, answers that never come,
a name that takes forever to resolve; plus the time limits that back the request deadline.

Timing bounds asserted here are the ones the request deadline promises: a request is cut
within connect + read timeout + 1 s. Everything else waits for outcomes, not for clocks.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import requests
from prometheus_client.parser import text_string_to_metric_families

from harness.events import event
from producers import Producer
from tests.conftest import (
    PYTHON,
    ROOT,
    STORE,
    STORE_KEY,
    Worker,
    free_port,
    wait_until,
    worker_env,
)
from tests.hostile_http import (
    Hold,
    HostileServer,
    Reply,
    Seen,
    SlowRelay,
    Trickle,
    in_order,
    redirect,
    tls_context,
)
from worker.deadletter.store import DeadLetter, DeadLetterStore
from worker.delivery.request_deadline import Watchdog, watchdog
from worker.delivery.resolver import BoundedResolver, ResolveTimeout
from worker.delivery.scalev import REDACTED, ScalevClient
from worker.errors import RedirectRefused, RetryableError
from worker.keys import SCHEDULED
from worker.settings import Settings

REDIRECTS = (301, 302, 303, 307, 308)
#: Short timeouts for the deadline tests: a request is cut at 3 s, and must be by 4 s.
CONNECT_S, READ_S = 1.0, 2.0
CUT_BOUND_S = CONNECT_S + READ_S + 1.0
SNACKVIDEO = str(Path(PYTHON).parent / "snackvideo")


@pytest.fixture
def hostile() -> Iterator[Callable[..., HostileServer]]:
    started: list[HostileServer] = []

    def start(host: str = "127.0.0.1", respond: Any = None, tls: Any = None) -> HostileServer:
        server = HostileServer(host, respond, tls).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def click_of(seen: Seen) -> str:
    return str(json.loads(seen.body or b"{}").get("click_id", ""))


def dead_letters(client: redis.Redis) -> list[DeadLetter]:
    return list(DeadLetterStore(client).iter_entries())


def delivered_clicks(server: HostileServer, answered: Callable[[Seen], bool]) -> list[str]:
    return [click_of(seen) for seen in server.requests() if answered(seen)]


def scrape(port: int) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    response = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10)
    response.raise_for_status()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


# -- redirects: the client alone ------------------------------------------------------------


@pytest.mark.parametrize("status", REDIRECTS)
def test_a_redirect_is_refused_and_the_other_host_sees_nothing(
    hostile: Callable[..., HostileServer], status: int
) -> None:
    elsewhere = hostile("127.0.0.2")
    # The redirecting server echoes the key it was sent: nothing kept may hold it.
    scalev = hostile(
        respond=lambda seen: redirect(
            status,
            f"{elsewhere.url}/collect?k={seen.header('X-Scalev-Storefront-Api-Key')}",
            body=f"moved, key {seen.header('X-Scalev-Storefront-Api-Key')}".encode(),
        )
    )
    client = ScalevClient(scalev.url, connect_timeout_seconds=2, read_timeout_seconds=5)
    with pytest.raises(RedirectRefused) as info:
        client.send(STORE, STORE_KEY, event(f"clk-{status}"))
    client.close()

    error = info.value
    assert error.status_code == status
    assert error.location == f"{elsewhere.url}/collect?k={REDACTED}"
    assert STORE_KEY not in error.body and REDACTED in error.body
    assert STORE_KEY not in str(error)
    assert len(scalev.requests()) == 1
    assert scalev.requests()[0].header("X-Scalev-Storefront-Api-Key") == STORE_KEY
    assert elsewhere.requests() == []


# -- redirects: a real worker --------------------------------------------------------------


@pytest.mark.integration
def test_a_worker_dead_letters_every_redirect_with_its_location(
    hostile: Callable[..., HostileServer],
    start_worker: Callable[..., Worker],
    redis_url: str,
    redis_client: redis.Redis,
    tmp_path: Path,
) -> None:
    elsewhere = hostile("127.0.0.2")

    def respond(seen: Seen) -> Reply:
        status = int(click_of(seen).rsplit("-", 1)[1])
        key = seen.header("X-Scalev-Storefront-Api-Key")
        return redirect(status, f"{elsewhere.url}/collect/{status}?k={key}")

    scalev = hostile(respond=respond)
    metrics_port = free_port()
    env = worker_env(
        redis_url,
        scalev.url,
        SNACKVIDEO_METRICS_PORT=str(metrics_port),
        PROMETHEUS_MULTIPROC_DIR=str(tmp_path / "metrics"),
    )
    worker = start_worker(env, concurrency=2)
    producer = Producer(redis_url)
    job_ids = {status: producer.enqueue(STORE, event(f"redir-{status}")) for status in REDIRECTS}

    entries = wait_until(
        lambda: (found := dead_letters(redis_client)) and len(found) == len(REDIRECTS) and found,
        timeout=60,
        what="every redirected job in the dead-letter queue",
    )

    by_job = {entry.job_id: entry for entry in entries}
    for status, job_id in job_ids.items():
        entry = by_job[job_id]
        assert entry.reason == f"http_{status}"
        assert entry.status_code == status
        assert entry.attempts == 1
        assert entry.location == f"{elsewhere.url}/collect/{status}?k={REDACTED}"
    # The other host never saw a request, so it never saw the key.
    assert elsewhere.requests() == []
    assert all(STORE_KEY not in seen.text() for seen in elsewhere.requests())
    assert len(scalev.requests()) == len(REDIRECTS)  # one POST each, never repeated
    log = worker.log()
    assert "outcome=delivered" not in log
    for status in REDIRECTS:
        assert f"redirect refused: status={status} location_host=127.0.0.2" in log
    assert STORE_KEY not in log
    # Nothing waits for a retry, and no 3xx reason is in the default redrive list.
    assert redis_client.zcard(SCHEDULED) == 0
    assert not {f"http_{status}" for status in REDIRECTS} & set(Settings().redrive_reasons)
    samples = scrape(metrics_port)
    for status in REDIRECTS:
        labels = frozenset({("status", str(status))})
        assert samples[("snackvideo_redirects_refused_total", labels)] == 1
        dead = frozenset({("reason", f"http_{status}")})
        assert samples[("snackvideo_dead_letters_total", dead)] == 1
    # What an operator sees: the Location in `dlq show`, and in its --json.
    any_entry = by_job[job_ids[308]]
    cli_env = {k: v for k, v in os.environ.items() if not k.startswith(("SNACKVIDEO_", "SCALEV_"))}
    cli_env["REDIS_URL"] = redis_url
    shown = subprocess.run(
        [SNACKVIDEO, "dlq", "show", any_entry.id],
        capture_output=True, text=True, env=cli_env, cwd=ROOT, timeout=60,
    )  # fmt: skip
    assert shown.returncode == 0, shown.stderr
    assert f"location:          {any_entry.location}" in shown.stdout
    as_json = subprocess.run(
        [SNACKVIDEO, "dlq", "show", any_entry.id, "--json"],
        capture_output=True, text=True, env=cli_env, cwd=ROOT, timeout=60,
    )  # fmt: skip
    assert json.loads(as_json.stdout)["location"] == any_entry.location
    assert all(STORE_KEY not in text for text in (shown.stdout, as_json.stdout))


def test_an_entry_written_before_locations_were_kept_still_loads() -> None:
    old = {
        "job_id": "j1", "store_id": STORE, "payload": event("c1"), "reason": "http_404",
        "status_code": 404, "error": "gone", "attempts": 1, "enqueued_at": 1.0,
        "dead_lettered_at": 2.0, "replay_count": 0, "id": "j1-r0",
    }  # fmt: skip
    entry = DeadLetter.from_json(json.dumps(old))
    assert entry.location is None
    assert "location" not in entry.to_dict()  # only a redirect's entry has one
    assert DeadLetter.from_json(entry.to_json()) == entry
    moved = DeadLetter.from_json(json.dumps({**old, "location": "https://elsewhere/x"}))
    assert moved.to_dict()["location"] == "https://elsewhere/x"
    assert DeadLetter.from_json(moved.to_json()) == moved


# -- plain http to a remote host -------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8099",
        "http://127.9.8.7",
        "http://localhost:8099/",
        "http://[::1]:8099",
        "https://api.scalev.com",
        "https://10.0.0.5",
    ],
)
def test_https_and_loopback_http_are_accepted(url: str) -> None:
    assert Settings.from_env({"SCALEV_API_BASE_URL": url}).scalev_api_base_url == url.rstrip("/")


@pytest.mark.parametrize("url", ["http://api.scalev.com", "http://sandbox:8099", "http://10.0.0.5"])
def test_remote_plain_http_is_refused_naming_the_variable(url: str) -> None:
    with pytest.raises(ValueError) as info:
        Settings.from_env({"SCALEV_API_BASE_URL": url})
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("invalid configuration: SCALEV_API_BASE_URL:")
    assert "SNACKVIDEO_ALLOW_INSECURE_HTTP" in message
    opt_in = {"SCALEV_API_BASE_URL": url, "SNACKVIDEO_ALLOW_INSECURE_HTTP": "1"}
    opted_in = Settings.from_env(opt_in)
    assert opted_in.scalev_api_base_url == url


@pytest.mark.parametrize("url", ["ftp://api.scalev.com", "api.scalev.com", "https://", "file:///x"])
def test_only_http_and_https_urls_are_accepted(url: str) -> None:
    with pytest.raises(ValueError, match="SCALEV_API_BASE_URL: .*http:// or https://"):
        Settings.from_env({"SCALEV_API_BASE_URL": url, "SNACKVIDEO_ALLOW_INSECURE_HTTP": "1"})


@pytest.mark.integration
def test_a_worker_refuses_to_start_with_a_remote_http_base_url(redis_url: str) -> None:
    env = worker_env(redis_url, "http://api.scalev.com")
    done = subprocess.run(
        [PYTHON, "-m", "celery", "-A", "worker", "worker", "--pool", "prefork",
         "--concurrency", "1", "--without-mingle", "--without-gossip"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2
    lines = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert lines[0].startswith("error: invalid configuration: SCALEV_API_BASE_URL:")
    assert "SNACKVIDEO_ALLOW_INSECURE_HTTP" in lines[0]


# -- the request deadline: the client alone ---------------------------------------------------


@pytest.mark.parametrize("part", ["headers", "body"])
def test_a_trickled_answer_is_cut_at_the_deadline(
    hostile: Callable[..., HostileServer], part: str
) -> None:
    # 40 bytes at 0.5 s each: 20 s, and every single read well within the 2 s read timeout.
    slow = Trickle(Reply(200, {"X-Pad": "p" * 40}, b"b" * 40), part=part, interval=0.5)
    server = hostile(respond=in_order(Reply(204), slow, then=Reply(204)))
    client = ScalevClient(
        server.url, connect_timeout_seconds=CONNECT_S, read_timeout_seconds=READ_S
    )
    client.send(STORE, STORE_KEY, event("warm"))  # the cut request runs on a kept-alive socket

    started = time.monotonic()
    with pytest.raises(RetryableError, match="exceeded its deadline of 3s") as info:
        client.send(STORE, STORE_KEY, event("slow"))
    took = time.monotonic() - started
    print(f"trickled {part}: cut after {took:.2f}s")
    assert client.send(STORE, STORE_KEY, event("after")).status_code == 204  # a new connection
    client.close()

    assert info.value.status_code is None
    assert CONNECT_S + READ_S - 0.1 <= took <= CUT_BOUND_S, took
    cut = server.requests()[1]
    assert cut.closed_at is not None
    assert cut.closed_at - cut.received_at <= CUT_BOUND_S


def tls_client(base_url: str, cert: Path) -> ScalevClient:
    session = requests.Session()
    session.verify = str(cert)
    return ScalevClient(
        base_url, connect_timeout_seconds=CONNECT_S, read_timeout_seconds=READ_S, session=session
    )


def test_a_trickled_answer_over_tls_is_cut_at_the_deadline(
    hostile: Callable[..., HostileServer], tmp_path: Path
) -> None:
    context, cert = tls_context(tmp_path)
    slow = Trickle(Reply(200, body=b"b" * 40), part="body", interval=0.5)
    server = hostile(respond=in_order(Reply(204), slow, then=Reply(204)), tls=context)
    client = tls_client(server.url, cert)
    assert client.send(STORE, STORE_KEY, event("warm")).status_code == 204

    started = time.monotonic()
    with pytest.raises(RetryableError, match="exceeded its deadline"):
        client.send(STORE, STORE_KEY, event("slow"))
    took = time.monotonic() - started
    assert client.send(STORE, STORE_KEY, event("after")).status_code == 204
    client.close()
    print(f"TLS, trickled body: cut after {took:.2f}s")
    assert took <= CUT_BOUND_S, took
    cut = server.requests()[1]
    assert cut.closed_at is not None and cut.closed_at - cut.received_at <= CUT_BOUND_S


def test_a_trickled_tls_handshake_is_cut_at_the_deadline(
    hostile: Callable[..., HostileServer], tmp_path: Path
) -> None:
    # Each handshake byte comes well within the 1 s socket timeout; CPython bounds the
    # handshake as a whole by that timeout, so it ends before the deadline would.
    context, cert = tls_context(tmp_path)
    server = hostile(tls=context)
    relay = SlowRelay(("127.0.0.1", server.port), interval=0.5).start()
    try:
        client = tls_client(f"https://127.0.0.1:{relay.port}", cert)
        started = time.monotonic()
        with pytest.raises(RetryableError):
            client.send(STORE, STORE_KEY, event("handshake"))
        took = time.monotonic() - started
        client.close()
    finally:
        relay.stop()
    print(f"TLS, trickled handshake: failed after {took:.2f}s")
    assert took <= CUT_BOUND_S, took
    assert server.requests() == []  # the POST never got through


def test_a_slow_name_resolution_is_bounded(hostile: Callable[..., HostileServer]) -> None:
    server = hostile()
    release = threading.Event()

    def dead_dns(host: str, port: int, family: int, kind: int) -> list[Any]:
        release.wait(30)
        return socket.getaddrinfo("127.0.0.1", port, family, kind)

    client = ScalevClient(
        f"http://scalev.slow.test:{server.port}",
        connect_timeout_seconds=CONNECT_S,
        read_timeout_seconds=READ_S,
        resolver=BoundedResolver(lookup=dead_dns),
    )
    started = time.monotonic()
    with pytest.raises(RetryableError, match="in time"):
        client.send(STORE, STORE_KEY, event("dns"))
    took = time.monotonic() - started
    release.set()
    client.close()
    assert took <= CUT_BOUND_S, took
    assert server.requests() == []


def test_the_bounded_resolver() -> None:
    started = threading.Event()
    release = threading.Event()

    def stuck(host: str, port: int, family: int, kind: int) -> list[Any]:
        started.set()
        release.wait(30)
        return []

    resolver = BoundedResolver(threads=1, lookup=stuck)
    began = time.monotonic()
    with pytest.raises(ResolveTimeout, match="longer than 0.20s"):
        resolver("stuck.test", 443, socket.AF_UNSPEC, 0.2)
    assert started.is_set() and time.monotonic() - began < 5
    # Its one thread is still stuck: the next lookup waits for a slot, within its bound.
    with pytest.raises(ResolveTimeout, match="busy"):
        resolver("other.test", 443, socket.AF_UNSPEC, 0.2)
    release.set()
    wait_until(lambda: resolver._slots.acquire(timeout=0.1), timeout=10, what="the slot back")
    resolver._slots.release()
    # IP literals never take a thread; errors of the lookup reach the caller.
    assert resolver("127.0.0.1", 80, socket.AF_INET, 0.0)[0][4] == ("127.0.0.1", 80)
    with pytest.raises(socket.gaierror):
        BoundedResolver(lookup=lambda *a: socket.getaddrinfo("no.such.invalid", 80))(
            "x.test", 80, socket.AF_UNSPEC, 10
        )


def test_the_watchdog_shuts_a_blocked_read_down_at_its_deadline() -> None:
    dog = Watchdog()
    ours, theirs = socket.socketpair()
    guard = dog.arm(0.3, BoundedResolver())
    dog.attach(guard, ours)
    started = time.monotonic()
    assert ours.recv(1) == b""  # blocks until the watchdog shuts the socket down
    assert 0.25 <= time.monotonic() - started < 5
    assert dog.disarm(guard) is True
    # A request that ends before its deadline is left alone.
    other, peer = socket.socketpair()
    early = dog.arm(0.2, BoundedResolver())
    dog.attach(early, other)
    assert dog.disarm(early) is False
    time.sleep(0.4)
    peer.sendall(b"x")
    assert other.recv(1) == b"x"
    for sock in (ours, theirs, other, peer):
        sock.close()
    assert watchdog() is watchdog()


# -- the request deadline and the time limits: real workers --------------------------------------


def short_timeouts(redis_url: str, base_url: str, **overrides: str) -> dict[str, str]:
    return worker_env(
        redis_url,
        base_url,
        SNACKVIDEO_HTTP_CONNECT_TIMEOUT_SECONDS=str(CONNECT_S),
        SNACKVIDEO_HTTP_READ_TIMEOUT_SECONDS=str(READ_S),
        **overrides,
    )


@pytest.mark.integration
def test_a_worker_cuts_trickled_answers_and_delivers_once_the_server_behaves(
    hostile: Callable[..., HostileServer],
    start_worker: Callable[..., Worker],
    redis_url: str,
    redis_client: redis.Redis,
) -> None:
    slow = {
        "trickle-headers": Trickle(Reply(204, {"X-Pad": "p" * 60}), part="headers"),
        "trickle-body": Trickle(Reply(200, body=b"b" * 60), part="body"),
    }
    answered: set[str] = set()
    lock = threading.Lock()

    def respond(seen: Seen) -> Reply | Trickle:
        click = click_of(seen)
        with lock:
            first = click not in answered
            answered.add(click)
        return slow[click] if first else Reply(204)

    server = hostile(respond=respond)
    worker = start_worker(short_timeouts(redis_url, server.url), concurrency=2)
    producer = Producer(redis_url)
    for click in slow:
        producer.enqueue(STORE, event(click))

    wait_until(
        lambda: worker.log().count("outcome=delivered") == len(slow),
        timeout=60,
        what="both jobs delivered after their cut first attempt",
    )

    for click in slow:
        first, second = [seen for seen in server.requests() if click_of(seen) == click]
        assert first.closed_at is not None, click
        held = first.closed_at - first.received_at
        print(f"{click}: the server saw the connection closed after {held:.2f}s")
        assert held <= CUT_BOUND_S, (click, held)
        assert second.closed_at is None
    log = worker.log()
    assert log.count("outcome=retried") == len(slow)
    cut_lines = [line for line in log.splitlines() if "exceeded its deadline of 3s" in line]
    assert len(cut_lines) == len(slow)
    for line in cut_lines:
        seconds = float(line.split("(cut after ")[1].split("s)")[0])
        print(f"the worker cut a request after {seconds:.2f}s")
        assert CONNECT_S + READ_S - 0.1 <= seconds <= CUT_BOUND_S
    assert "attempt=2" in log
    assert dead_letters(redis_client) == []
    assert STORE_KEY not in log


@pytest.mark.integration
def test_a_slow_name_resolution_in_a_worker_is_cut_and_retried(
    hostile: Callable[..., HostileServer],
    start_worker: Callable[..., Worker],
    redis_url: str,
) -> None:
    from tests.slow_dns_seam import SLOW_LOOKUP_SECONDS

    server = hostile()
    env = short_timeouts(
        redis_url,
        f"http://scalev.slow.test:{server.port}",
        SNACKVIDEO_ALLOW_INSECURE_HTTP="1",  # not loopback by name
    )
    worker = start_worker(env, concurrency=1, extra_args=("--include", "tests.slow_dns_seam"))
    enqueued = time.monotonic()
    Producer(redis_url).enqueue(STORE, event("dns-1"))

    (seen,) = wait_until(server.requests, timeout=60, what="the retried POST")
    waited = seen.received_at - enqueued
    print(f"first lookup stuck for {SLOW_LOOKUP_SECONDS:g}s; the POST arrived after {waited:.2f}s")
    # The first lookup would have taken 20 s; the attempt was given up within its bound.
    assert waited < SLOW_LOOKUP_SECONDS
    wait_until(lambda: "outcome=delivered" in worker.log(), timeout=30, what="delivery")
    log = worker.log()
    assert "outcome=retried" in log
    assert f"resolving scalev.slow.test took longer than {CONNECT_S:.2f}s" in log


@pytest.mark.integration
def test_the_soft_time_limit_parks_the_job_with_a_counted_attempt(
    hostile: Callable[..., HostileServer],
    start_worker: Callable[..., Worker],
    redis_url: str,
    redis_client: redis.Redis,
) -> None:
    # The POST would be cut at connect + read = 6 s; the soft limit stops the run at 1 s.
    server = hostile(respond=in_order(Hold(30), then=Reply(204)))
    env = worker_env(
        redis_url,
        server.url,
        SNACKVIDEO_HTTP_CONNECT_TIMEOUT_SECONDS="1",
        SNACKVIDEO_HTTP_READ_TIMEOUT_SECONDS="5",
        SNACKVIDEO_TASK_SOFT_TIME_LIMIT_SECONDS="1",
        SNACKVIDEO_TASK_TIME_LIMIT_SECONDS="20",
    )
    worker = start_worker(env, concurrency=1)
    Producer(redis_url).enqueue(STORE, event("soft-1"))

    wait_until(lambda: "outcome=delivered" in worker.log(), timeout=60, what="delivery")

    log = worker.log()
    assert "Soft time limit (1.0s) exceeded" in log
    assert "soft time limit: parking job" in log
    parked = next(line for line in log.splitlines() if "outcome=retried" in line)
    assert "attempt=1" in parked
    delivered = next(line for line in log.splitlines() if "outcome=delivered" in line)
    assert "attempt=2" in delivered
    held, answered = server.requests()
    assert held.closed_at is not None
    print(f"soft limit 1 s: the server saw the held POST closed after "
          f"{held.closed_at - held.received_at:.2f}s")  # fmt: skip
    assert held.closed_at - held.received_at < 1 + 5  # the soft limit, not the deadline
    assert "Hard time limit" not in log
    assert dead_letters(redis_client) == []


@pytest.mark.integration
def test_the_hard_time_limit_requeues_the_message_instead_of_acking_it(
    hostile: Callable[..., HostileServer],
    start_worker: Callable[..., Worker],
    redis_url: str,
    redis_client: redis.Redis,
) -> None:
    # A run the soft limit cannot stop (the seam makes the pool child ignore its signal):
    # the hard limit kills the child mid-POST. Celery's default (acks_on_timeout) would
    # ack the message and the job would be gone; ours goes back to the queue.
    server = hostile(respond=in_order(Hold(60), then=Reply(204)))
    env = worker_env(
        redis_url,
        server.url,
        SNACKVIDEO_HTTP_CONNECT_TIMEOUT_SECONDS="1",
        SNACKVIDEO_HTTP_READ_TIMEOUT_SECONDS="30",
        SNACKVIDEO_TASK_SOFT_TIME_LIMIT_SECONDS="1",
        SNACKVIDEO_TASK_TIME_LIMIT_SECONDS="3",
        # Far away: a job back within the test was requeued, not restored by kombu.
        SNACKVIDEO_VISIBILITY_TIMEOUT_SECONDS="900",
    )
    worker = start_worker(
        env, concurrency=1, extra_args=("--include", "tests.ignore_soft_limit_seam")
    )
    Producer(redis_url).enqueue(STORE, event("hard-1"))

    wait_until(lambda: "outcome=delivered" in worker.log(), timeout=120, what="delivery")

    log = worker.log()
    assert "Hard time limit (3.0s) exceeded" in log
    assert "outcome=retried" not in log  # the soft limit did not get to park it
    held, answered = server.requests()
    assert held.closed_at is not None  # the killed child's socket closed with it
    print(f"hard limit 3 s: the server saw the held POST closed after "
          f"{held.closed_at - held.received_at:.2f}s")  # fmt: skip
    assert click_of(answered) == "hard-1"
    delivered = next(line for line in log.splitlines() if "outcome=delivered" in line)
    assert "attempt=1" in delivered  # a requeue is not a counted attempt
    assert dead_letters(redis_client) == []
    assert redis_client.zcard(SCHEDULED) == 0


# -- what the client reads from the environment, once -------------------------------------


def test_proxies_and_the_ca_bundle_are_read_once_at_start(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY", "CURL_CA_BUNDLE"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.internal:3128")
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", "/etc/ssl/custom.pem")

    def client() -> ScalevClient:
        return ScalevClient(
            "https://api.scalev.com", connect_timeout_seconds=1, read_timeout_seconds=1
        )

    proxied = client()
    assert proxied.session.proxies == {"https": "http://proxy.internal:3128"}
    assert proxied.session.verify == "/etc/ssl/custom.pem"
    assert proxied.session.trust_env is False  # no per-request environment scan, no .netrc
    proxied.close()
    monkeypatch.setenv("NO_PROXY", "api.scalev.com")
    bypassed = client()
    assert bypassed.session.proxies == {}
    bypassed.close()
