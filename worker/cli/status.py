"""``snackvideo status``: queue depth, scheduled retries, dead letters, throttle, workers.

The state comes from ``worker.cluster_state``, the read /metrics serves too, so the CLI
and the gauges can never disagree. Asking for the workers is a broadcast that waits for
replies, and the one part that needs the Celery app: only this command builds it.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import redis

from worker.cluster_state import read_cluster_state
from worker.connections import redis_client
from worker.escaping import visible


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


def workers_seen(timeout: float = 1.0) -> list[str]:
    """Node names of the workers that answer a broadcast ping within ``timeout``."""
    # Only here: every other command, and the metrics scrape, runs without Celery.
    from worker.celery_app import app

    # The ping's channel takes no job: it must not restore the workers' (a read-only
    # operator's Redis user could not, worker.celery_ext.transport).
    app.conf.broker_transport_options = {
        **app.conf.broker_transport_options,
        "restores_messages": False,
    }
    replies = app.control.inspect(timeout=timeout).ping() or {}
    return sorted(replies)


def cmd_status(args: argparse.Namespace) -> int:
    try:
        state = read_cluster_state(redis_client())
    except redis.RedisError as exc:
        print(f"error: cannot read Redis: {exc}", file=sys.stderr)
        return 1
    ping_error = None
    try:
        state["workers"] = workers_seen(args.timeout)
    except redis.RedisError as exc:
        # The ping writes its reply queue, which a replica refuses (READONLY): show what
        # was read, its "role=replica" first, rather than nothing.
        ping_error = exc
    print(json.dumps(state, indent=2, sort_keys=True) if args.json else format_table(state))
    if ping_error is not None:
        print(f"error: cannot ping the workers: {ping_error}", file=sys.stderr)
        return 1
    return 0


def format_table(state: dict[str, Any]) -> str:
    rows: list[tuple[str, Any]] = [
        *_redis_rows(state.get("redis")),
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


def _redis_rows(redis_state: dict[str, Any] | None) -> list[tuple[str, Any]]:
    """``redis  127.0.0.1:6379 role=master replicas=1`` (a replica: its master and link)."""
    if not redis_state:
        return []
    fields = [f"role={redis_state['role']}"]
    if redis_state.get("connected_replicas") is not None:
        fields.append(f"replicas={redis_state['connected_replicas']}")
    if redis_state.get("master_address"):
        fields.append(f"master={redis_state['master_address']} link={redis_state['master_link']}")
    return [("redis", visible(f"{redis_state['address']} {' '.join(fields)}"))]


def _throttle_rows(throttle: dict[str, dict[str, Any]] | None) -> list[tuple[str, Any]]:
    """One row per throttle scope of ``{scope: {field: value}}``."""
    if not throttle:
        return []
    rows: list[tuple[str, Any]] = [("throttle", "")]
    for scope, info in throttle.items():
        # "-" rather than a missing field: "blocked_until=-" says "not blocked".
        fields = " ".join(f"{k}={'-' if v is None else v}" for k, v in info.items())
        rows.append((f"  {visible(scope)}", visible(fields)))
    return rows
