"""Terminal output for people: tables that fit the terminal (or all columns with --wide), and third-party chatter kept off stderr."""
from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
import tempfile
import warnings
from typing import Any, Iterator

log = logging.getLogger(__name__)

# Python loggers of libraries that log at WARNING about things that are not the user's concern
# (torchao: optional CUDA kernels that do not load on CPU; torch's pytree: a deprecation inside
# litert-torch; absl: TensorFlow's start-up)
NOISY_LOGGERS = ("torchao", "torch.utils._pytree", "absl", "tensorflow", "jax")
# native libraries read these before they log (TensorFlow, glog-based ones)
QUIET_ENV = {"TF_CPP_MIN_LOG_LEVEL": "3", "GLOG_minloglevel": "3"}


_wide = False  # --wide: every table at its natural width, whatever the terminal's


def set_wide(wide: bool) -> None:
    global _wide
    _wide = bool(wide)


def fmt_ms(x: float | None) -> str:
    """A latency in ms with 3 significant digits below 1 ms (0.00812, 0.143), else 2-3 decimals."""
    if x is None:
        return "-"
    return f"{x:.3g}" if x < 1 else f"{x:.3f}" if x < 10 else f"{x:.2f}" if x < 100 else f"{x:.1f}"


def _natural_width(console: Any, renderable: Any) -> int:
    from rich.measure import Measurement
    return Measurement.get(console, console.options.update_width(10_000), renderable).maximum


def _fits_terminal(console: Any) -> bool:
    """Fit to the console's width on a terminal (or when COLUMNS says how wide the pane is); a file or
    pipe gets the natural width, since nothing wraps there."""
    return console.is_terminal or bool(os.environ.get("COLUMNS"))


def print_table(table: Any, console: Any = None, drop: tuple[str, ...] = (), fold: tuple[str, ...] = ()) -> None:
    """Print a rich Table within the terminal's width, never wrapped into garbage.

    Too wide: the columns named in `drop` (headers, newlines as spaces) are removed in that order until
    it fits, then the `fold` columns fold their text; a line under the table names what was hidden.
    `--wide` (set_wide), or output that is not a terminal, prints every column at its natural width.
    """
    from rich.console import Console
    console = console or Console()
    width = console.width
    hidden: list[str] = []
    if not _wide and _fits_terminal(console):
        names = {" ".join(str(c.header).split()): c for c in table.columns}
        for header in drop:
            if _natural_width(console, table) <= width:
                break
            if header in names:
                table.columns.remove(names[header])
                for index, column in enumerate(table.columns):  # rich pads edge columns by their index
                    column._index = index
                hidden.append(header)
        if _natural_width(console, table) > width:
            folding = [c for c in table.columns if " ".join(str(c.header).split()) in fold]
            for column in folding:  # what the table needs with these folded to ~12 characters
                column.overflow, column.no_wrap = "fold", False
                column.max_width = max(12, column.min_width or 0)
            needed = _natural_width(console, table)
            for column in folding:
                column.max_width = None
            if needed <= width:
                table.width = width  # else numbers would be cut: print it whole, past the width
    print_wide(table, console)
    if hidden:
        console.print(f"(hidden to fit {width} columns: {', '.join(hidden)}; --wide shows every column)",
                      style="dim", markup=False, highlight=False)


def print_wide(renderable: Any, console: Any = None) -> None:
    """Print `renderable` (a rich Table) at its natural width, even past the console's width."""
    from rich.console import Console
    console = console or Console()
    needed = _natural_width(console, renderable)
    width = console.width
    console.width = max(width, needed) if getattr(renderable, "width", None) is None else width
    try:
        console.print(renderable)
    finally:
        console.width = width


@contextlib.contextmanager
def quiet_third_party(enabled: bool = True) -> Iterator[None]:
    """Keep what libraries print on their own off the terminal; edgeai's own messages still show.

    Native code (TensorFlow's absl/oneDNN lines, LiteRT's XNNPACK INFO line) writes to file
    descriptor 2 directly: it goes to a temporary file while Python's `sys.stderr` keeps the
    terminal, and what was caught is logged at DEBUG when the block ends. Noisy Python loggers
    are raised to ERROR and library warnings ignored. `enabled=False` (--debug) changes nothing.
    """
    if not enabled:
        yield
        return
    env_before = {k: os.environ.get(k) for k in QUIET_ENV}
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)
    loggers = [logging.getLogger(n) for n in NOISY_LOGGERS]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), _native_stderr_to_log():
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            warnings.filterwarnings("ignore", category=FutureWarning)
            warnings.filterwarnings("ignore", category=UserWarning, module=r"(torch|torchao|litert_torch|ai_edge_)")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
        for key, value in env_before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextlib.contextmanager
def _native_stderr_to_log() -> Iterator[None]:
    """fd 2 -> a temp file; `sys.stderr` -> a duplicate of the real fd 2, so Python output still shows."""
    try:
        sys.stderr.flush()
        real = os.dup(2)
    except (OSError, ValueError):  # no usable fd 2 (embedded interpreter): nothing to redirect
        yield
        return
    saved_stderr = sys.stderr
    caught = tempfile.TemporaryFile()
    terminal = io.TextIOWrapper(os.fdopen(os.dup(real), "wb", buffering=0), encoding="utf-8",
                                errors="replace", line_buffering=True)
    os.dup2(caught.fileno(), 2)
    if getattr(saved_stderr, "fileno", None) and _is_fd2(saved_stderr):
        sys.stderr = terminal
    try:
        yield
    finally:
        with contextlib.suppress(Exception):
            sys.stderr.flush()
        sys.stderr = saved_stderr
        os.dup2(real, 2)
        os.close(real)
        terminal.close()
        caught.seek(0)
        for line in caught.read().decode(errors="replace").splitlines():
            if line.strip():
                log.debug("third-party: %s", line)
        caught.close()


def _is_fd2(stream: Any) -> bool:
    try:
        return stream.fileno() == 2
    except (OSError, ValueError, io.UnsupportedOperation):
        return False
