"""What a benchmark is asked (BenchConfig) and what it reports (BenchResult, BenchReport): schema edgeai.bench/1."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Mapping

from edgeai.bench.stats import StopRule, TimingStats
from edgeai.errors import InputSpecError
from edgeai.fsutil import atomic_write_text

SCHEMA = "edgeai.bench/1"
RUNTIMES = ("auto", "onnxruntime", "tflite", "torch")
PROVIDERS = ("cpu", "cuda", "tensorrt")
PRECISIONS = ("fp32", "fp16", "bf16")  # --runtime torch: the dtype weights and float inputs are cast to


@dataclass(frozen=True)
class BenchConfig:
    """How every target is timed; recorded verbatim in the report's `config`."""

    runtime: str = "auto"
    threads: int = 1
    warmup: int = 10
    runs: int | None = None
    min_seconds: float | None = None
    batch: int = 1
    dims: Mapping[str, int] = field(default_factory=dict)
    provider: str = "cpu"
    isolate: bool = True
    inputs: tuple[str, ...] = ()                           # --input specs for model specs (torch)
    load_options: Mapping[str, Any] = field(default_factory=dict)  # more edgeai.source.load_model kwargs
    seed: int = 0
    device: str = "local"                                  # "local", "ssh://HOST", "adb:SERIAL"
    precision: str = "fp32"                                # torch runtime: fp32 | fp16 | bf16
    decoder: Mapping[str, Any] = field(default_factory=dict)  # decoder options (edgeai.bench.decoder.DecoderOptions)

    def __post_init__(self):
        if self.runtime not in RUNTIMES:
            raise InputSpecError(f"unknown runtime {self.runtime!r}; known: {', '.join(RUNTIMES)}")
        if self.provider not in PROVIDERS:
            raise InputSpecError(f"unknown provider {self.provider!r}; known: {', '.join(PROVIDERS)}")
        if self.precision not in PRECISIONS:
            raise InputSpecError(f"unknown precision {self.precision!r}; known: {', '.join(PRECISIONS)}")
        if self.precision != "fp32" and self.runtime != "torch":
            raise InputSpecError(f"precision {self.precision!r} applies to --runtime torch only; an exported "
                                 "artifact has its own precision (export an fp16 variant instead)")
        for name in ("threads", "batch"):
            if getattr(self, name) < 1:
                raise InputSpecError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.warmup < 0:
            raise InputSpecError(f"warmup must be >= 0, got {self.warmup}")
        for dim, size in self.dims.items():
            if not isinstance(size, int) or size < 1:
                raise InputSpecError(f"dim {dim!r} must be a positive integer, got {size!r}")
        StopRule.from_options(self.runs, self.min_seconds)  # raises on bad runs / min_seconds

    @property
    def stop_rule(self) -> StopRule:
        return StopRule.from_options(self.runs, self.min_seconds)

    def to_dict(self) -> dict:
        d = asdict(self)
        d.update(dims=dict(self.dims), inputs=list(self.inputs), load_options=dict(self.load_options),
                 decoder=dict(self.decoder),
                 stop_rule=self.stop_rule.describe())
        return d

    @classmethod
    def from_dict(cls, d: Mapping) -> "BenchConfig":
        known = {f.name for f in fields(cls)}
        kwargs = {k: v for k, v in d.items() if k in known}
        kwargs["inputs"] = tuple(kwargs.get("inputs", ()))
        return cls(**kwargs)


@dataclass(frozen=True)
class BenchResult:
    """One target's measurement, or why it could not be measured (status "failed")."""

    target: str                       # label: the path as given, FOLDER@ARTIFACT, or the model spec
    kind: str                         # "file", "artifact" or "model_spec"
    path: str
    artifact: str | None
    format: str                       # "onnx", "tflite", "torch"
    status: str                       # "ok" or "failed"
    isolated: bool                    # measured in a fresh worker process
    runtime: str | None = None        # "onnxruntime", "torch", ...
    runtime_version: str | None = None
    size_bytes: int | None = None
    import_ms: float | None = None    # importing the runtime library (cold only when isolated)
    load_ms: float | None = None
    first_ms: float | None = None     # first (cold) inference after load
    warmup: int | None = None
    timing: TimingStats | None = None
    inputs: tuple[dict, ...] = ()     # concrete {name, shape, dtype} fed to the model
    rss_before_load_bytes: int | None = None
    peak_rss_bytes: int | None = None
    peak_gpu_memory_bytes: int | None = None  # GPU providers: torch's max allocated, or the process's (nvidia-smi)
    speedup_vs_baseline: float | None = None  # baseline p50 / this p50 (> 1: faster than baseline)
    error: str | None = None
    exit_code: int | None = None      # worker exit status when it died (negative: killed by signal)
    signal: str | None = None         # e.g. "SIGABRT", "SIGSEGV"
    stderr_tail: str | None = None    # last lines the dead worker wrote to stderr
    notes: tuple[str, ...] = ()
    decoder: dict | None = None       # decoders: TTFT, prefill and decode tokens/s (SCHEMA.md, "decoder")

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def to_dict(self) -> dict:
        d = asdict(self)
        d.update(inputs=[dict(i) for i in self.inputs], notes=list(self.notes),
                 timing=self.timing.to_dict() if self.timing else None)
        return d

    @classmethod
    def from_dict(cls, d: Mapping) -> "BenchResult":
        known = {f.name for f in fields(cls)}
        d = {k: v for k, v in d.items() if k in known}  # a newer edgeai (on a device) may add fields
        d["timing"] = TimingStats.from_dict(d["timing"]) if d.get("timing") else None
        d["inputs"] = tuple(d.get("inputs", ()))
        d["notes"] = tuple(d.get("notes", ()))
        return cls(**d)


@dataclass(frozen=True)
class BenchReport:
    """All results of one `bench` call, with the environment and config they were taken under."""

    env: dict
    config: BenchConfig
    results: tuple[BenchResult, ...]
    created: str                      # ISO 8601, UTC
    baseline: str | None              # target whose p50 the speedups divide (first measured one)
    schema: str = SCHEMA

    @classmethod
    def build(cls, env: dict, config: BenchConfig, results: list[BenchResult], created: str) -> "BenchReport":
        """Fill each result's speedup against the first target that was measured."""
        base = next((r for r in results if r.ok and r.timing.p50_ms), None)
        if base is not None:  # a p50 can be null (benchmark_model builds that print no median)
            results = [replace(r, speedup_vs_baseline=base.timing.p50_ms / r.timing.p50_ms)
                       if r.ok and r.timing.p50_ms else r for r in results]
        return cls(env, config, tuple(results), created, base.target if base else None)

    @property
    def failed(self) -> list[BenchResult]:
        return [r for r in self.results if not r.ok]

    def to_dict(self) -> dict:
        return {"schema": self.schema, "created": self.created, "env": self.env,
                "config": self.config.to_dict(), "baseline": self.baseline,
                "results": [r.to_dict() for r in self.results]}

    @classmethod
    def from_dict(cls, d: Mapping) -> "BenchReport":
        return cls(env=dict(d["env"]), config=BenchConfig.from_dict(d["config"]),
                   results=tuple(BenchResult.from_dict(r) for r in d["results"]), created=d["created"],
                   baseline=d.get("baseline"), schema=d.get("schema", SCHEMA))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"

    def write_json(self, path: str | Path) -> Path:
        atomic_write_text(path, self.to_json())
        return Path(path)
