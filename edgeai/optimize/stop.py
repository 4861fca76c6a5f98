"""How a search is told to stop early: SIGINT/SIGTERM become `Stopped`, which the search turns into a report."""
from __future__ import annotations

import contextlib
import signal
import threading
from typing import Iterator

EXIT_CODES = {"SIGINT": 130, "SIGTERM": 143}


class Stopped(Exception):
    """Raised in the main thread on the first SIGINT or SIGTERM; `name` is the signal's name."""

    def __init__(self, name: str):
        super().__init__(f"stopped by {name}")
        self.name = name


class SignalState:
    """The signal received (None until one is), and whether a signal raises now or is only recorded."""

    def __init__(self) -> None:
        self.received: str | None = None
        self.raising = True

    def record_only(self) -> None:
        """From now on a signal is recorded, not raised: the outputs being written are written whole."""
        self.raising = False


@contextlib.contextmanager
def signals_stop() -> Iterator[SignalState]:
    """While inside: the first SIGINT or SIGTERM raises Stopped (the search writes what it has), or is
    only recorded after `record_only()`; a second one acts as usual (SIGINT: KeyboardInterrupt,
    SIGTERM: the process ends)."""
    state = SignalState()
    if threading.current_thread() is not threading.main_thread():
        yield state
        return
    names = {signal.SIGINT: "SIGINT", signal.SIGTERM: "SIGTERM"}
    previous = {s: signal.getsignal(s) for s in names}

    def handler(signum, frame):
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        state.received = names[signum]
        if state.raising:
            raise Stopped(names[signum])

    for s in names:
        signal.signal(s, handler)
    try:
        yield state
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
