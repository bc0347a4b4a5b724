"""``snackvideo dlq ...``: inspect, replay and purge the dead-letter queue."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any

from worker.connections import redis_client
from worker.deadletter import DeadLetter, DeadLetterStore
from worker.settings import get_settings


def add_parser(commands: Any) -> None:
    dlq = commands.add_parser("dlq", help="inspect, replay and purge dead letters")
    sub = dlq.add_subparsers(title="dlq commands", metavar="ACTION")

    listing = sub.add_parser("list", help="list entries, newest first")
    listing.add_argument("--reason")
    listing.add_argument("--store")
    listing.add_argument("--limit", type=int, default=50)
    listing.add_argument("--json", action="store_true", help="print a JSON array")
    listing.set_defaults(handler=cmd_list)

    show = sub.add_parser("show", help="print one entry")
    show.add_argument("id")
    show.set_defaults(handler=cmd_show)

    replay = sub.add_parser("replay", help="move entries back to the delivery queue")
    replay.add_argument("ids", nargs="*")
    replay.add_argument("--all", action="store_true")
    replay.add_argument("--reason")
    replay.add_argument("--dry-run", action="store_true")
    replay.set_defaults(handler=cmd_replay)
    dlq.set_defaults(handler=lambda _args: dlq.print_help() or 2)


def open_store() -> DeadLetterStore:
    settings = get_settings()
    return DeadLetterStore(
        redis_client(),
        max_entries=settings.dlq_max_entries,
        max_age_seconds=settings.dlq_max_age_seconds,
    )


def _time(value: float | None) -> str:
    if value is None:
        return "-"
    return datetime.fromtimestamp(value, UTC).strftime("%Y-%m-%d %H:%M:%S")


def cmd_list(args: argparse.Namespace) -> int:
    entries = open_store().list(reason=args.reason, store_id=args.store, limit=args.limit)
    if args.json:
        print(json.dumps([asdict(entry) for entry in entries], indent=2, default=repr))
        return 0
    print(f"{'ID':<42} {'REASON':<18} {'STATUS':>6} {'STORE':<16} {'CLICK_ID':<20} DEAD-LETTERED")
    for entry in entries:
        print(
            f"{entry.id:<42} {entry.reason:<18} {entry.status_code or '-':>6} "
            f"{entry.store_id:<16} {(entry.click_id or '-')[:20]:<20} "
            f"{_time(entry.dead_lettered_at)}"
        )
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    entry = open_store().get(args.id)
    if entry is None:
        print(f"error: no dead-letter entry {args.id}", file=sys.stderr)
        return 1
    print(json.dumps(asdict(entry), indent=2, default=repr))
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    store = open_store()
    if not (args.ids or args.all or args.reason):
        print("error: give entry IDs, --all or --reason", file=sys.stderr)
        return 2
    entries: list[DeadLetter]
    if args.ids:
        entries = []
        for entry_id in args.ids:
            entry = store.get(entry_id)
            if entry is None:
                print(f"error: no dead-letter entry {entry_id}", file=sys.stderr)
                return 1
            entries.append(entry)
    else:
        entries = store.list(reason=args.reason, newest_first=False)
    if args.dry_run:
        print(f"would replay {len(entries)} entr{'y' if len(entries) == 1 else 'ies'}")
        return 0
    replayed = store.replay(entries)
    print(f"replayed {len(replayed)} entr{'y' if len(replayed) == 1 else 'ies'}")
    return 0
