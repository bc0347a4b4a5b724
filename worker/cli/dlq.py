"""``snackvideo dlq ...``: inspect, replay and purge the dead-letter queue.

    dlq list   [--reason R] [--store S] [--since DURATION] [--limit N] [--json]
    dlq show   ID [--json]
    dlq stats  [--json]
    dlq replay (ID... | --all | [--reason R] [--store S]) [--dry-run] [--json]
    dlq purge  (ID... | --all | [--reason R] [--store S] [--older-than DURATION])
               [--dry-run] [--yes] [--json]

An ID is an entry id from ``dlq list`` (``<job_id>-r<n>``, ``<job_id>-r<n>-invalid``) or
the job id ``enqueue`` printed, which names that job's latest entry. What an entry holds
came from outside (Scalev's answer, a shop's payload): the tables print it through
``visible``, so an escape sequence in it shows as text instead of acting on the terminal.

Exit status: 0 done, 1 an entry named was not there (or the operator declined), 2 a bad
argument. Replay and purge select their entries first, print what they will touch, then
take them in one atomic step per chunk (``DeadLetterStore``); an entry another operator or
the redrive schedule took in between is reported, not replayed twice. On a terminal a
progress line counts the chunks (``worker.cli.progress``); ``--json`` prints the result as
one object instead of the tables.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

from worker.cli.progress import Progress
from worker.connections import redis_client
from worker.deadletter import selection
from worker.deadletter.display import payload_text, utc_time
from worker.deadletter.selection import (
    TAKEN_MEANWHILE,
    Breakdown,
    EntryFilter,
    SelectionError,
    check_reason,
    parse_duration,
)
from worker.deadletter.store import DeadLetter, DeadLetterStore
from worker.escaping import visible
from worker.settings import get_settings

DEFAULT_LIST_LIMIT = 50

#: What an unknown ID is told: the forms an ID may take.
ID_FORMS = (
    "give the job id that enqueue printed, or an entry id from dlq list "
    "(<job_id>-r<n>, <job_id>-r<n>-invalid)"
)


#: Raised when an argument is malformed; the command prints it and exits 2.
UsageError = SelectionError


def check_store(store: str | None) -> str | None:
    return selection.check_store(store, name="--store")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


# -- the parser ---------------------------------------------------------------------------


def add_parser(commands: Any) -> None:
    dlq = commands.add_parser("dlq", help="inspect, replay and purge dead letters")
    sub = dlq.add_subparsers(title="dlq commands", metavar="ACTION")

    listing = sub.add_parser("list", help="list entries, newest first")
    listing.add_argument("--reason", help="e.g. http_404, no_api_key, retries_exhausted")
    listing.add_argument("--store", help="a store_id")
    listing.add_argument("--since", metavar="DURATION", help="dead-lettered within, e.g. 2h")
    listing.add_argument("--limit", type=_positive_int, default=DEFAULT_LIST_LIMIT)
    listing.add_argument("--json", action="store_true", help="print a JSON array")
    listing.set_defaults(handler=_guarded(cmd_list))

    show = sub.add_parser("show", help="print one entry: payload, reason, response body")
    show.add_argument("id", help="a job id (its latest entry) or an entry id")
    show.add_argument("--json", action="store_true", help="print the entry as JSON")
    show.set_defaults(handler=_guarded(cmd_show))

    stats = sub.add_parser("stats", help="counts by reason and store, the oldest entry")
    stats.add_argument("--json", action="store_true")
    stats.set_defaults(handler=_guarded(cmd_stats))

    replay = sub.add_parser("replay", help="move entries back to the delivery queue")
    _add_selection(replay)
    replay.set_defaults(handler=_guarded(cmd_replay))

    purge = sub.add_parser("purge", help="delete entries for good")
    _add_selection(purge)
    purge.add_argument(
        "--older-than", metavar="DURATION", help="dead-lettered longer ago than, e.g. 7d"
    )
    purge.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    purge.set_defaults(handler=_guarded(cmd_purge))

    dlq.set_defaults(handler=lambda _args: dlq.print_help() or 2)


def _add_selection(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "ids", nargs="*", metavar="ID", help="job ids (their latest entry) or entry ids"
    )
    parser.add_argument("--all", action="store_true", help="every entry")
    parser.add_argument("--reason")
    parser.add_argument("--store")
    parser.add_argument(
        "--dry-run", action="store_true", help="print what would be touched, change nothing"
    )
    parser.add_argument(
        "--json", action="store_true", help="print the result as one JSON object, no progress"
    )


def _guarded(command: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        try:
            return command(args)
        except UsageError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2

    return run


def open_store() -> DeadLetterStore:
    return DeadLetterStore.from_settings(redis_client(), get_settings())


# -- reading ------------------------------------------------------------------------------


def cmd_list(args: argparse.Namespace) -> int:
    reason, store_id = check_reason(args.reason), check_store(args.store)
    since = time.time() - parse_duration(args.since) if args.since else None
    entries = open_store().find_entries(
        reason=reason, store_id=store_id, since=since, limit=args.limit
    )
    if len(entries) == args.limit:
        print(f"(the newest {args.limit}; raise --limit to see more)", file=sys.stderr)
    if args.json:
        print(json.dumps([entry.to_dict() for entry in entries], indent=2, default=repr))
        return 0
    if not entries:
        print("no dead-letter entries match", file=sys.stderr)
        return 0
    print(LIST_HEADER)
    for entry in entries:
        print(list_row(entry))
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    entry = open_store().find(args.id)
    if entry is None:
        _report_missing([args.id])
        return 1
    if args.json:
        print(json.dumps(entry.to_dict(), indent=2, default=repr))
        return 0
    print(show_text(entry))
    return 0


LIST_HEADER = (
    f"{'ID':<40} {'REASON':<17} {'STATUS':>6} {'STORE':<16} {'CLICK_ID':<24} "
    f"{'REPLAYS':>7}  DEAD-LETTERED (UTC)"
)


def list_row(entry: DeadLetter) -> str:
    """One row of ``dlq list``: every field printable, whatever the entry holds."""
    return (
        f"{visible(entry.id):<40} {visible(entry.reason):<17} "
        f"{_shown(entry.status_code or '-'):>6} {visible(entry.store_id or '-'):<16} "
        f"{_cut(visible(entry.click_id or '-'), 24):<24} "
        f"{_shown(entry.replay_count):>7}  {_time(entry.dead_lettered_at)}"
    )


def show_text(entry: DeadLetter) -> str:
    """What ``dlq show`` prints for one entry (without ``--json``)."""
    rows = [
        ("id", entry.id),
        ("job_id", entry.job_id),
        ("store_id", entry.store_id or "-"),
        ("click_id", entry.click_id or "-"),
        ("reason", entry.reason),
        ("status_code", entry.status_code if entry.status_code is not None else "-"),
        *([("location", entry.location)] if entry.location is not None else []),
        ("attempts", entry.attempts),
        ("replay_count", entry.replay_count),
        ("enqueued_at", _time(entry.enqueued_at)),
        ("dead_lettered_at", _time(entry.dead_lettered_at)),
    ]
    lines = [f"{name + ':':<18} {_shown(value)}" for name, value in rows]
    lines += ["error:", _indent(visible(str(entry.error or "-"), multiline=True)), "payload:"]
    lines.append(_indent(visible(payload_text(entry.payload), multiline=True)))
    lines.append(f"\nreplay with: snackvideo dlq replay {visible(entry.id)}")
    return "\n".join(lines)


def collect_stats(store: DeadLetterStore) -> dict[str, Any]:
    oldest = store.oldest()
    return {
        "entries": len(store),
        "by_reason": store.counts_by_reason(),
        "by_store": store.counts_by_store(),
        "oldest": None
        if oldest is None
        else {
            "id": oldest.id,
            "reason": oldest.reason,
            "store_id": oldest.store_id,
            "dead_lettered_at": oldest.dead_lettered_at,
        },
        "trimmed_by_reason": store.trimmed_by_reason(),
        "max_entries": store.max_entries,
        "max_age_seconds": store.max_age_seconds,
    }


def cmd_stats(args: argparse.Namespace) -> int:
    stats = collect_stats(open_store())
    if args.json:
        print(json.dumps(stats, indent=2))
        return 0
    print(
        f"entries      {stats['entries']} (keeps at most {stats['max_entries']}, "
        f"for {_span(stats['max_age_seconds'])})"
    )
    oldest = stats["oldest"]
    if oldest is not None:
        age = _span(time.time() - oldest["dead_lettered_at"])
        print(
            f"oldest       {visible(oldest['id'])} {visible(oldest['reason'])} "
            f"{_time(oldest['dead_lettered_at'])} UTC ({age} ago)"
        )
    _print_counts("by reason", stats["by_reason"])
    _print_counts("by store", {k or "-": v for k, v in stats["by_store"].items()})
    trimmed = stats["trimmed_by_reason"]
    print(f"trimmed by retention  {sum(trimmed.values())}")
    for reason, count in trimmed.items():
        print(f"  {visible(reason):<22} {count}")
    return 0


# -- replay and purge ---------------------------------------------------------------------


def select(store: DeadLetterStore, args: argparse.Namespace) -> tuple[list[DeadLetter], list[str]]:
    """The entries an ID list or a filter names, oldest first, and the ids not found."""
    reason, store_id = check_reason(args.reason), check_store(args.store)
    older_than = getattr(args, "older_than", None)
    filters = [reason, store_id, older_than]
    if args.ids and (args.all or any(f is not None for f in filters)):
        raise UsageError("give entry IDs or --all or filters, not several of them")
    if args.all and any(f is not None for f in filters):
        raise UsageError("--all selects every entry; drop it to filter")
    if not (args.ids or args.all or any(f is not None for f in filters)):
        options = "--all, --reason, --store" + (
            ", --older-than" if hasattr(args, "older_than") else ""
        )
        raise UsageError(f"say which entries: give entry IDs or {options}")
    before = time.time() - parse_duration(older_than) if older_than else None
    where = EntryFilter(reason=reason, store_id=store_id, before=before)
    return selection.select(store, ids=args.ids, where=where)


def describe(verb: str, entries: Sequence[DeadLetter]) -> None:
    """How many, by reason and by store, then which: what --dry-run and a prompt show."""
    print(f"{verb} {_count(len(entries))}")
    if not entries:
        return
    counts = Breakdown.of(entries)
    print("  by reason: " + ", ".join(f"{visible(k)} {v}" for k, v in counts.by_reason.items()))
    print("  by store:  " + ", ".join(f"{visible(k)} {v}" for k, v in counts.by_store.items()))
    for entry in entries:
        print(
            f"  {visible(entry.id)}  {visible(entry.reason)}  {visible(entry.store_id or '-')}  "
            f"click_id={visible(entry.click_id or '-')}"
        )


def json_result(
    action: str, dry_run: bool, entries: Sequence[DeadLetter], gone: Sequence[str] = ()
) -> str:
    """What ``--json`` prints: the entries touched (or that would be), and those skipped."""
    return json.dumps(
        {
            "action": action,
            "dry_run": dry_run,
            "count": len(entries),
            "by_reason": dict(Counter(entry.reason for entry in entries)),
            "by_store": dict(Counter(entry.store_id or "-" for entry in entries)),
            "ids": [entry.id for entry in entries],
            "skipped": [{"id": entry_id, "why": TAKEN_MEANWHILE} for entry_id in gone],
        },
        indent=2,
    )


def _report_missing(missing: Sequence[str], why: str = f": {ID_FORMS}") -> None:
    for wanted in missing:
        # repr: a pasted id may hold anything, and repr escapes what is not printable.
        print(f"error: no dead-letter entry {wanted!r}{why}", file=sys.stderr)


def cmd_replay(args: argparse.Namespace) -> int:
    store = open_store()
    entries, missing = select(store, args)
    if missing:
        _report_missing(missing)
        print("nothing replayed", file=sys.stderr)
        return 1
    if args.dry_run:
        if args.json:
            print(json_result("replay", True, entries))
        else:
            describe("would replay", entries)
        return 0
    taken, gone = _take_with_progress(args, "replaying", entries, store, selection.replay)
    if args.json:
        print(json_result("replay", False, taken, gone))
    else:
        describe("replayed", taken)
    return _report_taken_meanwhile(args, gone)


def cmd_purge(args: argparse.Namespace) -> int:
    store = open_store()
    entries, missing = select(store, args)
    if missing:
        _report_missing(missing)
        print("nothing purged", file=sys.stderr)
        return 1
    if args.dry_run:
        if args.json:
            print(json_result("purge", True, entries))
        else:
            describe("would purge", entries)
        return 0
    if not args.yes and entries:
        if args.json:
            raise UsageError("--json cannot ask for confirmation: add --yes (or --dry-run)")
        describe("about to purge", entries)
        if not _confirm(f"Delete {_count(len(entries))} for good? [y/N] "):
            print("nothing purged", file=sys.stderr)
            return 1
    taken, gone = _take_with_progress(args, "purging", entries, store, selection.purge)
    if args.json:
        print(json_result("purge", False, taken, gone))
    else:
        print(f"purged {_count(len(taken))}")
    return _report_taken_meanwhile(args, gone)


def _take_with_progress(
    args: argparse.Namespace,
    label: str,
    entries: list[DeadLetter],
    store: DeadLetterStore,
    take: Callable[..., selection.TakeResult],
) -> tuple[list[DeadLetter], list[str]]:
    """Replay or purge (``take``) with the progress line: (entries taken, ids skipped)."""
    progress = Progress.on_terminal(label, len(entries), json_output=args.json)
    with progress.running():
        result = take(store, entries, progress.advance)
    return result.taken, [entry.id for entry, _why in result.skipped]


def _report_taken_meanwhile(args: argparse.Namespace, gone: list[str]) -> int:
    """Name what another replay or purge took first; an error only for ids asked by name."""
    _report_missing(gone, f" any more ({TAKEN_MEANWHILE})")
    return 1 if gone and args.ids else 0


def _confirm(prompt: str) -> bool:
    print(prompt, end="", flush=True)
    answer = sys.stdin.readline()  # "" at end of input (no terminal): a no
    return answer.strip().lower() in ("y", "yes")


# -- formatting ---------------------------------------------------------------------------


def _count(n: int) -> str:
    return f"{n} entr{'y' if n == 1 else 'ies'}"


def _time(value: float | None) -> str:
    return visible(utc_time(value))


def _shown(value: Any) -> str:
    return visible(str(value))


def _span(seconds: float) -> str:
    for unit, size in (("d", 86_400), ("h", 3_600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f}{unit}"
    return f"{seconds:.0f}s"


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _indent(text: str) -> str:
    return "\n".join("  " + line for line in text.splitlines() or [""])


def _print_counts(title: str, counts: dict[str, int]) -> None:
    print(f"{title:<12} {sum(counts.values())}")
    for name, count in sorted(counts.items(), key=lambda item: (-item[1], item[0])):
        print(f"  {visible(name):<22} {count}")
