"""The distributed throttle: one request budget per scope, shared by every worker process
on every host, kept in Redis and changed only by two Lua scripts.

    acquire(scope)                      acquire.lua
        blocked (after a 429)?          -> wait until the block ends
        tracked window over?            -> refill to the limit, at least one (the probe
                                           after a Limit: 0), provisionally
        remaining - in flight <= 0?     -> wait until the reset
        next spread slot in the future? -> wait for it
        else take the slot: the request counts as in flight (a leased token)
    record(scope, status, headers)      record.lua
        release the token; learn limit / remaining / reset from the headers (the lowest
        count seen in a window wins, answers race); a 429 blocks the scope until
        Retry-After (else the reset)

Spreading: the remaining budget is paced evenly over what is left of the window
(``(reset_at - now) / (remaining - in_flight)``), so 16 processes do not spend a window in
its first milliseconds and then all wait, and no two of them take the last unit. The pace never
holds a request past the end of the tracked window, and every header-derived number is
bounded (``headers``): no answer stops a scope for longer than the reset
or Retry-After it announced plus one window.

Without any rate-limit header the pace is an adaptive rate (AIMD, in record.lua): it starts
at ``SNACKVIDEO_DEFAULT_RATE``, rises while answers come back without a 429, and is cut by
``SNACKVIDEO_ADAPTIVE_RATE_FACTOR`` on a 429 or a ``Retry-After``. Headers, when present,
rule.

Clock: the scripts read Redis ``TIME``; Python hands them only relative values (the
header parser turns epoch resets into "seconds from now"), so workers on hosts with
skewed clocks still agree on one window. See ``docs/throttle.md`` for the design and the
benchmark, ``worker/keys.py`` for the state hash, ``state`` for what status reads of it.

The two scripts also carry the job's own bookkeeping (the done-check of ``worker.keys``),
so that one
delivery costs two round trips of ours, not four: ``acquire_job`` first checks that the
job is not delivered, parked or replayed already (then it answers ``done`` and takes
nothing), and ``record(..., delivered=marks)`` sets the job's delivered-marker in the call
that releases the slot.

With ``SNACKVIDEO_THROTTLE=off`` (the benchmark's baseline) nothing is shared: each process
sends at will and only waits out a 429's ``Retry-After`` itself. The job's bookkeeping
still costs two round trips: the acquire script runs its done-check only, and the marker
is one ``SET``.
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections import defaultdict, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import redis

from worker.connections import reply_text
from worker.keys import (
    DLQ_ENTRIES,
    THROTTLE_SCOPES,
    JobMarks,
    throttle_in_flight_key,
    throttle_key,
)
from worker.lua_scripts import lua_source
from worker.round_trip import evalsha
from worker.throttle.headers import RateLimitHeaders, parse_rate_limit_headers

if TYPE_CHECKING:
    from worker.settings import Settings

#: How long a taken slot counts as in flight without being released: longer than one POST
#: can take, so only a request whose worker died is forgotten.
DEFAULT_IN_FLIGHT_LEASE_SECONDS = 30.0
#: Window assumed when a budget is known but its reset never was.
FALLBACK_WINDOW_SECONDS = 1.0
#: A scope's state outlives its last request by this much, then Redis forgets it.
STATE_TTL_SECONDS = 86_400.0
#: Spread wake-ups of processes told the same wait, so they do not all hit Redis at once.
WAIT_JITTER_SECONDS = 0.002
#: Adaptive rate defaults (no rate-limit header seen): a ceiling well above what one host
#: delivers, +2/s per second near the rate of the last 429, halved on a 429.
DEFAULT_ADAPTIVE_MAX_RATE = 1000.0
DEFAULT_ADAPTIVE_STEP = 2.0
DEFAULT_ADAPTIVE_FACTOR = 0.5
#: Scopes the index keeps, the most recently answered: what `snackvideo status` shows and
#: /metrics labels (``state``). One per base URL is a handful; one per store
#: (SNACKVIDEO_THROTTLE_SCOPE=store) is as many as producers name, so the index keeps only
#: the latest ones.
TRACKED_SCOPES_MAX = 100


@dataclass(frozen=True)
class Slot:
    """What ``acquire_job`` answers: the job is done already, or a request may go now
    (``wait`` 0: the slot is taken), or ask again after ``wait`` seconds."""

    wait: float
    done: bool = False


class Throttle:
    """Per process: holds the tokens of the slots this process took, nothing else."""

    def __init__(
        self,
        client: redis.Redis,
        *,
        default_rate_per_second: float,
        enabled: bool = True,
        adaptive_max_rate: float = DEFAULT_ADAPTIVE_MAX_RATE,
        adaptive_step: float = DEFAULT_ADAPTIVE_STEP,
        adaptive_factor: float = DEFAULT_ADAPTIVE_FACTOR,
        in_flight_lease_seconds: float = DEFAULT_IN_FLIGHT_LEASE_SECONDS,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        self.client = client
        self.default_rate_per_second = default_rate_per_second
        self.enabled = enabled
        # Never below the starting rate: the ceiling caps how far the rate rises.
        self.adaptive_max_rate = max(adaptive_max_rate, default_rate_per_second)
        self.adaptive_step = adaptive_step
        self.adaptive_factor = adaptive_factor
        self.in_flight_lease_seconds = in_flight_lease_seconds
        self.clock = clock
        self.rng = rng or random.Random()
        self._acquire = client.register_script(lua_source("worker.throttle", "acquire"))
        self._record = client.register_script(lua_source("worker.throttle", "record"))
        # Slots taken by this thread and not yet recorded, oldest first, per scope.
        self._local = threading.local()
        # Disabled mode only: this process's own Retry-After deadline per scope.
        self._blocked_until: dict[str, float] = {}

    @classmethod
    def from_settings(cls, client: redis.Redis, settings: Settings) -> Throttle:
        return cls(
            client,
            default_rate_per_second=settings.default_rate_per_second,
            enabled=settings.throttle_enabled,
            adaptive_max_rate=settings.adaptive_max_rate,
            adaptive_step=settings.adaptive_step,
            adaptive_factor=settings.adaptive_factor,
            # A request never outlives its timeouts; the margin covers a slow record call.
            in_flight_lease_seconds=settings.http_connect_timeout_seconds
            + settings.http_read_timeout_seconds
            + 5.0,
        )

    # -- the dispatcher's interface ----------------------------------------------------

    def acquire(self, scope: str, now: float | None = None) -> float:
        """Take a slot: 0.0 when a request may go now (it then counts as in flight),
        else the seconds to wait before asking again (nothing taken)."""
        return self._take(scope, None, take_slot=True, now=now).wait

    def acquire_job(self, scope: str, marks: JobMarks, now: float | None = None) -> Slot:
        """``acquire`` for one job, in the same round trip as its done-check: ``done``
        when the job needs no sending (nothing is taken then)."""
        return self._take(scope, marks, take_slot=True, now=now)

    def job_done(self, scope: str, marks: JobMarks) -> bool:
        """The done-check alone (a job about to be dead-lettered without a request)."""
        return self._take(scope, marks, take_slot=False, now=None).done

    def _take(
        self, scope: str, marks: JobMarks | None, *, take_slot: bool, now: float | None
    ) -> Slot:
        if not self.enabled:
            if marks is not None and self._run_acquire(scope, marks, "", False, now)[0]:
                return Slot(0.0, done=True)
            wall = self.clock() if now is None else now
            return Slot(max(0.0, self._blocked_until.get(scope, 0.0) - wall))
        token = uuid.uuid4().hex if take_slot else ""
        done, wait, acquired_at = self._run_acquire(scope, marks, token, take_slot, now)
        if done:
            return Slot(0.0, done=True)
        if wait > 0:
            return Slot(wait + self.rng.uniform(0.0, WAIT_JITTER_SECONDS))
        if take_slot:
            self._hold(scope, token, acquired_at)
        return Slot(0.0)

    def _run_acquire(
        self, scope: str, marks: JobMarks | None, token: str, take_slot: bool, now: float | None
    ) -> tuple[bool, float, float]:
        """One call of acquire.lua: (done, wait, Redis time of the answer)."""
        keys = [throttle_key(scope), throttle_in_flight_key(scope)]
        if marks is not None:
            keys += [marks.delivered_key, DLQ_ENTRIES, marks.taken_key, marks.generation_key]
        wait_raw, now_raw = evalsha(
            self.client,
            self._acquire,
            keys,
            [
                _arg(now),
                token,
                self.in_flight_lease_seconds,
                1.0 / self.default_rate_per_second,
                STATE_TTL_SECONDS,
                FALLBACK_WINDOW_SECONDS,
                marks.dlq_entry_id if marks is not None else "",
                "1" if take_slot else "0",
                *((marks.replay_count, marks.generation) if marks is not None else ()),
            ],
        )
        if reply_text(wait_raw) == "done":
            return True, 0.0, float(now_raw)
        return False, float(wait_raw), float(now_raw)

    def _hold(self, scope: str, token: str, acquired_at: float) -> None:
        held = self._held(scope)
        # A slot whose request never got recorded (an unexpected error in between) has
        # lost its lease in Redis already; forget it here too, or the next record would
        # release that old token instead of its own.
        while held and held[0][1] < acquired_at - self.in_flight_lease_seconds:
            held.popleft()
        held.append((token, acquired_at))

    def record(
        self,
        scope: str,
        status_code: int | None,
        headers: Mapping[str, str],
        now: float | None = None,
        *,
        delivered: JobMarks | None = None,
    ) -> None:
        """Release the slot taken by ``acquire`` and learn from the response headers
        (``status_code`` None: no response, e.g. a timeout). ``delivered``: the job got
        its 2xx; its delivered-marker is set in the same call."""
        wall = self.clock() if now is None else now
        parsed = parse_rate_limit_headers(headers, wall)
        if not self.enabled:
            self._record_disabled(scope, status_code, parsed, wall)
            if delivered is not None:
                self.client.set(delivered.delivered_key, "1", ex=delivered.delivered_ttl_seconds)
            return
        held = self._held(scope)
        token, acquired_at = held.popleft() if held else ("", None)
        keys = [throttle_key(scope), throttle_in_flight_key(scope), THROTTLE_SCOPES]
        if delivered is not None:
            keys.append(delivered.delivered_key)
        evalsha(
            self.client,
            self._record,
            keys,
            [
                _arg(now),
                token,
                _arg(acquired_at),
                "1" if status_code == 429 else "0",
                _arg(parsed.limit),
                _arg(parsed.remaining),
                _arg(parsed.reset_in_seconds),
                parsed.reset_resolution_seconds,
                _arg(parsed.retry_after_seconds),
                FALLBACK_WINDOW_SECONDS,
                STATE_TTL_SECONDS,
                scope,
                delivered.delivered_ttl_seconds if delivered is not None else "",
                TRACKED_SCOPES_MAX,
                _arg(status_code),
                self.default_rate_per_second,
                self.adaptive_max_rate,
                self.adaptive_step,
                self.adaptive_factor,
                "1" if parsed.reset_relative else "0",
            ],
        )

    # -- internals -----------------------------------------------------------------------

    def _held(self, scope: str) -> deque[tuple[str, float]]:
        held: defaultdict[str, deque[tuple[str, float]]] | None = getattr(self._local, "held", None)
        if held is None:
            held = defaultdict(deque)
            self._local.held = held
        return held[scope]

    def _record_disabled(
        self, scope: str, status_code: int | None, parsed: RateLimitHeaders, wall: float
    ) -> None:
        if status_code != 429:
            return
        wait = parsed.retry_after_seconds
        if wait is None:
            wait = parsed.reset_in_seconds
        if wait is None:
            wait = FALLBACK_WINDOW_SECONDS
        self._blocked_until[scope] = max(self._blocked_until.get(scope, 0.0), wall + wait)


def _arg(value: float | int | None) -> str:
    return "" if value is None else repr(value)
