"""Learning rate "auto" (the default): measured on the first batches; and a schedule that ends at the wall.

No one rate suits every student. AdamW at 1e-3 recovers a pruned CNN or LSTM within an epoch, but it never
improved a pruned BERT-shaped encoder (zoo `bert_encoder`, 25% of MACs pruned: the held-out cosine loss
stayed at its initial 0.0282 for 4 minutes), which 1e-4 brought to 0.0026 in two epochs. "auto" trains the
same SCREEN batches from the same start at each of CANDIDATES, scores each student in eval mode by the
distillation loss on held-out samples, and continues from the lowest; the screen costs the other rates'
batches.

The cosine schedule is planned over the epochs asked for. When a wall ends the distillation first
(`max_minutes`, or the export's deadline), the learning rate would still be high when it stops, so once
a few batches are timed the schedule is re-planned to end when the time does (`fitted_steps`), and again
whenever the batches timed have doubled, on the pace of the batches since the last plan (the first
batches are slower: allocation, caches).
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any, Callable

from edgeai.steps._distill_bn import Trial, train_copy

log = logging.getLogger(__name__)

CANDIDATES = (1e-3, 3e-4, 1e-4)
DEFAULT = 1e-3            # when the epoch is too short to screen, and for the BatchNorm screen that runs first
FIT_AFTER = 3             # batches timed before the schedule is first fitted to the wall (then at 6, 12, 24...)
FIT_SHARE = 0.9           # of the time left that the planned steps may take (evaluations take the rest)


def screen_batches(batches_left: int) -> int:
    """Batches each rate trains (2 to 8, a quarter of the epoch); 0 when fewer than 3 are left in the epoch."""
    k = min(8, max(2, batches_left // 4))
    return k if batches_left - k >= 1 else 0


@dataclass
class LrScreen:
    """What the screen measured: held-out distillation loss per learning rate after `batches` batches each."""

    chosen: float
    batches: int = 0
    loss: dict[float, float] = field(default_factory=dict)
    start_loss: float = float("nan")
    held_out: str = ""
    cut_short: bool = False

    def note(self) -> str:
        if len(self.loss) < len(CANDIDATES):
            return (f"lr: auto chose {self.chosen:g}: max_minutes ended the screen after "
                    f"{len(self.loss)} of {len(CANDIDATES)} rates")
        others = ", ".join(f"{v:.4g} at {lr:g}" for lr, v in self.loss.items() if lr != self.chosen)
        return (f"lr: auto chose {self.chosen:g}: held-out distillation loss {self.loss[self.chosen]:.4g} vs "
                f"{others} after {self.batches} batch(es) each (from {self.start_loss:.4g}; {self.held_out})")

    def to_dict(self) -> dict[str, Any]:
        return {"chosen": self.chosen, "batches": self.batches,
                "loss": {f"{k:g}": round(v, 6) for k, v in self.loss.items()},
                "start_loss": round(self.start_loss, 6), "held_out": self.held_out, "cut_short": self.cut_short}


def screen(state: Any, make_opt: Callable[[Any, float], tuple[Any, Any]], step: Callable[..., tuple[float, int]],
           prepare: Callable[[Any], None], held_out_loss: Callable[[Any], float], batches: list, held_out: str,
           out_of_time: Callable[[], bool]) -> tuple[LrScreen, Trial]:
    """Train a copy of `state` at each candidate rate on `batches`; (screen, the winner's trial)."""
    result = LrScreen(chosen=CANDIDATES[0], held_out=held_out)
    result.start_loss = held_out_loss(state["model"])
    runs: dict[float, Trial] = {}
    for lr in CANDIDATES:
        run = train_copy(state, lambda st, lr=lr: make_opt(st, lr), step, batches, prepare, out_of_time)
        loss = held_out_loss(run.state["model"])
        result.loss[lr], result.batches, runs[lr] = (loss if math.isfinite(loss) else math.inf), run.batches, run
        log.info("distill: lr screen: %g -> held-out loss %.5g after %d batch(es)", lr, loss, run.batches)
        if run.cut_short:
            result.cut_short = True
            break
    result.chosen = min(result.loss, key=lambda lr: result.loss[lr])
    return result, runs[result.chosen]


def cosine(plan: dict) -> Callable[[int], float]:
    """LambdaLR factor: half a cosine from 1 to 0 over plan["total"] steps (re-planned by fitted_steps)."""
    return lambda s: 0.5 * (1.0 + math.cos(math.pi * min(s, plan["total"]) / max(plan["total"], 1)))


def fitted_steps(total: int, done: int, seconds_per_batch: float, seconds_left: float, eval_s: float,
                 batches_per_epoch: int) -> int:
    """The schedule's steps when a wall `seconds_left` away ends training before `total` steps: the steps
    done plus those that fit in FIT_SHARE of the time left, less an evaluation per epoch they span."""
    if seconds_per_batch <= 0:
        return total
    per_step = seconds_per_batch + eval_s / max(batches_per_epoch, 1)
    return max(done + 1, min(total, done + int(FIT_SHARE * max(seconds_left, 0.0) / per_step)))


class Fitting:
    """Re-plans the cosine schedule against the wall at FIT_AFTER timed batches and each doubling after."""

    def __init__(self, planned: int, epochs: int):
        self.planned, self.epochs, self.total = planned, epochs, planned
        self.next_at, self.mark = FIT_AFTER, (0.0, 0)

    def due(self, batches: int) -> bool:
        return batches >= self.next_at

    def refit(self, done: int, seconds: float, batches: int, seconds_left: float, eval_s: float,
              batches_per_epoch: int) -> int:
        """The schedule's steps now: `seconds`/`batches` are the training steps timed so far (screens too)."""
        since_s, since_b = seconds - self.mark[0], batches - self.mark[1]
        pace = since_s / since_b if since_b >= 2 else seconds / max(batches, 1)
        self.total = fitted_steps(self.planned, done, pace, seconds_left, eval_s, batches_per_epoch)
        self.mark, self.next_at = (seconds, batches), 2 * batches
        return self.total

    def note(self) -> str | None:
        if self.total >= self.planned:
            return None
        return (f"the learning-rate schedule was fitted to the time limit: it ends after {self.total} of the "
                f"{self.planned} steps {self.epochs} epoch(s) take")
