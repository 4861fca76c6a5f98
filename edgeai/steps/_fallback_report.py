"""What the accuracy fallback tried and chose (edgeai/steps/quant_fallback.py), and the notes it writes."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from edgeai.steps import _onnx_graph as g

MIN_BUDGET_SAMPLES = 32     # a budget measured on fewer samples is noted as unreliable


@dataclass(frozen=True)
class FallbackTry:
    excluded: tuple[str, ...]   # nodes kept in FP32 in this try
    metric: float
    drop: float                 # baseline - metric (positive = worse)
    path: str
    float_bytes: int = 0        # weight bytes the excluded nodes keep in float


@dataclass
class FallbackReport:
    """Every try of the fallback loop and which one was chosen."""

    baseline: float
    target: float                                              # a try is within budget when metric >= target
    budget: str = ""                                           # the budget in words, for notes
    tries: list[FallbackTry] = field(default_factory=list)
    chosen: int = 0
    within: bool = False                                       # the chosen try meets the budget
    ranking: list[tuple[str, float | None]] = field(default_factory=list)  # (unit, sensitivity), worst first
    units: dict[str, list[str]] = field(default_factory=dict)  # unit -> its nodes (a layer, an LSTM, ...)
    unit_bytes: dict[str, int] = field(default_factory=dict)   # unit -> float weight bytes it keeps when excluded
    samples: int | None = None                                 # samples the budget's metric was measured on
    stopped_at_deadline: bool = False                          # the time left ended the search (max_minutes)

    @property
    def chosen_try(self) -> FallbackTry:
        return self.tries[self.chosen]

    def notes(self) -> list[str]:
        best = self.chosen_try
        budget = self.budget or f"metric >= {self.target:.4g}"
        if self.samples is not None and f" {self.samples} " not in f" {budget} ":
            budget += f", measured on {self.samples} sample(s)"
        warn = ([f"the accuracy budget was measured on only {self.samples} sample(s) (< {MIN_BUDGET_SAMPLES}): "
                 "its metric is noisy; give eval data (--eval-data) with more samples"]
                if self.samples is not None and self.samples < MIN_BUDGET_SAMPLES else [])
        if self.stopped_at_deadline:
            warn = [f"the fallback search stopped at the export's max_minutes after {len(self.tries)} tries "
                    "(the best try within the budget so far was kept)" if self.within else
                    f"the fallback search stopped at the export's max_minutes after {len(self.tries)} tries"] + warn
        if not best.excluded and self.within:
            return warn
        kept = (f"{len(best.excluded)} node(s) in FP32 ({g.short_list(list(best.excluded))}) with "
                f"{_size(best.float_bytes)} of float weights")
        if self.within:
            return [f"accuracy fallback: kept {kept} to stay within the budget ({budget}); "
                    f"metric {best.metric:.5g} after {len(self.tries)} tries"] + warn
        return [f"accuracy fallback did NOT reach the budget ({budget}) after {len(self.tries)} tries; "
                f"best metric {best.metric:.5g} with {kept}; consider another scheme or FP16"] + warn

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for t in d["tries"]:
            t.pop("path")
            t["excluded"] = list(t["excluded"])
        d["ranking"] = [[n, None if s is None else round(s, 6)] for n, s in self.ranking]
        return d


def _size(nbytes: int) -> str:
    return f"{nbytes / 1e6:.2f} MB" if nbytes >= 1e5 else f"{nbytes / 1e3:.1f} KB"


__all__ = ["FallbackReport", "FallbackTry", "MIN_BUDGET_SAMPLES"]
