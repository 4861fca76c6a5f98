"""Honest latency benchmarks: `bench(targets)` times each model in a fresh process; `time_session` times one in-process.

Importing this package imports neither torch nor onnxruntime; a target's runtime is imported
only by the process that measures it. The JSON schema is documented in edgeai/bench/SCHEMA.md.
"""
from __future__ import annotations

from edgeai.bench.results import SCHEMA, BenchConfig, BenchReport, BenchResult
from edgeai.bench.runner import bench, run_bench
from edgeai.bench.stats import StopRule, TimingStats, time_session
from edgeai.bench.targets import Target, expand_targets

__all__ = ["SCHEMA", "BenchConfig", "BenchReport", "BenchResult", "StopRule", "Target", "TimingStats",
           "bench", "expand_targets", "run_bench", "time_session"]
