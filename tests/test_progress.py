"""Long export steps say where they are and how long is left: distillation's batches with an ETA, in plain
log lines when stderr is not a terminal (CI, a pipe), at the CLI's default log level."""
from __future__ import annotations

import logging
import re

import numpy as np

from edgeai.progress import Meter, fmt_duration

MODEL = """
import torch
from torch import nn


def build():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
                         nn.Conv2d(32, 32, 3, stride=2, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 5))
"""


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_meter_logs_plain_lines_every_interval_with_the_measured_time_left(caplog):
    clock, log = Clock(), logging.getLogger("test_progress")  # outside "edgeai": the CLI stops its propagation
    caplog.set_level(logging.INFO, logger=log.name)
    # 4 units done before the meter started (e.g. a screen) count as done, not as timed
    with Meter("distill", 104, log, done=4, live=False, every_s=20.0, clock=clock) as meter:
        for i in range(1, 11):                   # 10 units of 64 samples, 3 s each
            clock.now += 3.0
            meter.advance(1, 64, f"epoch 1/2 batch {i}/52")
    lines = [r.getMessage() for r in caplog.records]
    # 30 s in 3-s units at a 20-s interval: one line, at the 7th unit (21 s)
    assert lines == ["distill epoch 1/2 batch 7/52 | ETA 4:39 | 21 samples/s | 11/104 batches"]
    assert meter.seconds_left() == 90 * 3.0     # 90 units to go at 3 s each
    meter.line("loss 0.5")
    assert caplog.records[-1].getMessage() == "distill epoch 1/2 batch 10/52 | ETA 4:30 | 21 samples/s | loss 0.5"


def test_meter_before_any_timed_unit_says_it_is_measuring(caplog):
    log = logging.getLogger("test_progress")  # outside "edgeai": the CLI stops its propagation
    caplog.set_level(logging.INFO, logger=log.name)
    Meter("calibrate", 8, log, live=False).line()
    assert caplog.records[-1].getMessage() == "calibrate | ETA measuring | 0/8 batches"
    assert [fmt_duration(s) for s in (0, 42.4, 725, 3723)] == ["0:00", "0:42", "12:05", "1:02:03"]


def test_the_bar_shows_on_a_terminal_only_when_the_log_shows_info_and_never_in_a_worker(monkeypatch):
    from edgeai import progress
    log = logging.getLogger("test_progress.bar")
    monkeypatch.setattr(progress.sys.stderr, "isatty", lambda: True, raising=False)
    log.setLevel(logging.INFO)
    assert Meter("x", 3, log).live
    log.setLevel(logging.WARNING)                       # edgeai -q
    assert not Meter("x", 3, log).live
    log.setLevel(logging.INFO)
    monkeypatch.setattr(progress.multiprocessing, "parent_process", lambda: object())   # a build worker
    assert not Meter("x", 3, log).live


def test_non_tty_export_of_a_prune_distill_recipe_logs_epochs_with_eta(cli, tmp_path):
    (tmp_path / "model.py").write_text(MODEL)
    rng = np.random.default_rng(0)
    for name, n in (("train", 192), ("eval", 64)):
        np.savez(tmp_path / f"{name}.npz", input=rng.standard_normal((n, 3, 8, 8)).astype(np.float32),
                 labels=rng.integers(0, 5, n))
    (tmp_path / "recipe.yaml").write_text(f"""
model: {tmp_path / 'model.py'}:build
inputs: ["input:batch,3,8,8"]
steps:
  - prune: {{ratio: 0.5, round_to: 8}}
  - distill: {{epochs: 3, patience: 5, batch_size: 32, batchnorm: train}}
data: {{train: {tmp_path / 'train.npz'}, eval: {tmp_path / 'eval.npz'}}}
summary: {{bench: false}}
""")
    code, out, err = cli("export", tmp_path / "recipe.yaml", "-o", tmp_path / "out")
    assert code == 0, err
    text = " ".join(err.split())   # rich wraps log lines at 80 columns when stderr is not a terminal
    assert "distill: at most 3 epoch(s) of 6 batch(es) of 32 on 192 sample(s)" in text
    epochs = re.findall(r"distill epoch (\d)/3 \| ETA (\d+:\d\d) \| ([\d,]+) samples/s \| loss", text)
    assert [e[0] for e in epochs] == ["1", "2", "3"], text
    assert epochs[-1][1] == "0:00" and all(int(e[2].replace(",", "")) > 0 for e in epochs)
