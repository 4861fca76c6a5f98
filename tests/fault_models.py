"""Models that misbehave on purpose (NaN outputs, interrupts during export), as factories for the fault tests."""
import os
import signal
import time
from pathlib import Path

import torch
from torch import nn


class NaNOutput(nn.Module):
    """log of a value that is negative for half the inputs: NaN where x < 0."""

    def forward(self, x):
        return torch.log(x)


class InterruptSwallowedByTracer(nn.Module):
    """While torch.export traces it, Ctrl-C arrives and the tracer turns the KeyboardInterrupt into an
    ordinary error (as torch.export's strict mode does); outside export it is a plain model."""

    def forward(self, x):
        if torch.compiler.is_exporting():
            try:
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(5)
            except KeyboardInterrupt:
                raise RuntimeError("tracing failed") from None
        return x * 2


class SlowExport(nn.Module):
    """Takes a minute to export: touches $EDGEAI_TEST_MARKER when the export starts, for a test to kill it."""

    def forward(self, x):
        if torch.compiler.is_exporting():
            Path(os.environ["EDGEAI_TEST_MARKER"]).touch()
            time.sleep(60)
        return x + 1


def nan_output():
    return NaNOutput()


def interrupt_swallowed():
    return InterruptSwallowedByTracer()


def slow_export():
    return SlowExport()
