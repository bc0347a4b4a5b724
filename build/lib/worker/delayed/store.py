"""Delayed jobs kept in Redis, not in a worker's memory.

Retry backoffs and long throttle waits park the job in a sorted set scored by its due
time; a mover thread in every worker (``mover``) pushes due jobs back onto the delivery
queue. A
countdown/ETA message would instead sit unacknowledged in a worker for the whole wait,
which forces a visibility timeout longer than the longest wait (see the README).

Due times are on the Redis clock: the caller gives a delay, ``schedule.lua`` adds it to
Redis ``TIME``, and ``move_due.lua`` compares against ``TIME`` too. A host whose clock is
minutes off would otherwise park jobs minutes late, or move every other host's parked
jobs minutes early (a Scalev outage's backoff spent in seconds).
"""

from __future__ import annotations

import math
from typing import Any

import redis

from producers.message import build_message
from worker.keys import DELIVERY_QUEUE, SCHEDULED, SCHEDULED_MESSAGES, generation_key
from worker.lua_scripts import lua_source

#: Jobs one move_due.lua call moves at most: Redis serves nobody else while it runs.
MOVE_BATCH = 500


class DelayedJobs:
    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self._schedule = client.register_script(lua_source("worker.delayed", "schedule"))
        self._move_due = client.register_script(lua_source("worker.delayed", "move_due"))

    def schedule(
        self,
        job_kwargs: dict[str, Any],
        *,
        delay_seconds: float,
        generation_ttl_seconds: int = 0,
    ) -> float | None:
        """Park the job ``delay_seconds`` from now on the Redis clock; returns its due time
        (epoch seconds, Redis clock), or None when a later parking of it is recorded
        (nothing written).

        ``generation_ttl_seconds`` > 0 records the message's (replay_count, generation)
        with that TTL in the same call (the done-check in ``worker.keys``); the caller sets
        ``generation`` in ``job_kwargs`` one above the run that parks it.
        """
        if not math.isfinite(delay_seconds):
            raise ValueError(f"delay must be a finite number of seconds, not {delay_seconds}")
        job_id = job_kwargs["job_id"]
        message = build_message(job_kwargs, task_id=job_id)
        keys = [SCHEDULED, SCHEDULED_MESSAGES]
        args: list[Any] = [job_id, repr(delay_seconds), message]
        if generation_ttl_seconds > 0:
            keys.append(generation_key(job_id))
            args += [
                int(job_kwargs.get("replay_count", 0)),
                int(job_kwargs.get("generation", 0)),
                generation_ttl_seconds,
            ]
        due_at = self._schedule(keys=keys, args=args)
        if due_at == 0:
            return None
        return float(due_at)

    def move_due(self, now: float | None = None, limit: int = MOVE_BATCH) -> int:
        """Move the jobs due by ``now`` (default: Redis ``TIME``, read by the script)."""
        moved = self._move_due(
            keys=[SCHEDULED, SCHEDULED_MESSAGES, DELIVERY_QUEUE],
            args=["" if now is None else repr(now), limit],
        )
        return int(moved)

    def depth(self) -> int:
        return int(self.client.zcard(SCHEDULED))
