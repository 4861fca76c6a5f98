"""`edgeai bench X.tflite --device adb:SERIAL --benchmark-binary PATH`: TFLite's benchmark_model on a phone, same JSON.

The user provides benchmark_model built for the phone (TFLite's `android_aarch64_benchmark_model`);
edgeai pushes it and each .tflite once (named by sha256 under /data/local/tmp/edgeai), runs it with
the bench protocol mapped to its flags (warmup runs, then at least N runs and S seconds, stopping
at the cap) and parses its log into a BenchResult. benchmark_model prints count, mean, std, min,
max and (in recent builds) p5/median/p95, not p90/p99: those are null, p95 goes to the notes.
"""
from __future__ import annotations

import logging
import re
import shlex
import subprocess
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

from edgeai.bench.devices import AdbDevice, DeviceError
from edgeai.bench.results import BenchConfig, BenchReport, BenchResult
from edgeai.bench.stats import TimingStats
from edgeai.bench.targets import Target
from edgeai.bench.worker import failed_result
from edgeai.fsutil import sha256_file
from edgeai.hw import INTERESTING_FLAGS

log = logging.getLogger(__name__)

REMOTE_DIR = "/data/local/tmp/edgeai"
_NUM = r"([0-9.]+(?:e[+-]?[0-9]+)?)"
_STATS = re.compile(rf"count=(\d+) first={_NUM} curr={_NUM} min={_NUM} max={_NUM} avg={_NUM} std={_NUM}"
                    rf"(?: p5={_NUM} median={_NUM} p95={_NUM})?")
_SUMMARY = re.compile(rf"Inference timings in us: Init: {_NUM}, First inference: {_NUM}")
_PEAK = re.compile(rf"(?:Overall peak memory footprint \(MB\) via periodic monitoring: {_NUM}"
                   rf"|Peak memory footprint \(MB\): init={_NUM} overall={_NUM})")
# a fixed command (no user input): the device's fingerprint, one `key=value` or section per line
ENV_COMMAND = ("echo model=$(getprop ro.product.model); echo soc=$(getprop ro.soc.model); "
               "echo android=$(getprop ro.build.version.release); echo kernel=$(uname -r); "
               "echo governor=$(cat /sys/devices/system/cpu/cpu0/cpufreq/scaling_governor 2>/dev/null); "
               "for t in /sys/class/thermal/thermal_zone*/temp; do echo temp=$(cat $t 2>/dev/null); done; "
               "cat /proc/cpuinfo")


@dataclass(frozen=True)
class ParsedRun:
    """What one benchmark_model log says (times in ms)."""

    timing: TimingStats
    load_ms: float | None
    first_ms: float | None
    peak_memory_bytes: int | None
    p95_ms: float | None


def parse_benchmark_output(text: str) -> ParsedRun:
    """The timed runs are the last `count=` line with `first=` (the earlier one is the warmup)."""
    stats = [m for m in _STATS.finditer(text)]
    if not stats:
        tail = " / ".join(ln.strip() for ln in text.strip().splitlines()[-3:])
        raise DeviceError(f"benchmark_model printed no timing line (count=... avg=...); its output ended: {tail}")
    m = stats[-1]
    n = int(m.group(1))
    us = [float(g) / 1e3 if g is not None else None for g in m.groups()[1:]]
    _first, _curr, lo, hi, avg, std, _p5, median, p95 = us
    timing = TimingStats(n=n, mean_ms=avg, std_ms=std, min_ms=lo, max_ms=hi, p50_ms=median,
                         p90_ms=None, p99_ms=None, total_s=avg * n / 1e3)
    summary = _SUMMARY.search(text)
    peak = _PEAK.search(text)
    peak_mb = (peak.group(1) or peak.group(3)) if peak else None
    return ParsedRun(timing, float(summary.group(1)) / 1e3 if summary else None,
                     float(summary.group(2)) / 1e3 if summary else None,
                     int(float(peak_mb) * 2**20) if peak_mb else None, p95)


def benchmark_flags(config: BenchConfig) -> list[str]:
    """The bench protocol in benchmark_model's flags (its stop rule has the same shape as ours)."""
    rule = config.stop_rule
    max_secs = rule.max_seconds if rule.max_seconds != float("inf") else 86400.0
    if rule.max_runs == rule.min_runs:  # exactly N runs: no time floor, no time cap worth hitting
        max_secs = 86400.0
    return [f"--num_threads={config.threads}", f"--warmup_runs={config.warmup}", "--warmup_min_secs=0",
            f"--num_runs={rule.min_runs}", f"--min_secs={rule.min_seconds:g}", f"--max_secs={max_secs:g}"]


def parse_android_env(text: str, config: BenchConfig, device: AdbDevice) -> dict:
    """The env fingerprint (same keys as a local run's) from ENV_COMMAND's output."""
    values, temps, flags, processors = {}, [], set(), 0
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and key in ("model", "soc", "android", "kernel", "governor"):
            values[key] = value.strip()
        elif sep and key == "temp" and value.strip().lstrip("-").isdigit():
            temps.append(int(value) / 1000.0)
        else:
            k, _, v = line.partition(":")
            if k.strip() == "processor":
                processors += 1
            elif k.strip() == "Features":
                flags.update(v.split())
    name = " ".join(x for x in (values.get("model"), values.get("soc")) if x) or "Android device"
    return {
        "cpu": {"model": name, "machine": "aarch64" if "asimd" in flags else "arm",
                "flags": sorted(f for f in INTERESTING_FLAGS if f in flags)},
        "logical_cores": processors or None, "physical_cores": processors or None, "usable_cores": None,
        "load_avg_1m": None, "os": {"system": f"Android {values.get('android', '')}".strip(),
                                    "release": values.get("kernel", "")},
        "python": None, "python_executable": None,
        "versions": {"benchmark_model": Path(device.benchmark_binary).name},
        "threads": config.threads, "provider": config.provider, "device": device.name,
        "cpu_governor": values.get("governor") or None,
        "temperature_c": max(temps) if temps else None, "gpu": None,
    }


class Adb:
    """`adb -s SERIAL ...` as argument lists; shell commands are quoted with shlex.quote."""

    def __init__(self, serial: str):
        self.serial = serial

    def _run(self, args: list[str], timeout: float | None = None) -> subprocess.CompletedProcess:
        try:
            return subprocess.run(["adb", "-s", self.serial, *args], capture_output=True, text=True, timeout=timeout)
        except FileNotFoundError:
            raise DeviceError("adb is not installed; install Android platform-tools "
                              "(apt-get install adb) and enable USB debugging") from None

    def shell(self, command: str, timeout: float | None = None) -> tuple[int, str]:
        proc = self._run(["shell", command], timeout)
        if proc.returncode != 0 and "device" in proc.stderr and "not found" in proc.stderr:
            raise DeviceError(f"adb: device {self.serial!r} not found; see `adb devices`")
        return proc.returncode, proc.stdout + proc.stderr

    def exists(self, remote: str) -> bool:
        rc, out = self.shell(f"test -e {shlex.quote(remote)} && echo present")
        return "present" in out

    def push(self, local: Path, remote: str) -> None:
        """Push to REMOTE.partial, then rename: an interrupted push never leaves a file that looks complete."""
        proc = self._run(["push", str(local), f"{remote}.partial"])
        if proc.returncode != 0:
            raise DeviceError(f"adb push {str(local)!r} to {self.serial} failed: {proc.stderr.strip()[-300:]}")
        self.shell(f"mv {shlex.quote(remote + '.partial')} {shlex.quote(remote)}")


def push_once(adb: Adb, local: Path, suffix: str = "") -> str:
    """Push `local` to REMOTE_DIR/SHA256[SUFFIX] unless it is already there; its device path."""
    remote = f"{REMOTE_DIR}/{sha256_file(local)}{suffix}"
    if not adb.exists(remote):
        log.info("push %s to %s", local, remote)
        adb.shell(f"mkdir -p {REMOTE_DIR}")
        adb.push(local, remote)
    return remote


def bench_over_adb(targets: Sequence[Target], config: BenchConfig, device: AdbDevice,
                   adb: Adb | None = None) -> BenchReport:
    """Each .tflite target timed by benchmark_model on the device; other formats fail with the reason."""
    if config.provider != "cpu":
        raise DeviceError("--device adb: runs benchmark_model on the CPU (XNNPACK); use --provider cpu")
    adb = adb or Adb(device.serial)
    created = datetime.now(timezone.utc).isoformat(timespec="seconds")
    binary = push_once(adb, Path(device.benchmark_binary))
    adb.shell(f"chmod 755 {shlex.quote(binary)}")
    env = parse_android_env(adb.shell(ENV_COMMAND, timeout=60)[1], config, device)
    results = []
    for target in targets:
        results.append(_measure(adb, binary, target, config))
    return BenchReport.build(env, config, results, created)


def _measure(adb: Adb, binary: str, target: Target, config: BenchConfig) -> BenchResult:
    if target.format != "tflite":
        return failed_result(target, f"{target.label!r} is {target.format}; benchmark_model runs .tflite files",
                             isolated=True)
    local = Path(target.path)
    if target.kind == "artifact":
        from edgeai.manifest import Manifest
        local = local / Manifest.read(local).get(target.artifact).file
    model = push_once(adb, local, ".tflite")
    rc, out = adb.shell(" ".join(shlex.quote(a) for a in [binary, f"--graph={model}", *benchmark_flags(config)]))
    try:
        run = parse_benchmark_output(out)
    except DeviceError as e:
        return failed_result(target, f"benchmark_model exited {rc}: {e}", isolated=True)
    notes = ["timed on the device by TFLite's benchmark_model: p90/p99 are not reported (null)"
             + (f"; its p95 is {run.p95_ms:.3f} ms" if run.p95_ms is not None else "")]
    if run.timing.p50_ms is None:
        notes.append("this benchmark_model prints no median: p50 is null (use a recent build)")
    if config.batch != 1 or config.dims:
        notes.append("benchmark_model runs the model's own input shapes: --batch and --dim were not applied")
    return BenchResult(target=target.label, kind=target.kind, path=target.path, artifact=target.artifact,
                       format="tflite", status="ok", isolated=True, runtime="tflite benchmark_model",
                       size_bytes=target.size_bytes, load_ms=run.load_ms, first_ms=run.first_ms,
                       warmup=config.warmup, timing=run.timing, peak_rss_bytes=run.peak_memory_bytes,
                       notes=tuple(notes))
