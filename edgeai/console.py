"""Terminal output for people: tables at their natural width, and third-party chatter kept off stderr."""
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


def print_wide(renderable: Any, console: Any = None) -> None:
    """Print `renderable` (a rich Table) at its natural width, even past the console's width."""
    from rich.console import Console
    from rich.measure import Measurement
    console = console or Console()
    needed = Measurement.get(console, console.options.update_width(10_000), renderable).maximum
    width = console.width
    console.width = max(width, needed)
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
