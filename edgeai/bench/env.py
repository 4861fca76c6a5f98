"""The environment fingerprint every benchmark records, and process memory (RSS) readings (stdlib only)."""
from __future__ import annotations

import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from edgeai import __version__
from edgeai.hw import cpu_info, os_info

# Distributions whose versions decide the numbers; read from package metadata, never imported.
VERSIONED = ("numpy", "onnx", "onnxruntime", "onnxruntime-gpu", "torch", "ai-edge-litert")


def package_versions() -> dict[str, str | None]:
    """{distribution: version or None when not installed}, edgeai first (its own version if not installed)."""
    versions: dict[str, str | None] = {"edgeai": _version("edgeai") or __version__}
    versions.update({name: _version(name) for name in VERSIONED})
    return versions


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def environment(threads: int, provider: str) -> dict:
    """Where the numbers were taken: CPU, cores, OS, Python, package versions, threads, provider."""
    cpu, system = cpu_info(), os_info()
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    return {
        "cpu": {"model": cpu["model"], "machine": cpu["machine"], "flags": cpu["flags"]},
        "logical_cores": cpu["logical_cores"],
        "physical_cores": cpu["physical_cores"],
        "usable_cores": affinity,            # cores this process may run on (affinity mask)
        "load_avg_1m": load,                 # other work on the machine when the run started
        "os": {"system": system["system"], "release": system["release"]},
        "python": system["python"],
        "python_executable": sys.executable,
        "versions": package_versions(),
        "threads": threads,
        "provider": provider,
        "device": "local",                   # where it ran: "local", "ssh://HOST", "adb:SERIAL"
        "cpu_governor": cpu_governor(),
        "temperature_c": temperature_c(),
        "gpu": gpu_info() if provider != "cpu" else None,
    }


def cpu_governor(sysfs: Path = Path("/sys/devices/system/cpu")) -> str | None:
    """cpufreq scaling governor of CPU 0 (`performance`, `ondemand`, ...), None where not exposed."""
    try:
        return (sysfs / "cpu0" / "cpufreq" / "scaling_governor").read_text().strip() or None
    except OSError:
        return None


def temperature_c(thermal: Path = Path("/sys/class/thermal")) -> float | None:
    """Highest thermal-zone temperature in degrees C (a throttling board runs slower), None where unreadable."""
    temps = []
    for zone in sorted(thermal.glob("thermal_zone*")):
        try:
            temps.append(int((zone / "temp").read_text().strip()) / 1000.0)  # millidegrees
        except (OSError, ValueError):
            continue
    return max(temps) if temps else None


def gpu_info(nvidia_smi: str = "nvidia-smi") -> list[dict] | None:
    """Name, driver and memory of each NVIDIA GPU from `nvidia-smi` (None when there is none)."""
    fields = "name,driver_version,memory.total,memory.used"
    try:
        proc = subprocess.run([nvidia_smi, f"--query-gpu={fields}", "--format=csv,noheader,nounits"],
                              capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if proc.returncode != 0:
        return None
    gpus = []
    for line in proc.stdout.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) != 4:
            continue
        name, driver, total, used = parts
        gpus.append({"name": name, "driver": driver, "memory_total_bytes": _mib(total),
                     "memory_used_bytes": _mib(used)})
    return gpus or None


def gpu_process_memory_bytes(pid: int, nvidia_smi: str = "nvidia-smi") -> int | None:
    """GPU memory process `pid` holds now, from `nvidia-smi` (None where unknown). Caching allocators
    (onnxruntime's arena, torch's) do not give memory back, so at the end of a run this is its peak."""
    try:
        proc = subprocess.run([nvidia_smi, "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
                              capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    total = [_mib(used) for p, _, used in (ln.partition(",") for ln in proc.stdout.splitlines())
             if p.strip() == str(pid)]
    return sum(x for x in total if x is not None) if total and proc.returncode == 0 else None


def _mib(text: str) -> int | None:
    text = text.strip()
    return int(float(text) * 2**20) if text.replace(".", "", 1).isdigit() else None


def peak_rss_bytes() -> int | None:
    """The highest resident set size this process has reached, in bytes (None where unknown).

    On Linux it is VmHWM of /proc/self/status: the peak of this program's own memory. getrusage's
    ru_maxrss is not: it carries over the RSS the process had before exec, which for a worker started
    by subprocess (vfork) is the parent's; a bench worker spawned by a 400 MB parent reported 465 MB for a
    model that needs 60 MB.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024   # kB
    except (OSError, ValueError, IndexError):
        pass
    try:
        import resource
    except ImportError:  # Windows
        import psutil
        return getattr(psutil.Process().memory_info(), "peak_wset", None)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak) if sys.platform == "darwin" else int(peak) * 1024  # Linux reports KiB


def current_rss_bytes() -> int:
    import psutil
    return int(psutil.Process().memory_info().rss)
