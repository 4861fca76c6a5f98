"""User task metrics: `FUNC(outputs, labels) -> float`, higher is better, loaded from `file.py:FUNC` or `module:FUNC`.

A metric sees every output of the artifact (or of the PyTorch model, during distillation) as
``{output name: array with samples on axis 0}`` and the data's ``labels`` array as given (any
dtype or shape), or None when the data has none. It returns one finite number, higher is better
(return minus an error); `--max-drop` is in its units. Loading one runs the user's code, like a
recipe's `module:function`: it is code the user chose to run.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import numpy as np

from edgeai.errors import ConfigError, DataError


class MetricError(ConfigError):
    """A user metric cannot be imported, or returned something that is not one finite number."""


@dataclass(frozen=True)
class Metric:
    """A named user metric; call it with (outputs, labels)."""

    name: str
    spec: str
    fn: Callable[[dict[str, np.ndarray], Any], Any]

    def __call__(self, outputs: Mapping[str, np.ndarray], labels: np.ndarray | None) -> float:
        try:
            value = self.fn(dict(outputs), labels)
        except Exception as e:
            raise DataError(f"metric {self.spec!r} raised {type(e).__name__}: {e}") from None
        try:
            value = float(np.asarray(value).item()) if np.size(value) == 1 else value
        except (TypeError, ValueError):
            pass
        if not isinstance(value, float) or not math.isfinite(value):
            raise MetricError(f"metric {self.spec!r} must return one finite number (higher is better), "
                              f"got {value!r}")
        return value


def load_metric(spec: str | None) -> Metric | None:
    """The metric named by `spec` (`file.py:FUNC` or `package.module:FUNC`), or None for no spec."""
    if not spec:
        return None
    if ":" not in spec:
        raise MetricError(f"metric {spec!r} must be FILE.py:FUNC or package.module:FUNC")
    from edgeai.imports import import_callable
    fn = import_callable(spec, "metric", MetricError)
    return Metric(name=spec.rpartition(":")[2], spec=spec, fn=fn)
