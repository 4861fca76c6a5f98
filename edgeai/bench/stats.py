"""The timed loop (`time_session`), its stopping rule, and the statistics of its samples (numpy only)."""
from __future__ import annotations

import gc
import sys
import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Mapping, Sequence

import numpy as np

from edgeai.errors import InputSpecError

if TYPE_CHECKING:
    from edgeai.runtime.base import Session

# Default stopping rule when neither `runs` nor `min_seconds` is given (as MLPerf's minimum
# query count and duration): at least 50 timed runs AND at least 1 s of them, but stop at
# 10 s even if 50 runs were not reached (a slow model gets fewer runs, never a hang).
DEFAULT_MIN_RUNS = 50
DEFAULT_MIN_SECONDS = 1.0
DEFAULT_MAX_SECONDS = 10.0


@dataclass(frozen=True)
class TimingStats:
    """Latency statistics of `n` timed runs, in milliseconds (`total_s`: their summed time)."""

    n: int
    mean_ms: float
    std_ms: float      # sample standard deviation (ddof=1); 0 for a single run
    min_ms: float
    max_ms: float
    p50_ms: float | None  # percentiles interpolate linearly between order statistics (numpy's default);
    p90_ms: float | None  # None where only a summary was measured (benchmark_model builds without a median)
    p99_ms: float | None
    total_s: float

    @classmethod
    def from_samples(cls, samples_ms: Sequence[float]) -> "TimingStats":
        a = np.asarray(samples_ms, dtype=np.float64)
        if a.size == 0:
            raise ValueError("no timing samples")
        p50, p90, p99 = np.percentile(a, [50, 90, 99])
        return cls(n=int(a.size), mean_ms=float(a.mean()),
                   std_ms=float(a.std(ddof=1)) if a.size > 1 else 0.0,
                   min_ms=float(a.min()), max_ms=float(a.max()),
                   p50_ms=float(p50), p90_ms=float(p90), p99_ms=float(p99),
                   total_s=float(a.sum()) / 1e3)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping) -> "TimingStats":
        return cls(**d)


@dataclass(frozen=True)
class StopRule:
    """Stop the timed loop once `min_runs` and `min_seconds` are both reached, or at either cap."""

    min_runs: int
    min_seconds: float
    max_runs: int = sys.maxsize
    max_seconds: float = float("inf")

    @classmethod
    def from_options(cls, runs: int | None = None, min_seconds: float | None = None) -> "StopRule":
        """`runs` alone: exactly that many; `min_seconds` alone: that long (>= 1 run);
        both: at least both; neither: the documented default (>= 50 runs and >= 1 s, cap 10 s)."""
        if runs is not None and runs < 1:
            raise InputSpecError(f"runs must be >= 1, got {runs}")
        if min_seconds is not None and min_seconds <= 0:
            raise InputSpecError(f"min_seconds must be > 0, got {min_seconds}")
        if runs is None and min_seconds is None:
            return cls(DEFAULT_MIN_RUNS, DEFAULT_MIN_SECONDS, max_seconds=DEFAULT_MAX_SECONDS)
        if min_seconds is None:
            return cls(runs, 0.0, max_runs=runs)
        return cls(runs or 1, min_seconds)

    def describe(self) -> str:
        if self.max_runs == self.min_runs:
            return f"exactly {self.min_runs} runs"
        text = f">= {self.min_runs} runs and >= {self.min_seconds:g} s"
        return text + (f", stopping at {self.max_seconds:g} s" if self.max_seconds != float("inf") else "")


def time_session(session: "Session", feeds: Mapping[str, np.ndarray], warmup: int = 10,
                 runs: int | None = None, min_seconds: float | None = None) -> TimingStats:
    """Time `session.run_unchecked(feeds)`: `warmup` untimed runs, then timed runs by StopRule.

    Each run is timed on its own with `time.perf_counter_ns`; the garbage collector is off
    during the timed loop (as in `timeit`). Feeds are checked and cast once beforehand.
    """
    if warmup < 0:
        raise InputSpecError(f"warmup must be >= 0, got {warmup}")
    rule = StopRule.from_options(runs, min_seconds)
    feeds = session.prepare(feeds)
    run, clock = session.run_unchecked, time.perf_counter_ns
    for _ in range(warmup):
        run(feeds)
    min_runs, max_runs = rule.min_runs, rule.max_runs
    min_ns, max_ns = rule.min_seconds * 1e9, rule.max_seconds * 1e9
    samples: list[int] = []
    append = samples.append
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        start = clock()
        while True:
            t0 = clock()
            run(feeds)
            t1 = clock()
            append(t1 - t0)
            n, elapsed = len(samples), t1 - start
            if (n >= min_runs and elapsed >= min_ns) or n >= max_runs or elapsed >= max_ns:
                break
    finally:
        if gc_was_enabled:
            gc.enable()
    return TimingStats.from_samples(np.asarray(samples, dtype=np.float64) / 1e6)
