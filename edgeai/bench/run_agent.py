"""The device side of a remote run: `python -m edgeai.bench.run_agent < JOB.json` prints artifacts' outputs.

The host (edgeai.bench.ssh_run) uploads each file once into CACHE/blobs/SHA256, as for a benchmark
(edgeai.bench.agent), and sends {"cache", "incoming", "threads", "first_only", "targets": [{"target": Target,
"files": [[name, sha256], ...], "inputs": sha256 of an .npz}]}. Each artifact runs in `edgeai.runtime`
(never torch) in a child process of its own (edgeai.runtime.subproc), so a runtime that crashes on one
fails that target only, in batches the model accepts (edgeai.evaluate.run_batched). One JSON line on
stdout: {"results": [{"names": [output names], "npz": base64 .npz of arr_0, arr_1, ...} or {"error": why}]}.
"""
from __future__ import annotations

import base64
import io
import os
import re
import sys
from pathlib import Path
from typing import Mapping

import numpy as np

from edgeai.bench.agent import device_target, serve, store_incoming, target_folder
from edgeai.bench.targets import Target
from edgeai.errors import EdgeAIError

SHA256 = re.compile(r"^[0-9a-f]{64}$")
RUN_TIMEOUT_S = 3600.0   # one artifact over the whole evaluation set, on a slow board


def run_target(cache: Path, spec: Mapping, threads: int | None, first_only: bool = False) -> dict:
    """All outputs of one target on its inputs, encoded for the JSON line, or {"error": why it could not run},
    naming its files as the host does (not by their folder in this device's cache)."""
    if not SHA256.match(str(spec.get("inputs"))):
        return {"error": f"inputs {spec.get('inputs')!r} is not a sha256"}
    folder = target_folder(cache, spec["files"])
    try:
        outputs = _run(device_target(Target.from_dict(spec["target"]), folder, spec["files"]),
                       cache / "blobs" / spec["inputs"], threads)
    except EdgeAIError as e:   # the runtime's own one-line message (an op it lacks, a crash with its signal)
        return {"error": str(e).replace(f"{folder}{os.sep}", "")}
    except Exception as e:
        return {"error": f"{type(e).__name__}: {' '.join(str(e).split())[:300]}".replace(f"{folder}{os.sep}", "")}
    names = list(outputs)[:1] if first_only else list(outputs)   # top-1 and cosine read the first output only
    buf = io.BytesIO()
    np.savez(buf, *[outputs[n] for n in names])
    return {"names": names, "npz": base64.b64encode(buf.getvalue()).decode("ascii")}


def _run(target: Target, inputs: Path, threads: int | None) -> dict[str, np.ndarray]:
    from edgeai.evaluate import run_batched
    from edgeai.runtime import resolve
    from edgeai.runtime.subproc import IsolatedSession

    file, fmt = resolve(target.path, target.artifact)   # checked against its manifest's sha256
    session = IsolatedSession(file, fmt, threads=threads, timeout=RUN_TIMEOUT_S)
    with np.load(inputs, allow_pickle=False) as z:
        feeds = {name: z[name] for name in z.files}
    return run_batched(session, feeds)


def run_job(job: Mapping) -> dict:
    cache = Path(job["cache"])
    if job.get("incoming"):
        store_incoming(Path(job["incoming"]), cache / "blobs")
    return {"results": [run_target(cache, spec, job.get("threads"), bool(job.get("first_only")))
                        for spec in job["targets"]]}


def main() -> int:
    return serve(run_job)


if __name__ == "__main__":
    sys.exit(main())
