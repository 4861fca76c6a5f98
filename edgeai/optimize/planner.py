"""The multi-fidelity plan for distilled pruning: what each build costs, what to screen, what to distill longer.

Pure arithmetic on measured costs (no clock, no builds), so it can be tested with made-up numbers.
The search measures; this module decides:
- `Costs`: seconds a build spends besides distillation (export, verify, quantize, calibrate, score),
  seconds timing one candidate takes, seconds the final report takes;
- `screen_minutes`: the short distillation every pruning ratio gets first (rung 0);
- `promote` and `final_minutes`: successive halving's last rung: the one or two most promising
  (format, ratio) arms by expected speedup get the rest of the budget.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping

# distillation minutes are chosen on this grid (0.25 * 2**k), rounded down: the same budget and machine
# give the same fidelities, so a re-run finds its builds in the cache
GRID_MIN = 0.25
SCREEN_SHARE = 0.3       # of the distillation time left when pruning starts, spent screening every ratio
PROMISE = 3.0            # a screened ratio within PROMISE x --max-drop may recover with a longer distillation
SLACK = 1.15             # estimates are multiplied by this before asking whether work fits


@dataclass(frozen=True)
class Costs:
    """What the search measured so far (seconds)."""

    overhead_s: float            # a unit's build besides distillation: prune, export, verify, quantize, score
    timing_s: float              # timing one candidate (all rounds, fresh processes)
    report_s: float = 10.0       # writing best/, baseline/, report.*, pareto.png

    def unit_s(self, distill_minutes: float, candidates: int) -> float:
        """Build and time one unit of `candidates` (their baseline timed beside them)."""
        return SLACK * (60 * distill_minutes + self.overhead_s + self.timing_s * (candidates + 1))

    def reserve_s(self, candidates: int) -> float:
        """What must be left when a build ends: timing its candidates, then the report."""
        return SLACK * self.timing_s * (candidates + 1) + self.report_s


def grid_floor(minutes: float) -> float | None:
    """The largest grid value <= `minutes` (0.25, 0.5, 1, 2, 4, ...), or None below the smallest."""
    if minutes < GRID_MIN:
        return None
    return GRID_MIN * 2 ** math.floor(math.log2(minutes / GRID_MIN) + 1e-9)


def fit_minutes(seconds: float, costs: Costs, candidates: int) -> float | None:
    """The most distillation (on the grid) a unit can get and still be built and timed in `seconds`."""
    return grid_floor((seconds / SLACK - costs.overhead_s - costs.timing_s * (candidates + 1)) / 60)


def screen_minutes(seconds_left: float, arms: int, costs: Costs, candidates: int) -> float | None:
    """Rung 0: the distillation minutes each of `arms` screens gets: SCREEN_SHARE of what the time left
    holds for distillation once every screen's build and timing are paid, split evenly, at least the
    shortest on the grid; None when not even that fits."""
    arms = max(arms, 1)
    fixed = arms * SLACK * (costs.overhead_s + costs.timing_s * (candidates + 1))
    free = seconds_left - costs.report_s - fixed          # what all distillations together could take
    if free < arms * SLACK * 60 * GRID_MIN:
        return None
    return max(grid_floor(SCREEN_SHARE * free / arms / SLACK / 60) or GRID_MIN, GRID_MIN)


@dataclass(frozen=True)
class Screened:
    """What a screen of one (format, ratio) arm measured."""

    format: str
    ratio: float
    drop: float | None            # the smallest accuracy drop among its variants (None: not scored)
    speedup: float                # its best measured speedup, or the estimate when nothing was timed
    converged: bool               # distillation ended on its epochs or patience, not on max_minutes
    seconds_per_epoch: float | None = None   # measured distillation seconds for one pass over the data
    epochs: int | None = None                # the epochs the distill step asks for


def promising(arms: list[Screened], max_drop: float) -> list[Screened]:
    """Arms worth a longer distillation: not yet converged, and within PROMISE x --max-drop (exactly
    within it when the budget is 0), most expected speedup first; when none is that close, the one
    closest to the budget (a short screen is far from where a longer distillation ends)."""
    limit = max_drop * PROMISE if max_drop > 0 else 1e-12
    open_ = [a for a in arms if not a.converged and a.drop is not None]
    keep = [a for a in open_ if a.drop <= limit]
    if not keep:
        return [min(open_, key=lambda a: (a.drop, -a.speedup))] if open_ else []
    return sorted(keep, key=lambda a: (-a.speedup, a.ratio))


def final_minutes(arm: Screened, seconds: float, costs: Costs, candidates: int) -> float | None:
    """The last rung's distillation minutes for `arm` in `seconds`: all it can get, but no more than
    its full schedule needs (epochs x measured seconds per epoch, rounded up on the grid)."""
    minutes = fit_minutes(seconds, costs, candidates)
    if minutes is not None and arm.seconds_per_epoch and arm.epochs:
        full = grid_floor(arm.epochs * arm.seconds_per_epoch / 60)
        full = GRID_MIN if full is None else (full if full * 60 >= arm.epochs * arm.seconds_per_epoch else full * 2)
        minutes = min(minutes, full)
    return minutes


def plan_final(arms: list[Screened], seconds_left: float, costs: Costs | Mapping[str, Costs], candidates: int,
               screened_minutes: float) -> tuple[list[tuple[Screened, float]], str]:
    """Successive halving's last rung: (arm, minutes) for the one or two most promising arms, and why.
    `costs`: one for every format, or each format's.

    Two arms when each still gets at least twice its screen's distillation, else the best one,
    else none (the screens stand)."""
    if not arms:
        return [], "no screened ratio is worth a longer distillation"
    cost = (lambda a: costs[a.format]) if isinstance(costs, Mapping) else (lambda a: costs)
    for k in (2, 1):
        if len(arms) < k:
            continue
        plan = [(a, final_minutes(a, (seconds_left - cost(a).report_s) / k, cost(a), candidates)) for a in arms[:k]]
        if all(m is not None and m >= 2 * screened_minutes for _, m in plan):
            names = ", ".join(f"{a.format} prune{a.ratio:g} ({m:g} min)" for a, m in plan)
            return plan, f"distilled longer: {names}"
    return [], (f"no time left for a longer distillation than the {screened_minutes:g} min screens "
                f"({max(seconds_left, 0) / 60:.1f} min left)")


def expected_speedup(unpruned_best: float, pruned_gain: float | None, ratio: float) -> float:
    """Speedup a (format, ratio) arm should reach: the format's best unpruned speedup times what pruning
    gained where it was measured (FP32 pruned / FP32), else the MACs it removes."""
    return unpruned_best * (pruned_gain if pruned_gain else 1.0 / (1.0 - ratio))
