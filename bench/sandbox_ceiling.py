"""The sandbox's own ceiling: how many events per second it accepts when nothing else costs.

A lean client (pre-built request bytes over raw keep-alive sockets, one thread per
connection, split over two processes so the client's GIL is not the limit) sends N
valid events at each connection count. Baseline: the ``requests.Session`` loop (A of
the delivery benchmark) at the same count. The sandbox's CPU time per request shows
what it costs the machine in every other benchmark: compare it with the worker's CPU
per event in the delivery table.

    python -m bench.sandbox_ceiling [--n 5000] [--connections 1,4,8,16]
"""

from __future__ import annotations

import json
import multiprocessing
import socket
import threading
import time
from collections.abc import Sequence
from urllib.parse import urlsplit

from bench.common import (
    DEFAULT_N,
    STORE_KEY,
    Sandbox,
    Section,
    cpu_seconds,
    doc_parser,
    env_int,
    events_url,
    payload,
    table,
)
from bench.delivery import Result, Stack, parse_ints, run_plain_loop, run_timeout

CLIENT_PROCESSES = 2


def request_bytes(base_url: str, index: int) -> bytes:
    body = json.dumps(payload(index, "ceiling"), separators=(",", ":")).encode()
    url = urlsplit(events_url(base_url))
    head = (
        f"POST {url.path} HTTP/1.1\r\nHost: {url.netloc}\r\n"
        f"X-Scalev-Storefront-Api-Key: {STORE_KEY}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


def _connection_loop(base_url: str, count: int, deadline: float, failures: list[bytes]) -> None:
    url = urlsplit(base_url)
    request = request_bytes(base_url, 0)
    with socket.create_connection((url.hostname, url.port), timeout=10) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        buffer = b""
        for _ in range(count):
            if time.monotonic() > deadline:
                return
            sock.sendall(request)
            while b"\r\n\r\n" not in buffer:  # a 204 ends with its headers
                chunk = sock.recv(65536)
                if not chunk:
                    return
                buffer += chunk
            head, _, buffer = buffer.partition(b"\r\n\r\n")
            if not head.startswith(b"HTTP/1.1 204"):
                failures.append(head[:40])


def _client_process(base_url: str, counts: Sequence[int], deadline: float) -> None:
    failures: list[bytes] = []
    threads = [
        threading.Thread(target=_connection_loop, args=(base_url, c, deadline, failures))
        for c in counts
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failures:
        raise SystemExit(f"{len(failures)} requests were not answered 204: {failures[0]!r}")


def run_lean(sandbox: Sandbox, connections: int, n: int) -> Result:
    sandbox.reset()
    per_connection = [n // connections + (1 if i < n % connections else 0)
                      for i in range(connections)]  # fmt: skip
    groups = [per_connection[i::CLIENT_PROCESSES] for i in range(CLIENT_PROCESSES)]
    deadline = time.monotonic() + run_timeout(n)
    context = multiprocessing.get_context("fork")
    clients = [
        context.Process(target=_client_process, args=(sandbox.base_url, group, deadline))
        for group in groups
        if group
    ]
    cpu_start, wall_start = cpu_seconds(sandbox.pid), time.monotonic()
    for client in clients:
        client.start()
    for client in clients:
        client.join()
    sandbox_cpu = cpu_seconds(sandbox.pid) - cpu_start
    share = sandbox_cpu / (time.monotonic() - wall_start)
    first, last, accepted = sandbox.received_span()
    failed = sum(1 for client in clients if client.exitcode != 0)
    return Result(
        "lean raw-socket client",
        connections,
        n,
        accepted,
        last - first,
        None,
        share,
        int(sandbox.stats()["requests"]),
        f"{failed} client processes failed" if failed else f"{sandbox_cpu * 1e6 / n:.0f}",
    )


def run(n: int = DEFAULT_N, connections: Sequence[int] = (1, 4, 8, 16)) -> Section:
    section = Section("The sandbox's own ceiling", __doc__.split("\n\n")[1] if __doc__ else "")
    stack = Stack()
    rows = []
    try:
        for c in connections:
            lean = run_lean(stack.sandbox, c, n)
            plain = run_plain_loop(stack, c, n)
            rows.append(
                [
                    c,
                    f"{lean.rate:,.0f}",
                    lean.note,
                    f"{lean.sandbox_cpu_share * 100:.0f}%",
                    f"{plain.rate:,.0f}",
                    f"{plain.rate / lean.rate:.2f}" if lean.rate else "-",
                ]
            )
            print(f"  {c} connections: lean {lean.rate:,.0f}/s, requests {plain.rate:,.0f}/s")
    finally:
        stack.close()
    section.add(
        table(
            [
                "connections",
                "lean client events/s",
                "sandbox CPU µs/request",
                "sandbox CPU",
                "A: requests.Session events/s",
                "A ÷ lean",
            ],
            rows,
        )  # fmt: skip
    )
    return section


def main(argv: list[str] | None = None) -> int:
    parser = doc_parser("python -m bench.sandbox_ceiling", __doc__)
    parser.add_argument("--n", type=int, default=env_int("BENCH_N", DEFAULT_N))
    parser.add_argument("--connections", default="1,4,8,16")
    args = parser.parse_args(argv)
    run(args.n, parse_ints(args.connections))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
