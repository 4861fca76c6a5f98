"""Measure one target in this process; `python -m edgeai.bench.worker RESULT.json < JOB.json` runs it isolated.

The job is {"target": Target.to_dict(), "config": BenchConfig.to_dict()} on stdin; the worker
writes one BenchResult as JSON to RESULT.json. If the runtime kills the process (SIGSEGV,
SIGABRT) no result is written and the parent reports the exit status instead.
"""
from __future__ import annotations

import faulthandler
import importlib
import json
import logging
import sys
import time
from pathlib import Path
from typing import Callable, Mapping, Sequence

from edgeai.bench.env import current_rss_bytes, peak_rss_bytes
from edgeai.bench.results import BenchConfig, BenchResult
from edgeai.bench.stats import time_session
from edgeai.bench.targets import Target
from edgeai.errors import EdgeAIError, InputSpecError
from edgeai.runtime.base import Session
from edgeai.specs import TensorSpec, random_feeds

log = logging.getLogger(__name__)

# The library each format's runtime imports, imported before the load timer starts so that
# load_ms is the model's load, not the library's (that is import_ms).
RUNTIME_MODULES = {"onnx": "onnxruntime", "tflite": "ai_edge_litert.interpreter", "torch": "torch"}


def open_session(target: Target, config: BenchConfig) -> Session:
    if target.kind == "model_spec":
        from edgeai.bench.torch_session import load_torch_session
        return load_torch_session(target.path, config)
    from edgeai import runtime
    session = runtime.load(target.path, artifact=target.artifact, provider=config.provider,
                           threads=config.threads, verify_digest=False)  # checked once in expand_targets
    if config.provider != "cpu":  # time the GPU, not host copies: IO binding
        from edgeai.bench.gpu import wrap_for_gpu
        session = wrap_for_gpu(session)
    return session


def feed_sizes(specs: Sequence[TensorSpec], batch: int, dims: Mapping[str, int],
               example_dims: Mapping[str, int] | None = None) -> tuple[dict[str, int], list[str]]:
    """Sizes of dynamic dims: `batch` for the dim named "batch" (else the first dynamic dim),
    `dims` for any dim by name; the rest keep the size they were exported with (`example_dims`,
    from the manifest), else the spec's example size. Also notes for the report.

    A dynamic dim with none of these has no size to guess: InputSpecError naming each such dim.
    """
    dynamic = list(dict.fromkeys(d for s in specs for d in s.dynamic_dims))
    notes = []
    sizes = {d: int(n) for d, n in (example_dims or {}).items() if d in dynamic}
    batch_dim = "batch" if "batch" in dynamic else (dynamic[0] if dynamic else None)
    if batch_dim is not None:
        sizes[batch_dim] = batch
    elif batch != 1:
        notes.append(f"every input shape is fixed, so batch {batch} was not applied")
    unused = [d for d in dims if d not in dynamic]
    if unused:
        notes.append(f"--dim {', '.join(unused)} matches no dynamic dimension of this model "
                     f"(dynamic: {', '.join(dynamic) or 'none'})")
    sizes.update({d: n for d, n in dims.items() if d in dynamic})
    examples = {d for s in specs for d in s.example_sizes}
    unset = [d for d in dynamic if d not in sizes and d not in examples]
    if unset:
        where = "; ".join(f"input {s.name!r} is {'x'.join(map(str, s.shape))}" for s in specs
                          if set(s.dynamic_dims) & set(unset))
        raise InputSpecError(f"dynamic dim(s) {', '.join(unset)} have no size ({where}) and no edgeai manifest "
                             f"lists the size they were exported with; give each: "
                             + " ".join(f"--dim {d}=N" for d in unset))
    return sizes, notes


def _import_runtime(fmt: str) -> float | None:
    module = RUNTIME_MODULES.get(fmt)
    if module is None:
        return None
    t0 = time.perf_counter()
    try:
        importlib.import_module(module)
    except ImportError:  # the runtime's own load raises the user-facing error
        return None
    return (time.perf_counter() - t0) * 1e3


def measure(target: Target, config: BenchConfig, open_fn: Callable[[], Session] | None = None,
            isolated: bool = False) -> BenchResult:
    """Load (timed), first inference (timed, cold), warmup, then time_session by the config's rule."""
    import_ms = _import_runtime(target.format)
    rss_before = current_rss_bytes()
    t0 = time.perf_counter()
    session = open_fn() if open_fn else open_session(target, config)
    load_ms = (time.perf_counter() - t0) * 1e3
    from edgeai.bench.kv import is_decoder
    if is_decoder(session.inputs):  # a KV-cache decoder is timed as a generator
        from edgeai.bench.decoder import measure_decoder, reopen
        session, load_ms, note = reopen(session, load_ms)
        return measure_decoder(target, config, session, import_ms, load_ms, rss_before, isolated, note)
    sizes, notes = feed_sizes(session.inputs, config.batch, config.dims, target.example_dims)
    feeds = session.prepare(random_feeds(session.inputs, sizes, config.seed))
    t0 = time.perf_counter()
    session.run_unchecked(feeds)
    first_ms = (time.perf_counter() - t0) * 1e3
    timing = time_session(session, feeds, config.warmup, config.runs, config.min_seconds)
    rule = config.stop_rule
    if timing.n < rule.min_runs:
        notes.append(f"stopped at the {rule.max_seconds:g} s cap after {timing.n} runs "
                     f"(fewer than {rule.min_runs}); pass --runs or --min-seconds for more")
    if not isolated:
        notes.append("measured in-process: earlier targets may have warmed caches, and peak RSS "
                     "is the whole process's")
    info = session.describe()
    notes.extend(info.get("notes", ()))
    size = target.size_bytes if target.size_bytes is not None else getattr(session, "size_bytes", None)
    return BenchResult(
        target=target.label, kind=target.kind, path=target.path, artifact=target.artifact,
        format=target.format, status="ok", isolated=isolated,
        runtime=info.get("runtime", target.format), runtime_version=info.get("runtime_version"),
        size_bytes=size, import_ms=import_ms, load_ms=load_ms, first_ms=first_ms,
        warmup=config.warmup, timing=timing,
        inputs=tuple({"name": n, "shape": list(a.shape), "dtype": str(a.dtype)} for n, a in feeds.items()),
        rss_before_load_bytes=rss_before, peak_rss_bytes=peak_rss_bytes(),
        peak_gpu_memory_bytes=info.get("peak_gpu_memory_bytes"), notes=tuple(notes))


def failed_result(target: Target, error: str, isolated: bool, **details) -> BenchResult:
    return BenchResult(target=target.label, kind=target.kind, path=target.path, artifact=target.artifact,
                       format=target.format, status="failed", isolated=isolated,
                       size_bytes=target.size_bytes, error=error, **details)


def measure_or_fail(target: Target, config: BenchConfig, isolated: bool,
                    open_fn: Callable[[], Session] | None = None) -> BenchResult:
    """`measure`, but an error in one target becomes its failed result instead of ending the run."""
    try:
        return measure(target, config, open_fn, isolated)
    except EdgeAIError as e:
        return failed_result(target, str(e), isolated)
    except Exception as e:  # a runtime's own exception: report it, keep benchmarking the others
        log.exception("benchmarking %s failed", target.label)
        return failed_result(target, f"{type(e).__name__}: {e}", isolated)


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m edgeai.bench.worker RESULT.json < JOB.json", file=sys.stderr)
        return 2
    faulthandler.enable()  # a segfault in a runtime leaves a Python traceback on stderr
    job = json.load(sys.stdin)
    target, config = Target.from_dict(job["target"]), BenchConfig.from_dict(job["config"])
    result = measure_or_fail(target, config, isolated=True)
    Path(argv[0]).write_text(json.dumps(result.to_dict()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
