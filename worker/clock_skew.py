"""How far this worker host's clock is from the Redis server's, watched from the main process.

Every due time the project computes is on the Redis clock (``worker.clock``), so a skewed
host no longer parks or moves jobs early. What still reads the local clock is other
people's code: kombu scores in-flight messages with it (the visibility timeout), Celery
beat and task expiry use it, and so do log timestamps (docs/durability.md, "Clocks"). So
the skew is measured at start and every minute, exported as the gauge
``snackvideo_clock_skew_seconds`` (local minus Redis, signed; ``worker.metrics.collectors``),
and a WARNING is logged when it crosses ``WARN_ABOVE_SECONDS``, once per crossing: a clock
that stays off does not fill the log.
"""

from __future__ import annotations

import logging
import threading

from worker.clock import DEFAULT_REFRESH_SECONDS, RedisClock

log = logging.getLogger("snackvideo.clock")

#: Beyond this the local clock matters to kombu's visibility timeout and beat's expiry;
#: NTP keeps a host within milliseconds, so a second means NTP is not doing its job.
WARN_ABOVE_SECONDS = 1.0


class ClockSkewWatch(threading.Thread):
    """Measures the skew every ``interval_seconds``; ``check`` measures it once, now."""

    def __init__(
        self,
        clock: RedisClock,
        *,
        interval_seconds: float = DEFAULT_REFRESH_SECONDS,
        warn_above_seconds: float = WARN_ABOVE_SECONDS,
    ) -> None:
        super().__init__(name="snackvideo-clock-skew", daemon=True)
        self.clock = clock
        self.interval_seconds = interval_seconds
        self.warn_above_seconds = warn_above_seconds
        #: local minus Redis, seconds; None until a measurement succeeded
        self.skew_seconds: float | None = None
        self._warned = False
        self._stop_event = threading.Event()

    def check(self) -> float | None:
        """Measure now; log on a crossing of the warning threshold. None: Redis is away
        (the last measurement stands: clocks drift slowly)."""
        offset = self.clock.refresh()
        if offset is None:
            return None
        skew = -offset  # the clock's offset is Redis minus local
        self.skew_seconds = skew
        if abs(skew) > self.warn_above_seconds and not self._warned:
            self._warned = True
            log.warning(
                "clock skew: this host's clock is %+.3f s off the Redis server's (local "
                "minus Redis). Due times use Redis TIME, but kombu's visibility timeout, "
                "Celery beat and task expiry read the local clock: check NTP on this host.",
                skew,
            )
        elif abs(skew) <= self.warn_above_seconds and self._warned:
            self._warned = False
            log.info("clock skew back within %.1f s: %+.3f s", self.warn_above_seconds, skew)
        return skew

    def run(self) -> None:
        while not self._stop_event.wait(self.interval_seconds):
            self.check()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop_event.set()
        self.join(timeout)


_watch: ClockSkewWatch | None = None


def start_watch(clock: RedisClock) -> ClockSkewWatch:
    """Measure now and every interval from here on (the worker's main process, the one
    that serves /metrics: ``worker.celery_app.ClockSkewStep``)."""
    global _watch
    watch = ClockSkewWatch(clock)
    watch.check()  # at start, before the first interval: a skew shows at once
    watch.start()
    _watch = watch
    return watch


def current_skew_seconds() -> float | None:
    """The last skew measured by this process's watch (the worker's main process)."""
    return _watch.skew_seconds if _watch is not None else None
