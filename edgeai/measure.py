"""Measure every artifact of an export: task metric in its runtime, latency in a fresh process, MACs."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

import numpy as np

from edgeai.manifest import ArtifactEntry
from edgeai.recipe import DataConfig, Recipe, RecipeError
from edgeai.source import ModelSource
from edgeai.verify import to_artifact_layout

log = logging.getLogger(__name__)

Progress = Callable[[str], None]


class RunData:
    """The recipe's data (eval, calibration, train), each loaded and checked against the inputs once."""

    WHAT = {"eval": "evaluation data", "calibration": "calibration data", "train": "training data"}

    def __init__(self, config: DataConfig, specs: list):
        self._config, self._specs, self._cache = config, specs, {}

    def get(self, kind: str) -> dict | None:
        """{input name: array, maybe "labels"} for `kind`, or None when the recipe gives none."""
        spec = getattr(self._config, kind)
        if not spec:
            return None
        if kind not in self._cache:
            from edgeai.data import load_feeds
            self._cache[kind] = load_feeds(spec, self._specs, what=self.WHAT[kind])
        return self._cache[kind]


def metric_fn(source: ModelSource, eval_feeds: dict | None, metric: str | None = None) -> Callable[[Path], float]:
    """path -> task metric on the evaluation data: the user `metric` (edgeai.metrics) when given,
    else top-1 with labels, else cosine to FP32 PyTorch."""
    if eval_feeds is None:
        raise RecipeError("max_drop needs evaluation data (--eval-data or data.eval in the recipe)")
    from edgeai.data import split_labels
    from edgeai.evaluate import evaluate
    from edgeai.metrics import load_metric

    user = load_metric(metric)
    feeds, labels = split_labels(eval_feeds)
    reference = None if labels is not None or user else reference_outputs(source, feeds)
    return lambda path: evaluate(path, feeds, labels=labels, reference=reference, metric=user).value


def count_stage_macs(original: ModelSource, final: ModelSource, entries: list[ArtifactEntry]) -> None:
    """MACs and parameters per sample (batch 1) of the torch model behind each artifact."""
    from edgeai.macs import count_macs

    def count(src: ModelSource) -> tuple[int, int]:
        one = src.with_dims(batch=1) if "batch" in src.example_dims else src
        c = count_macs(src.module, one.torch_inputs())
        return c.total, c.params

    try:
        counts = {"original": count(original)} if entries[0].name == "original" else {}
        final_counts = count(final)
    except Exception as e:  # informational only: a module the counter cannot trace keeps no MACs
        log.debug("MAC count skipped: %s", e)
        return
    for e in entries:
        e.metrics["macs"], e.metrics["params"] = counts.get(e.name, final_counts)


def evaluate_all(source: ModelSource, data: RunData, stage: Path, entries: list[ArtifactEntry],
                  progress: Progress, metric: str | None = None) -> None:
    """Task metric of every artifact in its runtime: the user `metric` when given, else top-1 with
    labels, else cosine to the original PyTorch model (before any pruning or distillation)."""
    from edgeai.data import split_labels
    from edgeai.evaluate import evaluate
    from edgeai.metrics import load_metric

    user = load_metric(metric)
    feeds, labels = split_labels(data.get("eval"))
    reference = None
    if labels is None and user is None:
        reference = reference_outputs(source, feeds)
    for e in entries:
        progress(f"evaluating {e.name}")
        result = evaluate(stage / e.file, to_artifact_layout(feeds, e.details), labels=labels, reference=reference,
                          metric=user)
        e.metrics[result.metric] = result.value
        e.metrics["metric_name"] = result.metric
        e.metrics["eval_samples"] = result.n


def reference_outputs(source: ModelSource, feeds: dict) -> dict:
    from edgeai.data import iter_batches
    from edgeai.verify import reference_runner
    run_ref, _ = reference_runner(source)
    outs = [run_ref(batch)[0] for batch in iter_batches(feeds, 64)]
    return {"reference": np.concatenate(outs)}


def bench_all(source: ModelSource, recipe: Recipe, stage: Path, entries: list[ArtifactEntry],
               progress: Progress) -> None:
    """p50 latency (batch 1, other dims as exported) of every artifact, each in a fresh process."""
    from edgeai.bench import bench
    progress("timing every variant (batch 1, each in a fresh process)")
    cfg = recipe.summary
    dims = {d: n for d, n in source.example_dims.items() if d != "batch"}
    report = bench([str(stage / e.file) for e in entries], threads=cfg.threads, warmup=cfg.warmup,
                   min_seconds=cfg.min_seconds, batch=1, dims=dims)
    for e, r in zip(entries, report.results):
        if r.ok:
            e.metrics["latency_p50_ms"] = r.timing.p50_ms
            e.metrics["latency_threads"] = cfg.threads
        else:
            e.notes.append(f"benchmark failed: {r.error}")
