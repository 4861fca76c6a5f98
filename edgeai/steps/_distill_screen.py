"""The screens distillation runs on its first batches: the BatchNorm mode (`batchnorm: auto`, _distill_bn.py),
then the learning rate (`lr: auto`, _distill_lr.py).

Both score students the same way: in eval mode, by the distillation loss on held-out samples (the eval
data, else training samples no screen trains on). Training continues from the last screen's winner, and
the batches the winners trained count as the start of epoch 1.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any, Callable

from edgeai.steps import _distill_bn as bn
from edgeai.steps import _distill_data as dd
from edgeai.steps import _distill_loss as losses
from edgeai.steps import _distill_lr as lrs


@dataclass
class Start:
    """Where training starts after the screens."""

    batchnorm: str
    lr: float
    trial: bn.Trial | None = None        # the last winner, to continue from (None: nothing was screened)
    notes: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)

    # what the winners trained: the first batches of epoch 1
    @property
    def batches(self) -> int:
        return self.trial.batches if self.trial else 0

    @property
    def loss_sum(self) -> float:
        return self.trial.loss_sum if self.trial else 0.0

    @property
    def seen(self) -> int:
        return self.trial.seen if self.trial else 0

    @property
    def cut_short(self) -> bool:         # the wall ended a screen
        return bool(self.trial and self.trial.cut_short)


def run(state: Any, make_opt: Callable[[Any, float], tuple[Any, Any]], step: Callable[..., tuple[float, int]],
        batches: list, bs: int, dtype: Any, choice: Any, config: Any, evals: tuple, trains: tuple,
        out_of_time: Callable[[], bool]) -> Start:
    """Screen what `config` leaves to "auto" (batchnorm, lr=None) on the first batches of `batches`."""
    mode = "train" if config.batchnorm == "auto" and not bn.has_batchnorm(state["model"]) else config.batchnorm
    start = Start(batchnorm=mode, lr=config.lr if config.lr is not None else lrs.DEFAULT)
    k_bn = bn.screen_batches(len(batches)) if mode == "auto" else 0
    k_lr = lrs.screen_batches(len(batches) - k_bn) if config.lr is None else 0
    if mode == "auto" and k_bn == 0:
        start.batchnorm = "train"
        start.notes.append("batchnorm: auto chose train: too few training batches to screen both modes")
    if config.lr is None and k_lr == 0:
        start.notes.append(f"lr: auto chose {lrs.DEFAULT:g}: too few training batches to screen rates")
    held = _held_out(evals, trains, batches[:k_bn + k_lr], bs, dtype)
    if held is None:
        if start.batchnorm == "auto":
            start.batchnorm = "train"
            start.notes.append("batchnorm: auto chose train: too few training samples to screen both modes")
        if config.lr is None and k_lr:
            start.notes.append(f"lr: auto chose {lrs.DEFAULT:g}: too few training samples to screen rates")
        return start
    held_x, held_t, m, where = held

    def held_out_loss(model: Any) -> float:
        return float(losses.kd_loss(choice, dd.outputs(model, held_x, m, bs, dtype), held_t, config.temperature))

    if start.batchnorm == "auto" and k_bn:
        result, start.trial = bn.screen(state, lambda st: make_opt(st, start.lr), step, held_out_loss,
                                        batches[:k_bn], where, out_of_time)
        start.batchnorm = result.chosen
        start.notes.append(result.note())
        start.details["batchnorm_screen"] = result.to_dict()
    if config.lr is not None or not k_lr or start.cut_short:
        return start
    base = start.trial.state if start.trial is not None else state
    mode = start.batchnorm
    lr_screen, winner = lrs.screen(base, _resuming(make_opt, start.trial), step, lambda m: bn.set_train(m, mode),
                                   held_out_loss, batches[k_bn:k_bn + k_lr], where, out_of_time)
    # the rate's winner continues the BatchNorm winner's epoch: its counts include those batches
    winner.batches, winner.loss_sum, winner.seen = (winner.batches + start.batches, winner.loss_sum + start.loss_sum,
                                                    winner.seen + start.seen)
    start.lr, start.trial = lr_screen.chosen, winner
    start.notes.append(lr_screen.note())
    start.details["lr_screen"] = lr_screen.to_dict()
    return start


def _resuming(make_opt: Callable[[Any, float], tuple[Any, Any]], before: bn.Trial | None) -> Callable[[Any, float], tuple[Any, Any]]:
    """make_opt for the rate screen: after a BatchNorm screen, its scheduler's step count carries over."""
    if before is None:
        return make_opt

    def make(st: Any, lr: float) -> tuple[Any, Any]:
        opt, sched = make_opt(st, lr)
        with warnings.catch_warnings():     # stepping the schedule alone is the point: it counts the batches
            warnings.simplefilter("ignore", UserWarning)
            for _ in range(before.batches):
                sched.step()
        return opt, sched
    return make


def _held_out(evals: tuple, trains: tuple, screened: list, bs: int, dtype: Any) -> tuple | None:
    """(inputs, teacher outputs, count, where) of the samples screens are scored on, or None."""
    (eval_x, t_eval, n_eval), (train_x, t_train, order) = evals, trains
    if n_eval:
        m = min(n_eval, bn.SCREEN_EVAL_SAMPLES)
        return dd.take(eval_x, slice(0, m)), t_eval[:m], m, f"{m} eval samples"
    rest = order[sum(len(b) for b in screened):][:bn.SCREEN_EVAL_SAMPLES]
    if len(rest) == 0:
        return None
    return dd.take(train_x, rest.numpy()), t_train[rest], len(rest), f"{len(rest)} training samples the screens did not train on"
