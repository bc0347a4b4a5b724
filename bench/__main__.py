"""``make bench`` / ``python -m bench``: run every benchmark, print the tables, write the docs.

Sections run in order (``--only`` picks some): the sandbox's ceiling, the producer,
the HTTP ingest service, the producer waiting for a replica, unthrottled delivery, ours
against the naive Celery task with and without Flower, Redis round trips, candidate
hot-path changes, throttled delivery (``bench/throttle.py``, when it exists), memory,
capacity at 150 ms of Scalev latency, a backlog drained at a 100/s limit
(``--backlog-jobs``, 5,000 here; ``python -m bench.backlog`` runs the 100,000 of the issue),
and a py-spy profile of the hot path.
The full run writes ``docs/benchmarks.md``: the tables, the machine, the versions and the
date. Hand-written analysis between the ``notes`` markers of the existing file is kept
across runs.

    python -m bench [--n 5000] [--concurrency 1,4,8,16] [--only producer,delivery]
                    [--output docs/benchmarks.md] [--note "shared machine"]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib
import importlib.metadata
import importlib.util
import inspect
import io
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from bench import (
    backlog,
    capacity,
    delivery,
    hotpath,
    ingest,
    memory,
    producer,
    replicas,
    roundtrips,
    sandbox_ceiling,
    variants,
    versus_naive,
)
from bench.common import (
    DEFAULT_N,
    ROOT,
    Section,
    doc_parser,
    env_int,
    load_average,
    redis_server_binary,
)

#: The backlog section's size under ``make bench``: its full 100,000 run is a separate one.
BACKLOG_JOBS = 5_000
NOTES_START = "<!-- notes:start (kept when make bench rewrites this file) -->"
NOTES_END = "<!-- notes:end -->"
SECTIONS = (
    "sandbox",
    "producer",
    "ingest",
    "replicas",
    "delivery",
    "versus_naive",
    "roundtrips",
    "variants",
    "throttle",
    "memory",
    "capacity",
    "backlog",
    "hotpath",
)


class Tee(io.TextIOBase):
    """Writes to the terminal and keeps a copy: a foreign benchmark's output is its result."""

    def __init__(self, terminal: TextIO) -> None:
        self.terminal = terminal
        self.copy = io.StringIO()

    def write(self, text: str) -> int:
        self.terminal.write(text)
        self.terminal.flush()
        return self.copy.write(text)


def run_throttle() -> Section:
    """The throttle issue's benchmark (another module's): run its ``main``, keep its output."""
    section = Section("Throttled delivery (`bench/throttle.py`)")
    if importlib.util.find_spec("bench.throttle") is None:
        section.add("Skipped: `bench/throttle.py` does not exist yet.")
        return section
    tee = Tee(sys.stdout)
    saved_argv = sys.argv
    result: Any = None
    try:
        module = importlib.import_module("bench.throttle")
        main: Callable[..., Any] = module.main
        # Its own defaults, not our flags: argparse in its main would read sys.argv.
        sys.argv = ["python -m bench.throttle"]
        with contextlib.redirect_stdout(tee):
            result = main([]) if inspect.signature(main).parameters else main()
    except SystemExit as exc:
        if exc.code not in (0, None):
            section.add(f"`bench.throttle.main` exited with {exc.code}.")
    except Exception as exc:  # a foreign benchmark must not stop the others
        section.add(f"`bench.throttle.main` failed: `{type(exc).__name__}: {exc}`")
    finally:
        sys.argv = saved_argv
    if hasattr(result, "markdown"):
        section.blocks.append(str(result.markdown()))
    elif isinstance(result, str):
        section.blocks.append(result)
    elif tee.copy.getvalue().strip():
        section.blocks.append(printed_markdown(tee.copy.getvalue()))
    return section


def printed_markdown(printed: str) -> str:
    """What a benchmark printed from its first table on, without progress lines."""
    lines = printed.strip().splitlines()
    first_table = next((i for i, line in enumerate(lines) if line.startswith("|")), 0)
    kept = [line for line in lines[first_table:] if not line.startswith("wrote ")]
    return "\n".join(kept).strip()


def versions() -> dict[str, str]:
    found = {"Python": platform.python_version()}
    for dist in ("celery", "kombu", "redis", "requests", "pydantic"):
        try:
            found[dist if dist != "redis" else "redis-py"] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            found[dist] = "not installed"
    try:
        out = subprocess.run(
            [redis_server_binary(), "--version"], capture_output=True, text=True, timeout=10
        ).stdout
        found["redis-server"] = out.split("v=", 1)[1].split()[0] if "v=" in out else "?"
    except Exception:  # a missing version is not worth failing the run
        found["redis-server"] = "?"
    return found


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def memory_gib() -> str:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return f"{int(line.split()[1]) / 1024**2:.0f} GiB"
    except OSError:
        pass
    return "?"


def header(args: argparse.Namespace, started: float, load_start: str) -> str:
    when = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    found = versions()
    lines = [
        "# Benchmarks",
        "",
        "Written by `make bench` (`python -m bench`); regenerate it rather than edit the "
        "tables by hand. Every part runs on this machine, on 127.0.0.1: a private "
        "redis-server, the sandbox (`python -m sandbox`) as Scalev, real "
        "`celery -A worker worker` processes. Each table compares against a baseline "
        "measured in the same run.",
        "",
        f"- Date: {when}; the whole run took {(time.monotonic() - started) / 60:.1f} min",
        f"- Machine: **{os.cpu_count()} cores** ({cpu_model()}), {memory_gib()} memory, "
        f"{platform.system()} {platform.release()}",
        f"- Load average (1/5/15 min) at start: {load_start}; at end: {load_average()}",
        "- Versions: " + ", ".join(f"{name} {version}" for name, version in found.items()),
        f"- Sizes: N = {args.n:,} events per delivery run, concurrency "
        f"{args.concurrency}; `python -m bench --help` for the knobs",
    ]
    if args.note:
        lines += ["", f"> **Note:** {args.note}"]
    return "\n".join(lines) + "\n"


def kept_notes(path: Path) -> str:
    if path.exists():
        text = path.read_text()
        if NOTES_START in text and NOTES_END in text:
            start = text.index(NOTES_START)
            return text[start : text.index(NOTES_END) + len(NOTES_END)]
    return f"{NOTES_START}\n## Reading the numbers\n\n(no notes yet)\n{NOTES_END}"


def run_sections(args: argparse.Namespace, chosen: list[str]) -> list[Section]:
    concurrencies = delivery.parse_ints(args.concurrency)
    runners: dict[str, Callable[[], Section]] = {
        "sandbox": lambda: sandbox_ceiling.run(args.n, concurrencies),
        "producer": lambda: producer.run(args.n),
        "ingest": lambda: ingest.run(args.n),
        "replicas": lambda: replicas.run(args.n),
        "delivery": lambda: delivery.run(args.n, concurrencies)[0],
        # Issue 16's comparison: C = 1 is latency-bound and not one of its targets.
        "versus_naive": lambda: versus_naive.run(
            min(args.n, 3_000), [c for c in concurrencies if c > 1] or concurrencies
        )[0],
        "roundtrips": lambda: roundtrips.run(min(args.n, 1_000)),
        "variants": lambda: variants.run(min(args.n, 1_500)),
        "throttle": run_throttle,
        "memory": lambda: memory.run(min(args.n, 2_000)),
        "capacity": capacity.run,
        "backlog": lambda: backlog.run(jobs=args.backlog_jobs),
        "hotpath": lambda: hotpath.run(max(args.n, 4_000)),
    }
    sections = []
    for name in chosen:
        began = time.monotonic()
        print(f"\n=== {name} (load average {load_average()}) ===", flush=True)
        try:
            section = runners[name]()
        except Exception as exc:  # one broken benchmark must not hide the rest
            section = Section(name, blocks=[f"Failed: `{type(exc).__name__}: {exc}`"])
            print(section.blocks[0], flush=True)
        print(f"=== {name}: {time.monotonic() - began:.0f} s ===", flush=True)
        sections.append(section)
    return sections


def main(argv: list[str] | None = None) -> int:
    parser = doc_parser("python -m bench", __doc__)
    parser.add_argument(
        "--n",
        type=int,
        default=env_int("BENCH_N", DEFAULT_N),
        help="events per run (env BENCH_N; default %(default)s)",
    )
    parser.add_argument("--concurrency", default=os.environ.get("BENCH_CONCURRENCY", "1,4,8,16"))
    parser.add_argument(
        "--backlog-jobs",
        type=int,
        default=env_int("BENCH_BACKLOG_JOBS", BACKLOG_JOBS),
        help="jobs of the backlog section (env BENCH_BACKLOG_JOBS; default %(default)s: "
        "50 s at 100/s; the issue's 100,000 take 17 min: python -m bench.backlog)",
    )
    parser.add_argument("--only", default="", help=f"comma-separated subset of {SECTIONS}")
    parser.add_argument(
        "--output",
        type=Path,
        default=None,
        help="where to write the report (default docs/benchmarks.md, and only after a full run)",
    )
    parser.add_argument(
        "--note",
        default=os.environ.get("BENCH_NOTE", ""),
        help="a remark for the report's header, e.g. about the machine",
    )
    args = parser.parse_args(argv)  # fmt: skip
    chosen = delivery.split(args.only) or list(SECTIONS)
    unknown = sorted(set(chosen) - set(SECTIONS))
    if unknown:
        parser.error(f"unknown sections: {', '.join(unknown)}")
    output = args.output or (ROOT / "docs" / "benchmarks.md" if not args.only else None)

    started, load_start = time.monotonic(), load_average()
    print(f"{os.cpu_count()} cores; load average {load_start}; N = {args.n:,}", flush=True)
    sections = run_sections(args, chosen)
    print(f"\nTotal: {(time.monotonic() - started) / 60:.1f} min", flush=True)
    if output is not None:
        notes = kept_notes(output)
        parts = [header(args, started, load_start), notes + "\n", *(s.markdown() for s in sections)]
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text("\n".join(parts))
        print(f"wrote {output}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
