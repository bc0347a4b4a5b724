"""What the request deadline costs on the hot path: CPU per POST to the sandbox.

    python -m bench.http_deadline [--n 2000] [--rounds 3]

Two clients, one process, the same sandbox, rounds alternating so the machine's load
falls on both alike:

- ``plain``: the client as it was before the deadline: a kept-alive ``requests.Session``
  with requests' own adapter, the same headers and body, redirects followed, the same
  header lower-casing and classification (the request's histogram is the dispatcher's,
  outside all three);
- ``deadline via requests``: the deadline (watchdog armed and disarmed per request,
  guarded connections, no redirects, the body read bounded) with each POST made by
  ``requests.Session.post``, as ``ScalevClient`` did until issue 16 (proxy variables
  read once at start);
- ``deadline``: ``worker.delivery.scalev.ScalevClient`` as it runs: the same, each POST
  made on the session's urllib3 pool directly (``worker.delivery.http_route``).

CPU is ``time.process_time()``: every thread of this process, the watchdog's included.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

import requests

from bench.common import STORE, STORE_KEY, load_average, payload, start_sandbox, table
from producers.models import request_body
from worker.delivery.request_deadline import CURRENT_GUARD, watchdog
from worker.delivery.scalev import (
    API_KEY_HEADER,
    RESPONSE_BODY_MAX_BYTES,
    USER_AGENT,
    ScalevClient,
    classify,
    events_url,
)


def plain_sender(base_url: str) -> tuple[Callable[[int], None], Callable[[], None]]:
    session = requests.Session()
    session.headers["User-Agent"] = USER_AGENT
    url = events_url(base_url, STORE)

    def send(index: int) -> None:
        body = json.dumps(
            payload(index, "plain"), separators=(",", ":"), ensure_ascii=False
        ).encode("utf-8")
        response = session.post(
            url,
            data=body,
            headers={API_KEY_HEADER: STORE_KEY, "Content-Type": "application/json"},
            timeout=(3.05, 10.0),
        )
        headers = {name.lower(): value for name, value in response.headers.items()}
        outcome = classify(response.status_code, response.text, headers)
        assert outcome.__class__.__name__ == "Delivered", outcome

    return send, session.close


def deadline_sender(base_url: str) -> tuple[Callable[[int], None], Callable[[], None]]:
    client = ScalevClient(base_url, connect_timeout_seconds=3.05, read_timeout_seconds=10.0)

    def send(index: int) -> None:
        client.send(STORE, STORE_KEY, payload(index, "deadline"))

    return send, client.close


def deadline_via_requests_sender(
    base_url: str,
) -> tuple[Callable[[int], None], Callable[[], None]]:
    """``ScalevClient.send`` as it was before issue 16: the POST through ``Session.post``."""
    client = ScalevClient(base_url, connect_timeout_seconds=3.05, read_timeout_seconds=10.0)
    session, url = client.session, events_url(base_url, STORE)

    def send(index: int) -> None:
        guard = watchdog().arm(client.deadline_seconds, client.resolver)
        token = CURRENT_GUARD.set(guard)
        try:
            response = session.post(
                url,
                data=request_body(payload(index, "via-requests")),
                headers={API_KEY_HEADER: STORE_KEY, "Content-Type": "application/json"},
                timeout=(3.05, 10.0),
                allow_redirects=False,
                stream=True,
            )
            try:
                text = response.raw.read(RESPONSE_BODY_MAX_BYTES, decode_content=True)
            finally:
                response.close()
        finally:
            CURRENT_GUARD.reset(token)
            watchdog().disarm(guard)
        headers = {name.lower(): value for name, value in response.headers.items()}
        outcome = classify(response.status_code, text.decode("utf-8", "replace"), headers)
        assert outcome.__class__.__name__ == "Delivered", outcome

    return send, client.close


def measure(make: Callable[[str], tuple[Callable[[int], None], Callable[[], None]]],
            base_url: str, n: int) -> tuple[float, float]:  # fmt: skip
    """(CPU µs per POST, wall µs per POST) over ``n`` POSTs on one kept-alive connection."""
    send, close = make(base_url)
    send(-1)  # connect outside the measurement
    cpu, wall = time.process_time(), time.perf_counter()
    for index in range(n):
        send(index)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    close()
    return cpu / n * 1e6, wall / n * 1e6


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    sandbox = start_sandbox()
    clients: dict[str, Callable[[str], tuple[Callable[[int], None], Callable[[], None]]]] = {
        "plain": plain_sender,
        "deadline via requests": deadline_via_requests_sender,
        "deadline": deadline_sender,
    }
    results: dict[str, list[tuple[float, float]]] = {name: [] for name in clients}
    try:
        print(f"load average before: {load_average()}")
        for _ in range(args.rounds):
            for name, make in clients.items():
                results[name].append(measure(make, sandbox.base_url, args.n))
                sandbox.reset()
        print(f"load average after: {load_average()}")
    finally:
        sandbox.stop()
    rows = []
    for name, runs in results.items():
        cpus = [cpu for cpu, _ in runs]
        rows.append(
            (
                name,
                " / ".join(f"{cpu:.0f}" for cpu in cpus),
                f"{statistics.median(cpus):.0f}",
                f"{statistics.median(wall for _, wall in runs):.0f}",
            )
        )
    print(f"{args.n} POSTs per round, {args.rounds} rounds, alternating")
    print(table(("client", "CPU µs/POST per round", "median CPU µs", "median wall µs"), rows))


if __name__ == "__main__":
    main()
