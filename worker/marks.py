"""A job's marks in Redis: what says a message of it needs no sending.

A message of job J at replay n is *done* when any of these exists:

    snackvideo:delivered:J          J reached Scalev (a 2xx); set with a TTL
    snackvideo:dlq:entries[J-rn]    this run of J was dead-lettered (an earlier copy of
                                    this very message parked it, then died before its ack)
    snackvideo:dlq:taken:J-rn       that entry was replayed (as J-r(n+1)) or purged since

    snackvideo:generation:J         records a later (replay, generation) than this
                                    message's: the job was parked since, and the parked
                                    message is the live copy

The tombstone closes a race the first two leave open: a worker writes ``J-r0`` and dies
before its ack; an operator or the redrive replays ``J-r0`` before the visibility timeout
brings the old message back. Without it the old r0 copy would find neither marker nor
entry and be sent again, beside the replayed r1.

The generation closes the same race for parking. A run that parks a job (a retry, a long
throttle wait) writes a new message of generation g + 1 to the delayed set, and
``schedule.lua`` records ``n:g+1`` in the same atomic call. If the worker dies before its
ack, kombu restores the old message (generation g); without the record it would pass the
check and be sent beside the parked one. Comparing (replay, generation) pairs keeps a
replay (n + 1, generation 0) ahead of every parking of run n.

The check is part of ``throttle_acquire.lua`` and the marker is set by
``throttle_record.lua``, so the bookkeeping of a delivery is two round trips: one before
the POST (done? else take a slot), one after it (release the slot, mark it delivered).
Unreadable messages are parked under ``{job_id}-rn-invalid`` (``worker.deadletter``), an
id this check never reads: garbage carrying a real job's id cannot hide that job.
"""

from __future__ import annotations

from dataclasses import dataclass

from worker.deadletter import entry_id
from worker.keys import delivered_key, dlq_taken_key, generation_key


@dataclass(frozen=True)
class JobMarks:
    job_id: str
    replay_count: int
    #: How long the delivered-marker is kept once set (``Settings.delivered_marker_ttl``);
    #: the generation record lives as long.
    delivered_ttl_seconds: int
    #: Parkings of this run so far (the message's ``generation`` kwarg).
    generation: int = 0

    @property
    def delivered_key(self) -> str:
        return delivered_key(self.job_id)

    @property
    def dlq_entry_id(self) -> str:
        return entry_id(self.job_id, self.replay_count)

    @property
    def taken_key(self) -> str:
        return dlq_taken_key(self.dlq_entry_id)

    @property
    def generation_key(self) -> str:
        return generation_key(self.job_id)
