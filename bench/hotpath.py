"""Where a worker's CPU goes while it delivers: py-spy on the real worker under load.

The queue is filled, ``celery -A worker worker`` starts on it, and once events flow
``py-spy record --subprocesses --nonblocking`` samples the main process and every pool
child for a few seconds (idle threads excluded: only samples that were running count).
The raw stacks are folded three ways: per process role, per library of the leaf frame
(self time), and per step of ``Dispatcher.deliver`` (inclusive time).

    python -m bench.hotpath [--n 4000] [--pool prefork] [--concurrency 4] [--seconds 8]
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from bench.common import (
    PYTHON,
    BenchError,
    Section,
    Worker,
    doc_parser,
    env_int,
    scratch_dir,
    table,
    wait_until,
    worker_env,
)
from bench.delivery import Stack, fill_ours

OWN_FILE = "worker/delivery/dispatcher.py"
DELIVER_FRAME = f"Dispatcher.deliver ({OWN_FILE})"
_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*)\)$")


def py_spy() -> str | None:
    beside = Path(PYTHON).with_name("py-spy")
    return str(beside) if beside.exists() else shutil.which("py-spy")


@dataclass
class Profile:
    """Folded stacks from ``py-spy record --format raw``: (frames root→leaf, samples)."""

    stacks: list[tuple[list[str], int]]

    @classmethod
    def parse(cls, text: str) -> Profile:
        stacks = []
        for line in text.splitlines():
            frames, _, count = line.rpartition(" ")
            if frames and count.isdigit():
                stacks.append((frames.split(";"), int(count)))
        return cls(stacks)

    @property
    def total(self) -> int:
        return sum(n for _, n in self.stacks)

    def by_role(self) -> Counter[str]:
        roles: Counter[str] = Counter()
        for frames, n in self.stacks:
            depth = sum(1 for f in frames if f.startswith("process "))
            roles["pool child" if depth > 1 else "main process"] += n
        return roles

    def self_by_library(self) -> Counter[str]:
        libraries: Counter[str] = Counter()
        for frames, n in self.stacks:
            libraries[_library(frames[-1])] += n
        return libraries

    def self_by_function(self) -> Counter[str]:
        functions: Counter[str] = Counter()
        for frames, n in self.stacks:
            functions[frames[-1]] += n
        return functions

    def deliver_steps(self) -> Counter[str]:
        """Inclusive samples of each step inside ``Dispatcher.deliver``."""
        steps: Counter[str] = Counter()
        for frames, n in self.stacks:
            if DELIVER_FRAME not in frames:
                continue
            inner = frames[frames.index(DELIVER_FRAME) :]
            own = [f for f in inner if f.endswith(f"({OWN_FILE})")]
            last_own = max(i for i, f in enumerate(inner) if f.endswith(f"({OWN_FILE})"))
            callees = [f for f in inner[last_own + 1 :] if "<locals>" not in f]
            callee = callees[0] if callees else "(own code)"
            steps[f"{_func(own[-1])} → {_func(callee)}"] += n
        return steps


def _func(frame: str) -> str:
    match = _FRAME.match(frame)
    return match.group("func") if match else frame


def _library(frame: str) -> str:
    match = _FRAME.match(frame)
    if not match:
        return frame
    path = match.group("file")
    if path.startswith("<"):
        return path
    head = path.split("/", 1)[0]
    return head.removesuffix(".py")


MODES = {
    # Every thread that is not idle: where the wall-clock time of a delivery goes,
    # waiting on a socket included (py-spy counts a thread blocked in recv as active).
    "wall": [],
    # Only the thread holding the GIL: the Python CPU cost.
    "gil": ["--gil"],
}


def record(
    n: int, pool: str, concurrency: int, seconds: float, rate: int = 100
) -> tuple[dict[str, Profile], str]:
    binary = py_spy()
    if binary is None:
        raise BenchError("py-spy is not installed (pip install py-spy)")
    stack = Stack()
    out_dir = scratch_dir("pyspy")
    profiles: dict[str, Profile] = {}
    try:
        fill_ours(stack.redis.url, n, "hot")
        env = worker_env(stack.redis.url, stack.sandbox.base_url)
        worker = Worker("worker", env, pool=pool, concurrency=concurrency)
        try:
            worker.start()
            # Skip the first events: each child builds its dispatcher and connections then.
            flowing = 20 * concurrency
            wait_until(lambda: stack.sandbox.accepted() > flowing, 60, what="events to flow")
            done_before = stack.sandbox.accepted()
            for mode, flags in MODES.items():
                out = out_dir / f"{mode}.raw"
                args = [
                    binary, "record", "--pid", str(worker.pid), "--subprocesses",
                    "--duration", str(int(seconds)), "--rate", str(rate), "--format", "raw",
                    "--nolineno", "--nonblocking", *flags, "--output", str(out),
                ]  # fmt: skip
                spy = subprocess.run(
                    args, capture_output=True, text=True, timeout=seconds + 60, check=False
                )
                if not out.exists():
                    raise BenchError(f"py-spy failed: {spy.stderr.strip()[-500:]}")
                profiles[mode] = Profile.parse(out.read_text())
            done = stack.sandbox.accepted() - done_before
            dry = stack.sandbox.accepted() >= n
        finally:
            worker.cleanup()
    finally:
        stack.close()
        shutil.rmtree(out_dir, ignore_errors=True)
    note = f" (the queue ran dry while sampling: raise --n above {n:,})" if dry else ""
    return profiles, f"{done:,} events delivered while sampling{note}"


def shares(
    label: str, counters: dict[str, Counter[str]], totals: dict[str, int], limit: int
) -> str:
    """One row per name, one share column per mode, ordered by the first mode."""
    first = next(iter(counters))
    names = [name for name, _ in counters[first].most_common(limit)]
    for counter in counters.values():  # names that only matter in another mode
        names += [name for name, _ in counter.most_common(5) if name not in names]
    rows = [
        [name.replace("|", "\\|")]
        + [f"{counters[m][name] * 100 / max(1, totals[m]):.1f}%" for m in counters]
        for name in names
    ]
    return table([label, *(f"{m} share" for m in counters)], rows)


def run(n: int = 5_000, pool: str = "prefork", concurrency: int = 4, seconds: float = 6) -> Section:
    section = Section(
        f"Hot path: py-spy on a loaded worker ({pool}, -c {concurrency})",
        __doc__.split("\n\n")[1] if __doc__ else "",
    )
    try:
        profiles, done = record(n, pool, concurrency, seconds)
    except BenchError as exc:
        section.add(f"Skipped: {exc}")
        return section
    totals = {mode: p.total for mode, p in profiles.items()}
    if not all(totals.values()):
        section.add("py-spy collected no samples.")
        return section
    section.add(
        f"Two recordings of {seconds:g} s each at 100 Hz, one after the other: **wall** "
        "(every thread that is not idle; a thread waiting for a Redis or HTTP reply counts) "
        f"and **gil** (only the thread running Python: CPU). Samples: "
        + ", ".join(f"{m} {t:,}" for m, t in totals.items())
        + f"; {done}."
    )
    section.add(
        "By process:\n\n"
        + shares("process", {m: p.by_role() for m, p in profiles.items()}, totals, 5)
    )
    section.add(
        "Steps of `Dispatcher.deliver`, each inclusive of what it calls (share of all "
        f"samples; `→` names the first callee outside `{OWN_FILE}`):\n\n"
        + shares(
            "step → first callee", {m: p.deliver_steps() for m, p in profiles.items()}, totals, 10
        )
    )
    section.add(
        "Self time by library of the running frame:\n\n"
        + shares("library", {m: p.self_by_library() for m, p in profiles.items()}, totals, 12)
    )
    section.add(
        "Top functions by self time:\n\n"
        + shares("function", {m: p.self_by_function() for m, p in profiles.items()}, totals, 12)
    )
    return section


def main(argv: list[str] | None = None) -> int:
    parser = doc_parser("python -m bench.hotpath", __doc__)
    parser.add_argument("--n", type=int, default=env_int("BENCH_PROFILE_N", 5_000))
    parser.add_argument("--pool", default="prefork")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=6)
    args = parser.parse_args(argv)
    run(args.n, args.pool, args.concurrency, args.seconds)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
