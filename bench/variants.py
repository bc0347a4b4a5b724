"""What candidate hot-path changes would buy, measured before anyone edits ``worker/``.

Each row is the delivery benchmark (full queue, unthrottled sandbox, events/s between the
first and last accepted event) for ``celery -A bench.variant_worker`` with the changes
named in the first column (see ``bench/variant_worker.py``), against the same app as
shipped, run just before it (one as-shipped run per two variants, so that drifting
background load hits both alike). CPU ms per event (the worker's processes) is the
steadier measure on a shared machine. Last row: Celery alone, for scale.

    python -m bench.variants [--n 2000] [--pool prefork] [--concurrency 8]
                             [--variants events_off,quiet_logs,...]
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence

from celery import Celery

from bench.common import (
    BenchError,
    Section,
    Worker,
    doc_parser,
    env_int,
    table,
    wait_until,
    worker_env,
)
from bench.delivery import Result, Stack, fill_ours, measure_worker, run_timeout, split
from bench.naive_worker import DONE_KEY, FIRST_KEY, LAST_KEY, TOUCH_TASK

DEFAULT_VARIANTS = (
    "events_off",
    "quiet_logs",
    "celery_task_log",
    "prefetch4",
    "events_off,quiet_logs,prefetch4",
)
AS_SHIPPED = "as shipped"
#: One as-shipped run before every this many variants: the reference drifts with the load.
SHIPPED_EVERY = 2


def run_variant(stack: Stack, variant: str, pool: str, concurrency: int, n: int) -> Result:
    stack.clean()
    fill_ours(stack.redis.url, n, "variant")
    env = worker_env(stack.redis.url, stack.sandbox.base_url, BENCH_VARIANT=variant)
    worker = Worker("bench.variant_worker", env, pool=pool, concurrency=concurrency)
    return measure_worker(stack, worker, variant or AS_SHIPPED, concurrency, n, run_timeout(n))


def run_celery_floor(stack: Stack, pool: str, concurrency: int, n: int) -> Result:
    """Celery alone (default settings): tasks that only write their finish time to Redis."""
    stack.clean()
    app = Celery("bench-fill", broker=stack.redis.url)
    try:
        with app.producer_or_acquire() as producer:
            for _ in range(n):
                app.send_task(TOUCH_TASK, producer=producer)
    finally:
        app.close()
    client = stack.redis.client
    assert client is not None
    worker = Worker("bench.naive_worker", worker_env(stack.redis.url, ""), pool=pool,
                    concurrency=concurrency)  # fmt: skip
    note = ""
    try:
        worker.start()
        cpu_start, done_start = worker.cpu_seconds(), int(client.get(DONE_KEY) or 0)
        try:
            wait_until(lambda: int(client.get(DONE_KEY) or 0) >= n, run_timeout(n),
                       interval=0.25, what="no-op tasks")  # fmt: skip
        except BenchError as exc:
            note = str(exc)
        cpu, done = worker.cpu_seconds() - cpu_start, int(client.get(DONE_KEY) or 0)
    finally:
        worker.cleanup()
    first, last = float(client.get(FIRST_KEY) or 0), float(client.get(LAST_KEY) or 0)
    delivered = done - done_start
    return Result(
        "Celery's floor: a no-op task (naive app, default settings)",
        concurrency, n, done, last - first,
        cpu * 1000 / delivered if delivered > 0 else None, 0.0, done, note,
    )  # fmt: skip


def run(
    n: int = 1_500,
    pool: str = "prefork",
    concurrency: int = 8,
    variants: Sequence[str] = DEFAULT_VARIANTS,
) -> Section:
    section = Section(
        f"Candidate hot-path changes ({pool}, -c {concurrency}, N = {n:,})",
        __doc__.split("\n\n")[1] if __doc__ else "",
    )
    stack = Stack()
    shipped: list[Result] = []
    tried: list[tuple[Result, Result]] = []  # (variant, the as-shipped run just before it)
    try:
        for index, variant in enumerate(variants):
            if index % SHIPPED_EVERY == 0:
                shipped.append(run_variant(stack, "", pool, concurrency, n))
            tried.append((run_variant(stack, variant, pool, concurrency, n), shipped[-1]))
            print(f"  {variant}: {tried[-1][0].rate:,.0f} vs {shipped[-1].rate:,.0f} events/s")
        floor = run_celery_floor(stack, pool, concurrency, n)
    finally:
        stack.close()
    reference = statistics.median(r.rate for r in shipped)
    rows = [
        [
            AS_SHIPPED + f" (median of {len(shipped)})",
            f"{reference:,.0f}",
            "1.00",
            f"{statistics.median(r.worker_cpu_ms_per_event or 0 for r in shipped):.2f}",
            "",
        ]
    ]
    for result, base in tried:
        rows.append(
            [
                "`" + result.runner.replace(",", " + ") + "`",
                f"{result.rate:,.0f}",
                f"{result.rate / base.rate:.2f}" if base.rate else "-",
                f"{result.worker_cpu_ms_per_event or 0:.2f}",
                "; ".join(filter(None, [f"as shipped just before: {base.rate:,.0f}, "
                                        f"{base.worker_cpu_ms_per_event or 0:.2f} ms",
                                        result.note])),
            ]
        )  # fmt: skip
    rows.append(
        [floor.runner, f"{floor.rate:,.0f}", f"{floor.rate / reference:.2f}",
         f"{floor.worker_cpu_ms_per_event or 0:.2f}",
         floor.note or "no HTTP, no bookkeeping: the most any Celery task moves here"]
    )  # fmt: skip
    section.add(
        table(["variant", "events/s", "÷ as shipped (run just before)", "CPU ms/event",
               "notes"], rows)
    )  # fmt: skip
    return section


def main(argv: list[str] | None = None) -> int:
    parser = doc_parser("python -m bench.variants", __doc__)
    parser.add_argument("--n", type=int, default=env_int("BENCH_VARIANT_N", 1_500))
    parser.add_argument("--pool", default="prefork")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument(
        "--variants",
        default=";".join(DEFAULT_VARIANTS),
        help="semicolon-separated; each a comma-separated set of changes",
    )
    args = parser.parse_args(argv)  # fmt: skip
    variants = [v for v in args.variants.split(";") if v.strip()]
    assert all(split(v) for v in variants)
    run(args.n, args.pool, args.concurrency, variants)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
