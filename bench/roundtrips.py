"""Redis round trips per delivery: ours (bookkeeping) apart from kombu's (the broker).

N events are delivered by ``celery -A bench.counting_worker worker`` (the real app, with
each redis-py ``send_packed_command`` tallied by sender and content; see that module). A
pipeline or a Lua call is one round trip however many commands it carries. As a check
that nothing escaped the count, the private redis-server's ``INFO commandstats`` over
the same run is shown beside it (commands, not round trips; idle polling included).

    python -m bench.roundtrips [--n 1000] [--pool prefork] [--concurrency 4]
"""

from __future__ import annotations

import json
import shutil
import time
from collections import Counter

from bench.common import (
    Section,
    Worker,
    doc_parser,
    env_int,
    scratch_dir,
    table,
    wait_for_accepted,
    worker_env,
)
from bench.delivery import Stack, fill_ours, run_timeout

TARGET_ROUND_TRIPS = 3


def collect(count_dir_files: list[dict[str, object]]) -> tuple[Counter[tuple[str, str]], int]:
    counts: Counter[tuple[str, str]] = Counter()
    tasks = 0
    for data in count_dir_files:
        tasks += int(data["tasks"])  # type: ignore[call-overload]
        for key, n in dict(data["counts"]).items():  # type: ignore[call-overload]
            who, label = key.split("\t", 1)
            counts[(who, label)] += int(n)
    return counts, tasks


def sent_per_command(counts: Counter[tuple[str, str]]) -> Counter[str]:
    """Commands the clients sent, by name (``EVALSHA(x)`` counted as ``EVALSHA``)."""
    sent: Counter[str] = Counter()
    for (_, label), n in counts.items():
        if label.startswith(("pipeline[", "MULTI[")):
            names = label[label.index("[") + 1 : -1].split("+")
            if label.startswith("MULTI["):
                names += ["MULTI", "EXEC"]
        else:
            names = [label]
        for name in names:
            sent[name.split("(", 1)[0]] += n
    return sent


def commands_in(label: str) -> int:
    if label.startswith(("pipeline[", "MULTI[")):
        inner = label[label.index("[") + 1 : -1]
        return len(inner.split("+")) + (2 if label.startswith("MULTI[") else 0)
    return 1


def run(n: int = 1_000, pool: str = "prefork", concurrency: int = 4) -> Section:
    section = Section(
        f"Redis round trips per delivery ({pool}, -c {concurrency}, N = {n:,})",
        __doc__.split("\n\n")[1] if __doc__ else "",
    )
    stack = Stack()
    count_dir = scratch_dir("counts")
    try:
        stack.clean()
        fill_ours(stack.redis.url, n, "rt")
        env = worker_env(stack.redis.url, stack.sandbox.base_url, BENCH_COUNT_DIR=str(count_dir))
        worker = Worker("bench.counting_worker", env, pool=pool, concurrency=concurrency)
        try:
            worker.start()
            wait_for_accepted(stack.sandbox, n, run_timeout(n), "counted deliveries")
            time.sleep(1.0)  # the last acks land just after the final POST
        finally:
            worker.stop()  # a warm shutdown: every process writes its final tallies
        server = stack.redis.commandstats()
        files = [json.loads(p.read_text()) for p in count_dir.glob("counts-*.json")]
        counts, tasks = collect(files)
    finally:
        worker.cleanup()
        shutil.rmtree(count_dir, ignore_errors=True)
        stack.close()

    rows = []
    totals: Counter[str] = Counter()
    total_commands: Counter[str] = Counter()
    for (who, label), count in sorted(counts.items(), key=lambda kv: (kv[0][0], -kv[1])):
        per = count / tasks
        totals[who] += count
        total_commands[who] += count * commands_in(label)
        if per >= 0.01:
            rows.append([who, f"`{label}`", f"{count:,}", f"{per:.2f}"])
    section.add(
        f"{tasks:,} tasks ran. Round trips by sender and content (rows under 0.01 per "
        "delivery left out):\n\n" + table(["sender", "round trip", "count", "per delivery"], rows)
    )
    summary = [
        [who, f"{totals[who] / tasks:.2f}", f"{total_commands[who] / tasks:.2f}"]
        for who in ("ours", "broker", "mover")
        if totals[who]
    ]
    section.add(table(["sender", "round trips per delivery", "commands per delivery"], summary))
    ours = totals["ours"] / tasks if tasks else 0.0
    verdict = "met" if ours <= TARGET_ROUND_TRIPS else "NOT met"
    section.add(
        f"Target ≤ {TARGET_ROUND_TRIPS} round trips of bookkeeping per delivery: "
        f"**{verdict}** ({ours:.2f})."
    )
    sent = sent_per_command(counts)
    server_rows = [
        [f"`{name.upper()}`", f"{calls:,}", f"{sent.get(name.upper(), 0):,}",
         f"{calls / tasks:.2f}"]
        for name, calls in sorted(server.items(), key=lambda kv: -kv[1])
        if calls / tasks >= 0.01 and name not in ("config|resetstat", "info")
    ]  # fmt: skip
    section.add(
        "Cross-check, the server's `INFO commandstats` over the same run. It also counts "
        "the commands that Lua scripts run inside Redis (no round trip each), so those "
        "exceed what the clients sent; the commands sent directly must match:\n\n"
        + table(["command", "server calls", "clients sent", "server calls per delivery"],
                server_rows)
    )  # fmt: skip
    return section


def main(argv: list[str] | None = None) -> int:
    parser = doc_parser("python -m bench.roundtrips", __doc__)
    parser.add_argument("--n", type=int, default=env_int("BENCH_ROUNDTRIP_N", 1_000))
    parser.add_argument("--pool", default="prefork")
    parser.add_argument("--concurrency", type=int, default=4)
    args = parser.parse_args(argv)
    run(args.n, args.pool, args.concurrency)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
