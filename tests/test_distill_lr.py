"""lr: auto screens learning rates on the first batches and keeps the one with the lowest held-out loss; with a
time limit the cosine schedule is fitted to end at it."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn as nn

from edgeai.steps import StepContext
from edgeai.steps import _distill_lr as lrs
from edgeai.steps.distill import DistillConfig, distill

torch.set_num_threads(1)


def _mlp(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(16, 64), nn.Tanh(), nn.Linear(64, 8)).eval()


def _data(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 16)).astype(np.float32)


def _auto(student, teacher, **kw):
    ctx = StepContext(teacher=teacher, train_data={"input": _data(1024, 1)}, eval_data={"input": _data(256, 2)})
    return distill(student, {"input": torch.zeros(1, 16)}, DistillConfig(epochs=1, batch_size=32, loss="mse", **kw),
                   ctx)


def _run_at(lr: float, student, teacher, batches: int) -> float:
    """Held-out MSE after `batches` AdamW steps at `lr` on the same data (what the screen compares)."""
    model = copy.deepcopy(student).train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    x = torch.from_numpy(_data(1024, 1))
    for b in range(batches):
        xb = x[b * 32:(b + 1) * 32]
        loss = nn.functional.mse_loss(model(xb), teacher(xb).detach())
        opt.zero_grad()
        loss.backward()
        opt.step()
    held = torch.from_numpy(_data(256, 2))
    with torch.no_grad():
        return float(nn.functional.mse_loss(model.eval()(held), teacher(held)))


def test_auto_picks_a_small_rate_for_a_student_already_close_to_its_teacher():
    teacher = _mlp(0)
    student = copy.deepcopy(teacher)
    with torch.no_grad():
        for p in student.parameters():
            p.add_(3e-4 * torch.randn_like(p))
    out, rep = _auto(student, teacher)
    screen = rep.details["lr_screen"]
    assert screen["chosen"] == rep.details["lr"] == 1e-4, screen
    assert screen["batches"] == 8 and set(screen["loss"]) == {"0.001", "0.0003", "0.0001"}
    assert any(n.startswith("lr: auto chose 0.0001: held-out distillation loss") for n in rep.notes)
    # what the screen saw holds outside it: steps of 1e-3 push a nearly exact student away
    assert _run_at(1e-4, student, teacher, 8) < _run_at(1e-3, student, teacher, 8)


def test_auto_picks_a_large_rate_for_a_student_far_from_its_teacher():
    teacher, student = _mlp(0), _mlp(1)
    out, rep = _auto(student, teacher)
    assert rep.details["lr"] == 1e-3, rep.details["lr_screen"]
    loss = rep.details["lr_screen"]["loss"]
    assert loss["0.001"] < loss["0.0003"] < loss["0.0001"] < rep.details["lr_screen"]["start_loss"]


def test_a_given_rate_screens_nothing():
    teacher, student = _mlp(0), _mlp(1)
    _, rep = _auto(student, teacher, lr=3e-4)
    assert rep.details["lr"] == 3e-4 and rep.details["lr_screen"] is None
    assert not any(n.startswith("lr:") for n in rep.notes)


def test_too_few_batches_fall_back_to_the_default_with_a_note():
    teacher, student = _mlp(0), _mlp(1)
    ctx = StepContext(teacher=teacher, train_data={"input": _data(40, 1)}, eval_data={"input": _data(64, 2)})
    _, rep = distill(student, {"input": torch.zeros(1, 16)}, DistillConfig(epochs=1, batch_size=32, loss="mse"), ctx)
    assert rep.details["lr"] == lrs.DEFAULT and rep.details["lr_screen"] is None
    assert any("too few training batches to screen rates" in n for n in rep.notes)


def test_with_a_time_limit_the_schedule_ends_at_it():
    teacher, student = _mlp(0), _mlp(1)
    torch.optim.AdamW([torch.zeros(1, requires_grad=True)])   # its first use imports torch._dynamo: seconds
    ctx = StepContext(teacher=teacher, train_data={"input": _data(4096, 1)}, eval_data={"input": _data(256, 2)})
    cfg = DistillConfig(epochs=400, batch_size=32, loss="mse", lr=1e-3, max_minutes=0.05, patience=400)
    _, rep = distill(student, {"input": torch.zeros(1, 16)}, cfg, ctx)
    d = rep.details
    planned = 400 * 128
    assert d["schedule_steps"] < planned and any("fitted to the time limit" in n for n in rep.notes)
    # the schedule was planned to end where the time ended: within a third of the steps really taken
    assert d["steps"] == pytest.approx(d["schedule_steps"], rel=0.34), (d["steps"], d["schedule_steps"])


def test_without_a_time_limit_the_schedule_is_the_epochs():
    teacher, student = _mlp(0), _mlp(1)
    _, rep = _auto(student, teacher, lr=1e-3)
    assert rep.details["schedule_steps"] == 32 == rep.details["steps"]


@pytest.mark.parametrize("left,expected", [(1e9, 1000), (10.0, 100 + int(0.9 * 10 / 0.11)), (0.0, 101)])
def test_fitted_steps_is_what_fits_in_the_time_left(left, expected):
    # 0.1 s a batch, an evaluation of 1 s once per 100-batch epoch: 0.11 s a step
    assert lrs.fitted_steps(1000, 100, 0.1, left, 1.0, 100) == expected
