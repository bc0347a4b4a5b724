"""A progress line for long CLI work, on a terminal only.

``snackvideo dlq replay|purge`` over thousands of entries and ``snackvideo enqueue`` of a
large file work in chunks; between chunks the operator sees ``replaying 1500/4000 (37%)``
on stderr, redrawn in place with ``\\r``, and the line is erased when the work ends, so
what remains on the screen is what the command prints anyway. Nothing is written when
stderr is not a terminal (a pipe, a file, CI) or when the command prints JSON: scripts
read exactly what they read before.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TextIO

#: Redraw at most this often; each chunk's end is drawn anyway when due.
REDRAW_SECONDS = 0.1
_ERASE_LINE = "\r\x1b[K"


class Progress:
    """``done/total (pct%)`` after a label, redrawn in place; silent unless ``enabled``."""

    def __init__(
        self,
        label: str,
        total: int,
        *,
        enabled: bool,
        stream: TextIO | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.label = label
        self.total = total
        self.done = 0
        self.enabled = enabled and total > 0
        self.stream = stream if stream is not None else sys.stderr
        self.clock = clock
        self._drawn_at: float | None = None

    @classmethod
    def on_terminal(cls, label: str, total: int, *, json_output: bool = False) -> Progress:
        """Enabled when stderr is a terminal and the command's output is not JSON."""
        return cls(label, total, enabled=not json_output and sys.stderr.isatty())

    def start(self) -> None:
        self._draw()

    @contextmanager
    def running(self) -> Iterator[Progress]:
        """Drawn from the start, erased at the end, whether the work ends or raises."""
        self.start()
        try:
            yield self
        finally:
            self.clear()

    def advance(self, count: int) -> None:
        self.done += count
        if self._drawn_at is None or self.clock() - self._drawn_at >= REDRAW_SECONDS:
            self._draw()

    def clear(self) -> None:
        """Erase the line (before other output, and at the end); the next advance redraws."""
        if self.enabled and self._drawn_at is not None:
            self.stream.write(_ERASE_LINE)
            self.stream.flush()
            self._drawn_at = None

    def _draw(self) -> None:
        if not self.enabled:
            return
        percent = 100 * self.done // self.total
        self.stream.write(f"\r{self.label} {self.done}/{self.total} ({percent}%)")
        self.stream.flush()
        self._drawn_at = self.clock()
