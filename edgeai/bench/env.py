"""The environment fingerprint every benchmark records, and process memory (RSS) readings (stdlib only)."""
from __future__ import annotations

import os
import sys
from importlib import metadata

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
    }


def peak_rss_bytes() -> int | None:
    """The highest resident set size this process has reached, in bytes (None where unknown)."""
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
