"""BatchNorm during distillation: "train" (batch statistics), "freeze" (running ones), or "auto": measured.

Neither mode wins everywhere. Batch statistics follow the weights as they change, which a heavily
pruned student needs (zoo digits CNN, 70% pruned: 98.3% top-1 trained vs 87.5% frozen); frozen
running statistics are what the deployed model computes with, which matters when the distillation
data's batches differ from the teacher's training data or from each other (a pitch CNN trained on
real audio, distilled on synthetic tones: 693 cents trained vs +0.28 cents frozen).
"auto" screens both: from the same start, each mode trains SCREEN_BATCHES batches (the same
batches, the same schedule), then each student is scored in eval mode, as it will be deployed, by
the distillation loss to the teacher on held-out samples (the eval data, else training samples
the screen did not train on). "freeze" must win by MARGIN (else "train"), and
training continues from the winner's state, so the screen costs the loser's batches and three
small evaluations.
"""
from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field
from typing import Any, Callable

log = logging.getLogger(__name__)

MODES = ("auto", "train", "freeze")
SCREEN_BATCHES = 24          # per mode: a third of the first epoch, at least 8 (3 misled on a small CNN)
SCREEN_EVAL_SAMPLES = 512
# "freeze" must beat "train" by this fraction of the loss. Short screens can favour frozen statistics,
# which go stale only as the weights move: digits CNN 70% pruned, freeze 6.78 vs train 7.05 after 8
# batches (8.59 vs 6.87 after 7), yet 87.5% vs 98.3% top-1 after 3 epochs. Where freezing matters it
# wins by far more (held-out pitch CNN: kd_loss 0.012 frozen vs 0.087 trained). Near-ties cost little
# either way (zoo pitch CNN: 0.02436 vs 0.02415; 6.18 vs 6.37 cents after 3 epochs) and go to "train".
MARGIN = 0.25


def has_batchnorm(model: Any) -> bool:
    import torch

    return any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())


def set_train(model: Any, batchnorm: str) -> None:
    """Training mode; with batchnorm="freeze" the BatchNorm layers keep (and use) their running statistics."""
    import torch

    model.train()
    if batchnorm == "freeze":
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.eval()


def screen_batches(batches_per_epoch: int) -> int:
    """Batches each mode trains in the screen; 0 when the epoch is too short to screen and hold some out."""
    return max(0, min(SCREEN_BATCHES, max(8, batches_per_epoch // 3), batches_per_epoch - 1))


@dataclass
class Screen:
    """What the screen measured: held-out distillation loss per mode after `batches` batches each."""

    chosen: str
    batches: dict[str, int] = field(default_factory=dict)
    loss: dict[str, float] = field(default_factory=dict)
    start_loss: float = float("nan")
    held_out: str = ""
    cut_short: bool = False

    def note(self) -> str:
        if len(self.loss) < 2:
            return (f"batchnorm: auto chose {self.chosen}: max_minutes ended the screen before both modes "
                    f"were measured")
        other = next(m for m in self.loss if m != self.chosen)
        tie = (f"; freeze must be {MARGIN:.0%} lower to be chosen" if self.loss[self.chosen] > self.loss[other] else "")
        return (f"batchnorm: auto chose {self.chosen}: held-out distillation loss {self.loss[self.chosen]:.4g} "
                f"vs {self.loss[other]:.4g} with {other} after {self.batches[self.chosen]} batch(es) each "
                f"(from {self.start_loss:.4g}; {self.held_out}{tie})")

    def to_dict(self) -> dict[str, Any]:
        return {"chosen": self.chosen, "batches": self.batches, "loss": {k: round(v, 6) for k, v in self.loss.items()},
                "start_loss": round(self.start_loss, 6), "held_out": self.held_out, "cut_short": self.cut_short}


@dataclass
class Trial:
    """A copy of the training state after some batches: its optimizer and scheduler, what it trained."""

    state: Any
    opt: Any
    sched: Any
    batches: int = 0
    loss_sum: float = 0.0
    seen: int = 0
    cut_short: bool = False


def train_copy(state: Any, make_opt: Callable[[Any], tuple[Any, Any]], step: Callable[..., tuple[float, int]],
               batches: list, prepare: Callable[[Any], None], out_of_time: Callable[[], bool]) -> Trial:
    """Train a deep copy of `state` on `batches` (prepare(model) before each); stops after the batch at
    which `out_of_time()` turns true."""
    trial = copy.deepcopy(state)
    run = Trial(trial, *make_opt(trial))
    for idx in batches:
        prepare(trial["model"])
        batch_loss, batch_seen = step(trial, run.opt, run.sched, idx)
        run.batches, run.loss_sum, run.seen = run.batches + 1, run.loss_sum + batch_loss, run.seen + batch_seen
        if out_of_time():
            run.cut_short = True
            break
    return run


def screen(state: Any, make_opt: Callable[[Any], tuple[Any, Any]], step: Callable[..., tuple[float, int]],
           held_out_loss: Callable[[Any], float], batches: list, held_out: str,
           out_of_time: Callable[[], bool]) -> tuple[Screen, Trial]:
    """Train a copy of `state` (a ModuleDict: model and feature adapters) in each mode on `batches`.

    make_opt(state) -> (optimizer, scheduler); step(state, opt, sched, idx) trains one batch and returns
    (loss x samples, samples);
    held_out_loss(model) scores in eval mode. Returns (screen, the winner's trial).
    Stops after the batch at which `out_of_time()` turns true; a mode with no batch is not scored.
    """
    result = Screen(chosen="train", held_out=held_out)
    result.start_loss = held_out_loss(state["model"])
    runs: dict[str, Trial] = {}
    for mode in ("freeze", "train"):
        if result.cut_short:
            break
        run = train_copy(state, make_opt, step, batches, lambda m, mode=mode: set_train(m, mode), out_of_time)
        result.cut_short = run.cut_short
        result.batches[mode] = run.batches
        result.loss[mode] = held_out_loss(run.state["model"])
        runs[mode] = run
        log.info("distill: batchnorm screen: %s -> held-out loss %.5g after %d batch(es)", mode,
                 result.loss[mode], run.batches)
    result.chosen = min(result.loss, key=lambda m: result.loss[m])
    if len(result.loss) == 2 and result.loss["freeze"] > (1 - MARGIN) * result.loss["train"]:
        result.chosen = "train"         # no clear win for frozen statistics: they go stale as weights move
    return result, runs[result.chosen]
