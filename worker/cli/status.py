"""``snackvideo status``: queue depth, scheduled retries, dead letters, throttle, workers.

``collect()`` returns the state as a dict (what ``--json`` prints); the worker's metrics
endpoint reads the same dict at every scrape (``worker.metrics``), so the CLI and the
gauges can never disagree. Asking for the workers is a broadcast that waits for replies,
so the metrics scrape leaves it out.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import redis

from producers.keys import ENQUEUED_COUNTER
from worker.connections import redis_client
from worker.deadletter import DeadLetterStore
from worker.keys import CONTROL_QUEUE, DELIVERY_QUEUE
from worker.scheduler import DelayedJobs
from worker.throttle import throttle_status
from worker.visible import visible

#: kombu's hash of messages taken by a worker and not yet acknowledged.
UNACKED = "unacked"


def add_parser(commands: Any) -> None:
    status = commands.add_parser("status", help="queue depth, dead letters, throttle, workers")
    status.add_argument("--json", action="store_true", help="print one JSON object")
    status.add_argument(
        "--timeout",
        type=float,
        default=1.0,
        help="seconds to wait for workers to answer the ping (default: 1)",
    )
    status.set_defaults(handler=cmd_status)


def collect(
    client: redis.Redis | None = None, *, workers: bool = True, timeout: float = 1.0
) -> dict[str, Any]:
    client = client or redis_client()
    dead_letters = DeadLetterStore(client)
    state: dict[str, Any] = {
        "queue_depth": int(client.llen(DELIVERY_QUEUE)),
        "control_queue_depth": int(client.llen(CONTROL_QUEUE)),
        "in_flight": int(client.hlen(UNACKED)),
        "scheduled": DelayedJobs(client).depth(),
        "enqueued_total": int(client.get(ENQUEUED_COUNTER) or 0),
        "dead_letters": len(dead_letters),
        "dead_letters_by_reason": dead_letters.counts_by_reason(),
        "dead_letters_trimmed_by_reason": dead_letters.trimmed_by_reason(),
    }
    # {scope: {limit, remaining, reset_in_s, blocked_until, in_flight, ...}}
    state["throttle"] = throttle_status(client)
    if workers:
        state["workers"] = workers_seen(timeout)
    return state


def workers_seen(timeout: float = 1.0) -> list[str]:
    """Node names of the workers that answer a broadcast ping within ``timeout``."""
    from worker.app import app  # only here: the metrics scrape must not build the app

    replies = app.control.inspect(timeout=timeout).ping() or {}
    return sorted(replies)


def cmd_status(args: argparse.Namespace) -> int:
    try:
        state = collect(timeout=args.timeout)
    except redis.RedisError as exc:
        print(f"error: cannot read Redis: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(state, indent=2, sort_keys=True))
        return 0
    print(format_table(state))
    return 0


def format_table(state: dict[str, Any]) -> str:
    rows: list[tuple[str, Any]] = [
        ("queue depth", state["queue_depth"]),
        ("control queue depth", state["control_queue_depth"]),
        ("in flight (unacked)", state["in_flight"]),
        ("scheduled retries", state["scheduled"]),
        ("events enqueued", state["enqueued_total"]),
        ("dead letters", state["dead_letters"]),
    ]
    rows += [(f"  {reason}", n) for reason, n in state["dead_letters_by_reason"].items()]
    trimmed = state["dead_letters_trimmed_by_reason"]
    rows.append(("dead letters trimmed", sum(trimmed.values())))
    rows += [(f"  {reason}", n) for reason, n in trimmed.items()]
    rows += _throttle_rows(state.get("throttle"))
    if "workers" in state:
        rows.append(("workers seen", len(state["workers"])))
        rows += [(f"  {name}", "") for name in state["workers"]]
    width = max(len(label) for label, _ in rows) + 2
    return "\n".join(f"{label:<{width}}{value}".rstrip() for label, value in rows)


def _throttle_rows(throttle: Any) -> list[tuple[str, Any]]:
    """One row per throttle scope: ``[{"scope": ..., ...}]`` or ``{scope: {...}}``."""
    if not throttle:
        return []
    if isinstance(throttle, dict):
        throttle = [
            {"scope": scope, **info} if isinstance(info, dict) else {"scope": scope, "state": info}
            for scope, info in throttle.items()
        ]
    rows: list[tuple[str, Any]] = [("throttle", "")]
    for info in throttle if isinstance(throttle, list) else []:
        if not isinstance(info, dict):
            continue
        # "-" rather than a missing field: "blocked_until=-" says "not blocked".
        fields = " ".join(f"{k}={'-' if v is None else v}" for k, v in info.items() if k != "scope")
        rows.append((f"  {visible(str(info.get('scope', '?')))}", visible(fields)))
    return rows
