"""Numbers from command-line text: argparse types the subcommands share (stdlib only)."""
from __future__ import annotations

import argparse
import logging
import math
import os

log = logging.getLogger(__name__)

MAX_THREADS = 1024   # above any CPU edgeai runs on; 100000 threads would hang a run before it starts
THREADS_HELP = ("at most the CPU cores of the machine that runs it: a larger N is lowered to the core count, "
                f"with a warning; above {MAX_THREADS} is refused")


def is_count(text: str) -> bool:
    """True for a plain ASCII decimal integer >= 0 ('²' and '٣' are digits to str.isdigit, not to int)."""
    return text.isascii() and text.isdigit()


def positive_int(text: str) -> int:
    if not is_count(text) or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return int(text)


def count(text: str) -> int:
    if not is_count(text):
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
    return int(text)


def seconds(text: str) -> float:
    value = _float(text)
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"expected a number of seconds > 0, got {text!r}")
    return value


def finite_float(text: str) -> float:
    value = _float(text)
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def nonnegative_float(text: str) -> float:
    """A finite number >= 0 (tolerances, budgets)."""
    value = _float(text)
    if not (value >= 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {text!r}")
    return value


def threads(text: str) -> int:
    """A thread count from 1 to MAX_THREADS (local runs are then lowered to the cores by `cap_threads`)."""
    if not is_count(text) or not 1 <= int(text) <= MAX_THREADS:
        raise argparse.ArgumentTypeError(f"expected a thread count from 1 to {MAX_THREADS}, got {text!r}")
    return int(text)


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask, else the machine's count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def cap_threads(n: int | None, flag: str = "--threads") -> int | None:
    """`n` lowered to the cores here, with a warning: more threads than cores only oversubscribe them."""
    cores = available_cores()
    if isinstance(n, int) and n > cores:
        log.warning("%s %d is more than the %d CPU core(s) here; using %d", flag, n, cores, cores)
        return cores
    return n


def check_utf8_args(values: dict) -> None:
    """ConfigError when a path or name on the command line is not UTF-8 (undecodable bytes in argv):
    ONNX, the runtimes and the manifest all need UTF-8 names, and would fail later with a misleading error."""
    from edgeai.errors import ConfigError
    for dest, value in values.items():
        for text in value if isinstance(value, (list, tuple)) else [value]:
            if isinstance(text, str) and not _is_utf8(text):
                shown = os.fsencode(text).decode("utf-8", "backslashreplace")
                positional = dest in ("model", "artifact", "targets", "folder", "file")
                flag = dest if positional else "--" + dest.replace("_", "-")
                raise ConfigError(f"{flag} '{shown}' is not valid UTF-8; ONNX, the runtimes and the manifest need "
                                  "UTF-8 file names: rename it")


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return math.nan
