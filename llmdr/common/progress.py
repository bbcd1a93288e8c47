"""A tiny progress protocol so the core can report bytes without knowing about terminals, and the two reporters
that are not a terminal bar: :class:`NoProgress` and :class:`LineProgress` (periodic lines, for logs and pipes)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Protocol

from llmdr.common.units import human_rate, human_size


class Progress(Protocol):
    def start(self, description: str, total_bytes: int) -> None: ...

    def advance(self, nbytes: int) -> None: ...

    def finish(self) -> None: ...


class NoProgress:
    def start(self, description: str, total_bytes: int) -> None:
        pass

    def advance(self, nbytes: int) -> None:
        pass

    def finish(self) -> None:
        pass


class LineProgress:
    """Progress as whole lines, for output that is not a terminal (a CI log, ``| tee``, a journal), where a bar
    would print nothing or garble the log::

        restore 3fa2c0ffee12: 512 MB of 2.1 GB (24 %), 210 MB/s

    A line at least every ``interval_s`` seconds while bytes move, and one at each 10 % step when at least a tenth
    of that has passed since the last line (``interval_s=0``: at every step). An operation that ends within a
    tenth of the interval prints nothing; one that printed a line prints a last one saying how it ended. Safe to
    advance from several threads."""

    STEP = 0.10

    def __init__(self, write: Callable[[str], None], interval_s: float = 10.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._write, self._interval, self._clock = write, max(0.0, interval_s), clock
        self._lock = threading.Lock()
        self._description, self._total, self._done = "", 0, 0
        self._t0 = self._last = 0.0
        self._step = 0  # the last 10 % step a line was printed at
        self._printed = False

    def start(self, description: str, total_bytes: int) -> None:
        with self._lock:
            self._description, self._total, self._done = description, max(0, total_bytes), 0
            self._t0 = self._last = self._clock()
            self._step, self._printed = 0, False

    def advance(self, nbytes: int) -> None:
        with self._lock:
            self._done += nbytes
            now = self._clock()
            step = int(self._done / self._total / self.STEP + 1e-9) if self._total else 0
            since = now - self._last
            due = (self._interval > 0 and since >= self._interval) or \
                  (step > self._step and since >= self._interval * self.STEP)
            if not due or (self._total and self._done >= self._total):
                return  # the last bytes: finish() says it
            self._step, self._last, self._printed = max(step, self._step), now, True
            self._write(f"{self._description}: {self._counts(now)}")

    def finish(self) -> None:
        with self._lock:
            if not self._printed:
                return
            now = self._clock()
            if self._done >= self._total:
                self._write(f"{self._description}: {human_size(self._done)} in {now - self._t0:.1f} s, "
                            f"{human_rate(self._rate(now))}")
            else:
                self._write(f"{self._description}: stopped at {self._counts(now)}")
            self._printed = False

    def _rate(self, now: float) -> float:
        return self._done / (now - self._t0) if now > self._t0 else 0.0

    def _counts(self, now: float) -> str:
        pct = f" ({100 * self._done / self._total:.0f} %)" if self._total else ""
        return f"{human_size(self._done)} of {human_size(self._total)}{pct}, {human_rate(self._rate(now))}"
