"""`bench(targets, ...)`: measure each target, by default each in a fresh worker process, into a BenchReport."""
from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping, Sequence

import edgeai
from edgeai.bench.devices import LOCAL, AdbDevice, SshDevice, parse_device
from edgeai.bench.env import environment
from edgeai.bench.results import BenchConfig, BenchReport, BenchResult
from edgeai.bench.targets import Target, expand_targets
from edgeai.bench.worker import failed_result, measure_or_fail

log = logging.getLogger(__name__)

WORKER_CMD = (sys.executable, "-m", "edgeai.bench.worker")
STDERR_TAIL_LINES = 20


def bench(targets: Sequence[str | Path], *, runtime: str = "auto", threads: int = 1, warmup: int = 10,
          runs: int | None = None, min_seconds: float | None = None, batch: int = 1,
          dims: Mapping[str, int] | None = None, provider: str = "cpu", isolate: bool = True,
          inputs: Sequence[str] | None = None, load_options: Mapping[str, Any] | None = None,
          verify_digest: bool = True, device: str | SshDevice | AdbDevice | None = None,
          precision: str = "fp32", decoder: Mapping[str, Any] | None = None) -> BenchReport:
    """Time every target (see edgeai/bench/SCHEMA.md for what is measured and how).

    targets: .onnx/.tflite files, edgeai export folders (every artifact, manifest order) or
    FOLDER@ARTIFACT; with runtime="torch", model specs for edgeai.source.load_model, whose
    `inputs` (NAME:DIM,... specs) and `load_options` (example_inputs, arch, trust_pickle) are
    passed through. Neither runs nor min_seconds: >= 50 runs and >= 1 s, stopping at 10 s.
    An export folder's files are checked against its manifest's sha256 first, unless `verify_digest`
    is False. device: None or "local" (this machine), "ssh://HOST" or an SshDevice / AdbDevice
    (edgeai.bench.devices): the artifacts are copied there and timed by the same protocol.
    precision (runtime="torch" only): fp32, or fp16/bf16 to cast the module's weights and float inputs.
    decoder: options for KV-cache decoders (edgeai.bench.decoder.DecoderOptions: prompt_lengths, depths,
    new_tokens, repeats); a decoder is timed as a generator (TTFT, prefill and decode tokens/s).
    """
    if isinstance(device, str):
        device = parse_device(device)
    config = BenchConfig(runtime=runtime, threads=threads, warmup=warmup, runs=runs,
                         min_seconds=min_seconds, batch=batch, dims=dict(dims or {}), provider=provider,
                         isolate=isolate, inputs=tuple(inputs or ()), load_options=dict(load_options or {}),
                         device=device.name if device else LOCAL, precision=precision,
                         decoder=dict(decoder or {}))
    return run_bench(targets, config, device, verify_digest=verify_digest)


def run_bench(targets: Sequence[str | Path], config: BenchConfig, device: SshDevice | AdbDevice | None = None,
              *, verify_digest: bool = True) -> BenchReport:
    expanded = expand_targets(targets, config.runtime, verify_digest=verify_digest)
    if config.runtime == "torch":  # model files are checked here, so a refusal is a one-line error (exit 2)
        from edgeai.bench.torch_session import check_model_specs
        check_model_specs([t.path for t in expanded], config)
    if isinstance(device, SshDevice):
        from edgeai.bench.ssh import bench_over_ssh
        return bench_over_ssh(expanded, config, device)
    if isinstance(device, AdbDevice):
        from edgeai.bench.android import bench_over_adb
        return bench_over_adb(expanded, config, device)
    return measure_targets(expanded, config)


def measure_targets(expanded: Sequence[Target], config: BenchConfig) -> BenchReport:
    """Measure targets already expanded, on this machine, into a report with this machine's fingerprint."""
    created = datetime.now(timezone.utc).isoformat(timespec="seconds")
    env = environment(config.threads, config.provider)
    results = []
    for i, target in enumerate(expanded, 1):
        log.info("bench %d/%d: %s", i, len(expanded), target.label)
        result = (measure_isolated(target, config) if config.isolate
                  else measure_or_fail(target, config, isolated=False))
        if result.ok:
            log.info("%s: p50 %.3f ms over %d runs", target.label, result.timing.p50_ms, result.timing.n)
        else:  # the error is in the result: the report prints each distinct one once
            log.info("%s failed", target.label)
        results.append(result)
    return BenchReport.build(env, config, results, created)


def measure_isolated(target: Target, config: BenchConfig) -> BenchResult:
    """Run the worker in a fresh interpreter; a worker that dies becomes a failed result."""
    job = json.dumps({"target": target.to_dict(), "config": config.to_dict()})
    with tempfile.TemporaryDirectory(prefix="edgeai-bench-") as tmp:
        out = Path(tmp) / "result.json"
        proc = subprocess.run([*WORKER_CMD, str(out)], input=job, capture_output=True, text=True,
                              env=_worker_env())
        if proc.returncode == 0 and out.is_file():
            return BenchResult.from_dict(json.loads(out.read_text()))
    rc = proc.returncode
    sig = _signal_name(-rc) if rc < 0 else None
    how = f"was killed by {sig}" if sig else f"exited with code {rc}"
    tail = proc.stderr.strip().splitlines()[-STDERR_TAIL_LINES:]
    return failed_result(target, f"the worker process {how} before reporting a result", isolated=True,
                  exit_code=rc, signal=sig, stderr_tail="\n".join(tail) or None)


def _signal_name(num: int) -> str:
    try:
        return signal.Signals(num).name
    except ValueError:
        return f"signal {num}"


def _worker_env() -> dict[str, str]:
    """This environment, with this edgeai first on the path (it may run from a source checkout)."""
    env = dict(os.environ)
    root = str(Path(edgeai.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    return env
