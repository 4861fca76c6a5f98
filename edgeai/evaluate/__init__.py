"""Task metric of an artifact: top-1 accuracy against labels, or cosine similarity to reference outputs."""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Mapping

import numpy as np

from edgeai.data import DataSource, check_class_ids, iter_batches, load_feeds, num_samples, split_labels
from edgeai.errors import DataError
from edgeai.metrics import Metric
from edgeai.runtime import Session
from edgeai.runtime.subproc import load_guarded

log = logging.getLogger(__name__)

METRICS = {"top1": "top-1 accuracy (points, 0-100)", "cosine": "mean cosine similarity to the reference"}


@dataclass(frozen=True)
class EvalResult:
    """One metric value over `n` samples; higher is better for every metric."""

    metric: str     # "top1" | "cosine" | a user metric's name
    value: float
    n: int

    def drop_from(self, other: "EvalResult") -> float:
        """How much worse this result is than `other` (positive = worse), in the metric's units."""
        if other.metric != self.metric:
            raise ValueError(f"cannot compare {self.metric} with {other.metric}")
        return float(other.value - self.value)

    def to_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        return f"{self.metric}={self.value:.2f} (n={self.n})" if self.metric == "top1" else \
            f"{self.metric}={self.value:.5f} (n={self.n})"


def evaluate(model: str | Path | Session, data: DataSource, *, labels: np.ndarray | None = None,
             reference: Mapping[str, np.ndarray] | None = None, batch_size: int = 64,
             provider: str = "cpu", threads: int | None = None, metric: Metric | None = None) -> EvalResult:
    """Run `model` on `data` (samples on axis 0) and score it.

    `data` is anything `edgeai.data.load_feeds` accepts; a ``labels`` array in it is used
    unless `labels` or `reference` is given. With labels the metric is top-1 accuracy in
    points: argmax over the last dim of the first output against labels of the same leading
    shape. Without labels it is the mean
    per-sample cosine similarity between the first output (flattened per sample) and
    `reference` (the output of the same name, else the first reference array). With a user
    `metric` (edgeai.metrics) the value is ``metric(all outputs, labels)``; labels may be None.
    A model whose batch dim is fixed (e.g. 1) is run in chunks of that size, the last chunk padded.
    """
    # a crash-prone runtime (LiteRT) runs in a child process: a crash is an error, not the end of the caller
    session = model if isinstance(model, Session) else load_guarded(model, provider=provider, threads=threads)
    feeds, data_labels = split_labels(load_feeds(data, session.inputs, what="evaluation data"))
    if labels is None and reference is None:  # explicit arguments win over a 'labels' array
        labels = data_labels
    if metric is None and labels is None and reference is None:
        raise DataError("evaluation needs labels (a 'labels' array in the data or labels=...) or "
                        "reference outputs to compare with")
    return score_outputs(run_batched(session, feeds, batch_size), session.outputs[0].name,
                         labels=labels, reference=reference, metric=metric)


def score_outputs(outputs: Mapping[str, np.ndarray], first: str, *, labels: np.ndarray | None = None,
                  reference: Mapping[str, np.ndarray] | None = None, metric: Metric | None = None) -> EvalResult:
    """`evaluate`'s metric on outputs already computed (all outputs, samples on axis 0; `first`: the
    model's first output): the user `metric`, else top-1 against `labels`, else cosine to `reference`."""
    n = int(np.asarray(outputs[first]).shape[0])
    if metric is not None:
        return EvalResult(metric.name, metric(dict(outputs), labels), n)
    if labels is not None:
        return EvalResult("top1", _top1(outputs[first], np.asarray(labels)), n)
    if reference is None:
        raise DataError("evaluation needs labels or reference outputs to compare with")
    return EvalResult("cosine", _cosine(outputs[first], _pick_reference(first, reference, n)), n)


def run_batched(session: Session, feeds: Mapping[str, np.ndarray],
                batch_size: int = 64) -> dict[str, np.ndarray]:
    """All outputs of `session` on `feeds`, run in batches the model accepts, concatenated on axis 0."""
    fixed = _fixed_batch(session)
    step = fixed or batch_size
    n = num_samples(feeds)
    parts: dict[str, list[np.ndarray]] = {}
    batches, counts = [], []
    for batch in iter_batches(feeds, step):
        got = num_samples(batch)
        if fixed and got < fixed:  # pad the last chunk by repeating its last sample
            batch = {k: np.concatenate([v, np.repeat(v[-1:], fixed - got, axis=0)]) for k, v in batch.items()}
        batches.append(batch)
        counts.append(got)
    for got, result in zip(counts, session.run_many(batches)):  # one child process for an isolated session
        for name, arr in result.items():
            parts.setdefault(name, []).append(arr[:got])
    result = {k: np.concatenate(v) for k, v in parts.items()}
    assert all(v.shape[0] == n for v in result.values()), "batched outputs lost samples"
    return result


def _fixed_batch(session: Session) -> int | None:
    dims = {s.shape[0] for s in session.inputs if s.shape}
    fixed = [d for d in dims if isinstance(d, int)]
    return fixed[0] if fixed else None


def _top1(out: np.ndarray, labels: np.ndarray) -> float:
    labels = check_class_ids(labels, int(out.shape[-1]) if out.ndim else 1)
    pred = np.argmax(out, axis=-1)
    if labels.shape != pred.shape:
        if labels.size != pred.size:
            raise DataError(f"labels have shape {labels.shape} but the model predicts {pred.shape} "
                            f"(argmax over the last dim of an output of shape {out.shape})")
        labels = labels.reshape(pred.shape)
    return float(100.0 * np.mean(pred == labels))


def _pick_reference(first: str, reference: Mapping[str, np.ndarray], n: int) -> np.ndarray:
    if not reference:
        raise DataError("reference outputs are empty")
    ref = np.asarray(reference[first] if first in reference else next(iter(reference.values())))
    if ref.ndim == 0 or ref.shape[0] != n:
        raise DataError(f"reference output has {ref.shape[0] if ref.ndim else 0} samples, the data has {n}")
    return ref


def _cosine(out: np.ndarray, ref: np.ndarray) -> float:
    a = out.reshape(out.shape[0], -1).astype(np.float64)
    b = ref.reshape(ref.shape[0], -1).astype(np.float64)
    if a.shape != b.shape:
        raise DataError(f"reference output has shape {ref.shape}, the model's output has {out.shape}")
    num = (a * b).sum(axis=1)
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    # two all-zero vectors are identical; one zero vector against a non-zero one is orthogonal
    cos = np.where(den > 0, num / np.where(den > 0, den, 1.0), np.where(
        (np.linalg.norm(a, axis=1) == 0) & (np.linalg.norm(b, axis=1) == 0), 1.0, 0.0))
    return float(cos.mean())
