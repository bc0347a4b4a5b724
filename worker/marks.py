"""A job's marks in Redis: what says a message of it needs no sending.

A message of job J at replay n is *done* when any of these exists:

    snackvideo:delivered:J          J reached Scalev (a 2xx); set with a TTL
    snackvideo:dlq:entries[J-rn]    this run of J was dead-lettered (an earlier copy of
                                    this very message parked it, then died before its ack)
    snackvideo:dlq:taken:J-rn       that entry was replayed (as J-r(n+1)) or purged since

The tombstone closes a race the first two leave open: a worker writes ``J-r0`` and dies
before its ack; an operator or the redrive replays ``J-r0`` before the visibility timeout
brings the old message back. Without it the old r0 copy would find neither marker nor
entry and be sent again, beside the replayed r1.

The check is part of ``throttle_acquire.lua`` and the marker is set by
``throttle_record.lua``, so the bookkeeping of a delivery is two round trips: one before
the POST (done? else take a slot), one after it (release the slot, mark it delivered).
Unreadable messages are parked under ``{job_id}-rn-invalid`` (``worker.deadletter``), an
id this check never reads: garbage carrying a real job's id cannot hide that job.
"""

from __future__ import annotations

from dataclasses import dataclass

from worker.deadletter import entry_id
from worker.keys import delivered_key, dlq_taken_key


@dataclass(frozen=True)
class JobMarks:
    job_id: str
    replay_count: int
    #: How long the delivered-marker is kept once set (``Settings.delivered_marker_ttl``).
    delivered_ttl_seconds: int

    @property
    def delivered_key(self) -> str:
        return delivered_key(self.job_id)

    @property
    def dlq_entry_id(self) -> str:
        return entry_id(self.job_id, self.replay_count)

    @property
    def taken_key(self) -> str:
        return dlq_taken_key(self.dlq_entry_id)
