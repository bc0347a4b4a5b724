"""``snackvideo enqueue``: validate events from a JSON object or JSON Lines, then enqueue them."""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from collections.abc import Callable
from typing import Any, BinaryIO

from producers import EnqueueError, InvalidEvent, Producer
from producers.enqueue import idempotency_key_problem
from producers.models import MAX_PAYLOAD_DEPTH, validate_payload, validate_store_id
from worker.cli.progress import Progress

ENQUEUE_CHUNK = 500
CONTENT_KEY_PREFIX = "content-sha256:"
#: The most input ``snackvideo enqueue`` reads (64 MiB, some 60,000 real events). Every line
#: is checked before the first is queued, so the whole input is held in memory, decoded.
MAX_INPUT_BYTES = 64 * 1024 * 1024

ENQUEUE_EPILOG = f"""\
Input is one JSON object, or JSON Lines (one event a line), in UTF-8, at most
{MAX_INPUT_BYTES // (1024 * 1024)} MiB (split a larger file). Every line is validated
first: an invalid line is reported by line number and field (a line over
SNACKVIDEO_MAX_PAYLOAD_BYTES, 512 KiB by default, as compact JSON is one), nothing is
enqueued and the exit status is 1. Events then go to Redis in chunks of {ENQUEUE_CHUNK},
one atomic call per chunk, and their job ids are printed one a line, in input order.

A run that fails part-way (Redis gone: "error: Redis did not accept ...", exit status 1)
has enqueued its first chunks, and maybe the chunk it was sending. To make running the
same file again safe, give every event an idempotency key with one of:

  --idempotency-key-field FIELD
      the key is the value of the event's top-level FIELD, which must be a non-empty
      string on every line (else that line is reported as invalid). It is the same key a
      backend passes as enqueue(..., idempotency_key=...). The field stays in the event.
  --idempotency-key-from-content
      the key is derived from the store and the event's content: a SHA-256 of its
      canonical JSON (keys sorted, no whitespace). Identical events are one event.

An event whose key is already held (within SNACKVIDEO_IDEMPOTENCY_TTL_SECONDS, 48 h by
default) is not queued again: its first job id is printed instead, and the summary
counts it as already queued. A re-run therefore queues only what is missing.
"""


def add_parser(commands: Any) -> None:
    enqueue = commands.add_parser(
        "enqueue",
        help="validate and enqueue events from a JSON object or JSON Lines file",
        description="Validate events, then enqueue them for delivery to Scalev.",
        epilog=ENQUEUE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    enqueue.add_argument("--store", required=True, help="the store's unique_id")
    keys = enqueue.add_mutually_exclusive_group()
    keys.add_argument(
        "--idempotency-key-field",
        metavar="FIELD",
        help="use each event's top-level FIELD (a non-empty string) as its idempotency key",
    )
    keys.add_argument(
        "--idempotency-key-from-content",
        action="store_true",
        help="derive each event's idempotency key from a hash of the store and its content",
    )
    enqueue.add_argument("file", nargs="?", default="-", help="FILE or - for stdin (default)")
    enqueue.set_defaults(handler=cmd_enqueue)



class InputTooLarge(ValueError):
    """Raised when the input is over ``MAX_INPUT_BYTES`` (or is not UTF-8 text)."""


def read_input(stream: BinaryIO, limit: int = MAX_INPUT_BYTES) -> str:
    """The input as text, read no further than ``limit`` bytes."""
    data = stream.read(limit + 1)
    if len(data) > limit:
        raise InputTooLarge(f"input: more than {limit} bytes; split it and run once per part")
    try:
        return str(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise InputTooLarge(f"input: not UTF-8 text (byte {exc.start})") from None


def _decode(text: str) -> Any:
    """One JSON document; ``_Unreadable`` when it is not JSON or too deep to decode.

    json.loads recurses once per nesting level and raises RecursionError near 1,000 levels:
    a value that deep is refused anyway (``MAX_PAYLOAD_DEPTH``), so it is reported as such.
    """
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        return _Unreadable(f"not valid JSON ({exc.msg})")
    except RecursionError:
        return _Unreadable(f"payload: nested deeper than {MAX_PAYLOAD_DEPTH} levels")


def read_payloads(text: str) -> list[tuple[int, Any]]:
    """(line number, decoded JSON) for a single JSON document or for JSON Lines."""
    stripped = text.strip()
    if not stripped:
        return []
    whole = _decode(stripped)
    if isinstance(whole, dict):
        return [(1, whole)]
    items: list[tuple[int, Any]] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            items.append((number, _decode(line)))
    return items


class _Unreadable:
    def __init__(self, message: str) -> None:
        self.message = message


KeyOf = Callable[[str, dict[str, Any]], str]


def field_key(field: str) -> KeyOf:
    """The idempotency key is the event's top-level ``field``; InvalidEvent names it if unfit."""

    def key_of(store_id: str, payload: dict[str, Any]) -> str:
        if field not in payload:
            raise InvalidEvent([(field, "missing: it holds the idempotency key")])
        value = payload[field]
        problem = idempotency_key_problem(value)
        if problem is not None:
            raise InvalidEvent([(field, f"idempotency key {problem}")])
        assert isinstance(value, str)  # narrowed by idempotency_key_problem
        return value

    return key_of


def content_key(store_id: str, payload: dict[str, Any]) -> str:
    """A key that only this store's event with this content has: whitespace and key order
    of the input line do not change it."""
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    digest = hashlib.sha256(f"{store_id}\n{canonical}".encode()).hexdigest()
    return CONTENT_KEY_PREFIX + digest


def cmd_enqueue(args: argparse.Namespace) -> int:
    try:
        store_id = validate_store_id(args.store)
    except InvalidEvent as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    try:
        if args.file == "-":
            text = read_input(sys.stdin.buffer)
        else:
            with open(args.file, "rb") as stream:
                text = read_input(stream)
    except OSError as exc:
        print(f"error: cannot read {args.file}: {exc.strerror}", file=sys.stderr)
        return 1
    except InputTooLarge as exc:
        print(f"error: {exc}; nothing enqueued", file=sys.stderr)
        return 1
    items = read_payloads(text)
    if not items:
        print("error: no events in input", file=sys.stderr)
        return 1
    key_of: KeyOf | None = None
    if args.idempotency_key_field is not None:
        key_of = field_key(args.idempotency_key_field)
    elif args.idempotency_key_from_content:
        key_of = content_key
    producer = Producer()  # reads SNACKVIDEO_MAX_PAYLOAD_BYTES; connects only to enqueue
    problems: list[str] = []
    payloads: list[dict[str, Any]] = []
    keys: list[str | None] = []
    for number, item in items:
        if isinstance(item, _Unreadable):
            problems.append(f"line {number}: {item.message}")
            continue
        found: list[tuple[str, str]] = []
        try:
            payloads.append(validate_payload(item, max_bytes=producer.max_payload_bytes))
        except InvalidEvent as exc:
            found += exc.problems
        # A content key hashes the whole line: only for one that validated (bounded size
        # and depth); a field key reads one top-level field of any object.
        if key_of is not None and isinstance(item, dict) and not (found and key_of is content_key):
            try:
                keys.append(key_of(store_id, item))
            except InvalidEvent as exc:
                found += exc.problems
        else:
            keys.append(None)
        problems += [f"line {number}: {field}: {message}" for field, message in found]
    if problems:
        for problem in problems:
            print(f"error: {problem}", file=sys.stderr)
        print(f"nothing enqueued: {len(problems)} problem(s)", file=sys.stderr)
        producer.close()
        return 1
    return _enqueue_in_chunks(producer, store_id, payloads, keys, keyed=key_of is not None)


def _enqueue_in_chunks(
    producer: Producer,
    store_id: str,
    payloads: list[dict[str, Any]],
    keys: list[str | None],
    *,
    keyed: bool,
) -> int:
    done = queued_now = 0
    progress = Progress.on_terminal("enqueueing", len(payloads))
    # The job ids go to stdout, maybe the same terminal: the line is erased before each
    # chunk's ids and drawn again after them.
    progress.start()
    try:
        for start in range(0, len(payloads), ENQUEUE_CHUNK):
            outcomes = producer.enqueue_many_outcomes(
                store_id,
                payloads[start : start + ENQUEUE_CHUNK],
                idempotency_keys=keys[start : start + ENQUEUE_CHUNK],
            )
            progress.clear()
            for outcome in outcomes:
                print(outcome.job_id)
            sys.stdout.flush()  # what is printed is queued, even if a later chunk fails
            done += len(outcomes)
            queued_now += sum(outcome.queued_now for outcome in outcomes)
            progress.advance(len(outcomes))
    except EnqueueError as exc:
        progress.clear()
        print(f"error: {exc}", file=sys.stderr)
        print(
            f"error: {done} of {len(payloads)} event(s) are queued (their job ids are "
            "printed); the chunk being sent may be queued too.",
            file=sys.stderr,
        )
        if keyed:
            hint = "run the same command again: events already queued are not queued twice"
        else:
            hint = (
                f"running this input again would queue those {done} again: "
                "use --idempotency-key-field or --idempotency-key-from-content"
            )
        print(f"hint: {hint}", file=sys.stderr)
        return 1
    finally:
        producer.close()
    progress.clear()
    summary = f"enqueued {queued_now} event(s) for store {store_id}"
    if queued_now < done:
        summary += f"; {done - queued_now} already queued (same idempotency key)"
    print(summary, file=sys.stderr)
    return 0
