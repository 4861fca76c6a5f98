"""The device side of a remote benchmark: `python -m edgeai.bench.agent < JOB.json` prints a report as JSON.

The host (edgeai.bench.ssh) uploads each file once as CACHE/blobs/SHA256 (content-addressed) and
sends a job on stdin: {"cache", "incoming", "device", "config", "targets": [{"target": Target,
"files": [[name, sha256], ...]}]}. The agent moves uploaded files into the blob store after checking
their hashes, gives each target a folder of hard links with the files' own names (an export folder
keeps its manifest and external-data files beside the model), measures every target with the same
protocol as a local run (edgeai.bench.runner.measure_targets) and writes one BenchReport, labelled
with the host's target names, as JSON on stdout. Logs go to stderr.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Callable, Mapping, Sequence

from edgeai.bench.results import BenchConfig, BenchReport
from edgeai.bench.targets import Target
from edgeai.fsutil import sha256_file


def store_incoming(incoming: Path, blobs: Path) -> None:
    """Move each uploaded file (named by its sha256) into the blob store, refusing a corrupt upload."""
    for file in sorted(incoming.iterdir()):
        actual = sha256_file(file)
        if actual != file.name:
            raise RuntimeError(f"upload of {file.name} arrived corrupt (sha256 {actual}); run the benchmark again")
        os.replace(file, blobs / file.name)
    incoming.rmdir()


def target_folder(cache: Path, files: Sequence[Sequence[str]]) -> Path:
    """CACHE/runs/ID holding a hard link per (name, sha256) file; made once, atomically, per file set."""
    key = hashlib.sha256(json.dumps(sorted(map(list, files))).encode()).hexdigest()
    folder = cache / "runs" / key
    if folder.is_dir():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=folder.parent))
    for name, sha in files:
        if Path(name).name != name or name in (".", ".."):
            raise RuntimeError(f"file name {name!r} has a folder part")
        try:
            os.link(cache / "blobs" / sha, staging / name)
        except OSError:  # a file system without hard links
            shutil.copyfile(cache / "blobs" / sha, staging / name)
    try:
        os.rename(staging, folder)
    except OSError:  # another run made it first
        shutil.rmtree(staging, ignore_errors=True)
    return folder


def device_target(target: Target, folder: Path, files: Sequence[Sequence[str]]) -> Target:
    """The same target, pointing at its copy on this device."""
    if target.kind == "artifact":
        return replace(target, path=str(folder))
    return replace(target, path=str(folder / files[0][0]))


def run_job(job: Mapping) -> dict:
    from edgeai.bench.runner import measure_targets

    cache = Path(job["cache"])
    if job.get("incoming"):
        store_incoming(Path(job["incoming"]), cache / "blobs")
    config = BenchConfig.from_dict(job["config"])
    local = [Target.from_dict(t["target"]) for t in job["targets"]]
    remote = [device_target(t, target_folder(cache, spec["files"]), spec["files"])
              for t, spec in zip(local, job["targets"])]
    report = measure_targets(remote, config)
    results = [replace(r, target=t.label, path=t.path) for r, t in zip(report.results, local)]
    env = {**report.env, "device": job["device"]}
    return BenchReport.build(env, config, results, report.created).to_dict()


def serve(handler: Callable[[dict], dict]) -> int:
    """A device agent's main: the job as JSON on stdin, `handler(job)` as one JSON line on stdout."""
    import logging
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="edgeai device: %(message)s")
    job = json.load(sys.stdin)
    json.dump(handler(job), sys.stdout)
    sys.stdout.write("\n")
    return 0


def main() -> int:
    return serve(run_job)


if __name__ == "__main__":
    sys.exit(main())
