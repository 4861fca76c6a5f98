"""Progress of one long step (distillation's batches, calibration's batches): done/total, samples/s, time left.

On a terminal, a rich bar on stderr (log lines print above it) while the logger shows INFO (`-q` hides
it). Elsewhere (CI, a pipe, a log file), and in worker processes (optimize's builds, where a second bar
would collide with optimize's own): plain INFO log lines at most every PLAIN_EVERY_S seconds, and
whenever the step has news (`line`), so a log shows progress as it happens. The time left is measured:
the units still to do times the seconds each unit has taken so far (units done before the meter
started, e.g. distillation's batchnorm screen, count as done but not as timed). rich is imported only
for the bar.
"""
from __future__ import annotations

import logging
import multiprocessing
import sys
import time
from typing import Callable

PLAIN_EVERY_S = 20.0


def fmt_duration(seconds: float) -> str:
    """`0:42`, `12:05`, `1:02:03` (hours only when needed)."""
    s = int(round(max(seconds, 0.0)))
    hours, rest = divmod(s, 3600)
    minutes, s = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{s:02d}" if hours else f"{minutes}:{s:02d}"


def live_terminal() -> bool:
    """A person watches stderr: a terminal, in the main process (not a build worker)."""
    return sys.stderr.isatty() and multiprocessing.parent_process() is None


class Meter:
    """Counts `total` units of work for `logger`; `with Meter(...) as m: m.advance(...)`.

    `advance(n, samples, where)` after each unit; `line(message)` for a line now (an epoch's summary).
    """

    def __init__(self, name: str, total: int, logger: logging.Logger, *, unit: str = "batches", done: int = 0,
                 live: bool | None = None, every_s: float = PLAIN_EVERY_S,
                 clock: Callable[[], float] = time.monotonic):
        self.name, self.total, self.log, self.unit = name, max(int(total), 1), logger, unit
        self.done, self.samples, self.where = int(done), 0, ""
        self._timed_from, self.every_s, self.clock = int(done), every_s, clock
        # the bar is progress logging too: `-q` (or a library caller's logging at WARNING) hides it
        self.live = live_terminal() and logger.isEnabledFor(logging.INFO) if live is None else live
        self._start = self._last = clock()
        self._bar = self._task = None

    def __enter__(self) -> "Meter":
        if self.live:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
            self._bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[info]}"), console=Console(stderr=True), transient=True)
            self._task = self._bar.add_task(self.name, total=self.total, completed=self.done, info="")
            self._bar.start()
        self._start = self._last = self.clock()
        return self

    def __exit__(self, *exc) -> bool:
        if self._bar is not None:
            self._bar.stop()
        return False

    def seconds_left(self) -> float | None:
        """Units still to do x measured seconds per unit; None before the first timed unit."""
        timed = self.done - self._timed_from
        if timed <= 0:
            return None
        return max(self.total - self.done, 0) * (self.clock() - self._start) / timed

    def rate(self) -> float | None:
        """Samples per second since the meter started (None before any sample)."""
        elapsed = self.clock() - self._start
        return self.samples / elapsed if self.samples and elapsed > 0 else None

    def status(self) -> str:
        """`ETA 3:12 | 812 samples/s` (the ETA first: a log that wraps long lines keeps it on the first)."""
        rate, left = self.rate(), self.seconds_left()
        return " | ".join([f"ETA {fmt_duration(left)}" if left is not None else "ETA measuring"]
                          + ([f"{rate:,.0f} samples/s"] if rate is not None else []))

    def advance(self, n: int = 1, samples: int = 0, where: str = "") -> None:
        self.done, self.samples = min(self.done + n, self.total), self.samples + samples
        self.where = where or self.where
        if self._bar is not None:
            self._bar.update(self._task, completed=self.done, description=f"{self.name} {self.where}".strip(),
                             info=self.status())
        elif self.clock() - self._last >= self.every_s:
            self.line()

    def line(self, message: str = "") -> None:
        """One log line now: `NAME WHERE | ETA 3:12 | 812 samples/s | MESSAGE` (or DONE/TOTAL UNIT)."""
        self._last = self.clock()
        self.log.info("%s | %s | %s", f"{self.name} {self.where}".strip(), self.status(),
                      message or f"{self.done}/{self.total} {self.unit}")
