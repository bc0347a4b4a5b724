"""``snackvideo status``: queue depth, scheduled retries, dead letters by reason."""

from __future__ import annotations

import argparse
import json
from typing import Any

from worker.connections import redis_client
from worker.deadletter import DeadLetterStore
from worker.keys import DELIVERY_QUEUE
from worker.scheduler import DelayedJobs


def add_parser(commands: Any) -> None:
    status = commands.add_parser("status", help="queue depth, dead letters, throttle state")
    status.add_argument("--json", action="store_true")
    status.set_defaults(handler=cmd_status)


def collect() -> dict[str, Any]:
    client = redis_client()
    dead_letters = DeadLetterStore(client)
    return {
        "queue_depth": int(client.llen(DELIVERY_QUEUE)),
        "scheduled": DelayedJobs(client).depth(),
        "dead_letters": len(dead_letters),
        "dead_letters_by_reason": dead_letters.counts_by_reason(),
    }


def cmd_status(args: argparse.Namespace) -> int:
    state = collect()
    if args.json:
        print(json.dumps(state, indent=2))
        return 0
    print(f"queue depth        {state['queue_depth']}")
    print(f"scheduled retries  {state['scheduled']}")
    print(f"dead letters       {state['dead_letters']}")
    for reason, count in state["dead_letters_by_reason"].items():
        print(f"  {reason:<17} {count}")
    return 0
