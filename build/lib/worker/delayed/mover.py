"""The due-job mover: a thread in every worker that pushes due jobs from the delayed set
back onto the delivery queue (``move_due.lua``, atomic, so any number may run at once).
"""

from __future__ import annotations

import logging
import threading

import redis

from worker.delayed.store import MOVE_BATCH, DelayedJobs

log = logging.getLogger("snackvideo.delayed")


class DueJobMover(threading.Thread):
    """Moves due jobs every ``poll_seconds`` until stopped; survives Redis outages."""

    def __init__(self, jobs: DelayedJobs, poll_seconds: float) -> None:
        super().__init__(name="snackvideo-due-jobs", daemon=True)
        self.jobs = jobs
        self.poll_seconds = poll_seconds
        self._stop_event = threading.Event()
        self._failing = False

    def run(self) -> None:
        while not self._stop_event.is_set():
            try:
                moved = self.jobs.move_due()
                if self._failing:
                    log.info("due-job mover reconnected to Redis")
                    self._failing = False
            except redis.RedisError as exc:
                if not self._failing:  # one warning per outage, not one per poll
                    log.warning("due-job mover cannot reach Redis: %s", exc)
                    self._failing = True
                moved = 0
            # A full batch means more are due: go again without sleeping.
            if moved < MOVE_BATCH:
                self._stop_event.wait(self.poll_seconds)

    def stop(self, timeout: float = 5.0) -> None:
        self._stop_event.set()
        self.join(timeout)
