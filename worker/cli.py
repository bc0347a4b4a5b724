"""The ``snackvideo`` command: enqueue, dlq, sandbox, status."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any, TextIO

import redis

from producers import EnqueueError, InvalidEvent, Producer
from producers.models import validate_payload, validate_store_id

ENQUEUE_CHUNK = 500


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # The sandbox owns its flags; hand them over untouched.
    if argv[:1] == ["sandbox"]:
        from sandbox import main as sandbox_main

        return sandbox_main(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "handler"):
        parser.print_help()
        return 2
    try:
        return int(args.handler(args))
    except KeyboardInterrupt:
        return 130
    except ValueError as exc:  # configuration errors name the variable
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except redis.RedisError as exc:
        print(f"error: Redis did not answer: {exc}", file=sys.stderr)
        return 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="snackvideo", description="Queue-backed dispatcher for SnackVideo events."
    )
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")

    enqueue = commands.add_parser(
        "enqueue", help="validate and enqueue events from a JSON object or JSON Lines file"
    )
    enqueue.add_argument("--store", required=True, help="the store's unique_id")
    enqueue.add_argument("file", nargs="?", default="-", help="FILE or - for stdin (default)")
    enqueue.set_defaults(handler=cmd_enqueue)

    commands.add_parser("sandbox", help="run the local Scalev stand-in (see: sandbox --help)")

    from worker import cli_dlq, status

    cli_dlq.add_parser(commands)
    status.add_parser(commands)
    return parser


def read_payloads(stream: TextIO) -> list[tuple[int, Any]]:
    """(line number, decoded JSON) for a single JSON document or for JSON Lines."""
    text = stream.read()
    stripped = text.strip()
    if not stripped:
        return []
    try:
        whole = json.loads(stripped)
    except json.JSONDecodeError:
        whole = None
    else:
        if isinstance(whole, dict):
            return [(1, whole)]
    items: list[tuple[int, Any]] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            items.append((number, json.loads(line)))
        except json.JSONDecodeError as exc:
            items.append((number, _Unreadable(f"not valid JSON ({exc.msg})")))
    return items


class _Unreadable:
    def __init__(self, message: str) -> None:
        self.message = message


def cmd_enqueue(args: argparse.Namespace) -> int:
    try:
        store_id = validate_store_id(args.store)
    except InvalidEvent as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.file == "-":
        items = read_payloads(sys.stdin)
    else:
        try:
            with open(args.file, encoding="utf-8") as stream:
                items = read_payloads(stream)
        except OSError as exc:
            print(f"error: cannot read {args.file}: {exc.strerror}", file=sys.stderr)
            return 1
    if not items:
        print("error: no events in input", file=sys.stderr)
        return 1
    problems: list[str] = []
    payloads: list[dict[str, Any]] = []
    for number, item in items:
        if isinstance(item, _Unreadable):
            problems.append(f"line {number}: {item.message}")
            continue
        try:
            payloads.append(validate_payload(item))
        except InvalidEvent as exc:
            for field, message in exc.problems:
                problems.append(f"line {number}: {field}: {message}")
    if problems:
        for problem in problems:
            print(f"error: {problem}", file=sys.stderr)
        print(f"nothing enqueued: {len(problems)} problem(s)", file=sys.stderr)
        return 1
    producer = Producer()
    try:
        for start in range(0, len(payloads), ENQUEUE_CHUNK):
            for job_id in producer.enqueue_many(store_id, payloads[start : start + ENQUEUE_CHUNK]):
                print(job_id)
    except EnqueueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        producer.close()
    print(f"enqueued {len(payloads)} event(s) for store {store_id}", file=sys.stderr)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
