"""What a build and a timing produced: the records the search keeps, caches and reports."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Built:
    """A built (exported, verified, scored) candidate, or why it could not be built."""

    id: str
    folder: str | None = None            # a normal export folder holding only this artifact
    size_bytes: int | None = None
    metric: str | None = None            # "top1", "cosine", or the user metric's name
    value: float | None = None
    notes: list[str] = field(default_factory=list)
    error: str | None = None
    reference_sha256: str | None = None  # the baseline's outputs on the evaluation data
    transient: bool = False              # the failure was this machine's (a missing package, disk, memory): not cached
    distill: dict | None = None          # what its distill step measured (builder.distill_summary)
    capped_minutes: float | None = None  # distillation cut to this by the budget while it ran (not cached)
    interrupted: bool = False            # killed at the budget or by a signal: not a property of the candidate

    def to_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class Timing:
    """One candidate's per-round latencies with the baseline's from the same rounds (paired)."""

    p50: list[float]
    p90: list[float]
    base_p50: list[float]
    base_p90: list[float]
    peak_rss_bytes: int | None = None
    error: str | None = None

    def speedups(self, stat: str) -> list[float]:
        base, mine = (self.base_p90, self.p90) if stat == "p90" else (self.base_p50, self.p50)
        return [b / m for b, m in zip(base, mine)]
