"""Run artifacts on inputs on an ssh device (edgeai.bench.run_agent there) and bring their outputs back."""
from __future__ import annotations

import base64
import io
import json
from pathlib import Path
from typing import Sequence

import numpy as np

from edgeai.bench.devices import DeviceError, SshDevice
from edgeai.bench.ssh import configured, run_remote, send, target_specs
from edgeai.bench.targets import Target
from edgeai.fsutil import sha256_file


def outputs_over_ssh(device: SshDevice, jobs: Sequence[tuple[Target, Path]], threads: int | None = None,
                     first_only: bool = False) -> list[dict]:
    """Per (artifact target, inputs .npz): {"outputs": {name: array}} from the device's edgeai.runtime (the
    first output only with `first_only`), or {"error": why it could not run there}. Files go to the device's
    blob store once, by sha256 (as for `edgeai bench --device`); a device that cannot be reached or run the
    agent raises DeviceError."""
    with configured(device) as device:
        blobs: dict[str, Path] = {}
        specs = target_specs([t for t, _ in jobs], blobs)
        for spec, (_, inputs) in zip(specs, jobs):
            spec["inputs"] = sha256_file(inputs)
            blobs[spec["inputs"]] = Path(inputs)
        job = {**send(device, blobs, True), "threads": threads, "first_only": first_only, "targets": specs}
        out = run_remote(device, [device.python, "-m", "edgeai.bench.run_agent"], json.dumps(job),
                         "running the artifacts on the evaluation data")
    try:
        results = [_decoded(r) for r in json.loads(out.strip().splitlines()[-1])["results"]]
    except (IndexError, ValueError, KeyError, TypeError) as e:
        raise DeviceError(f"{device.name}: the device's run printed no outputs ({e})") from None
    if len(results) != len(jobs):
        raise DeviceError(f"{device.name}: the device's run returned {len(results)} results for {len(jobs)} artifacts")
    return results


def _decoded(result: dict) -> dict:
    if "error" in result:
        return {"error": str(result["error"])}
    with np.load(io.BytesIO(base64.b64decode(result["npz"])), allow_pickle=False) as z:
        return {"outputs": {name: z[f"arr_{i}"] for i, name in enumerate(result["names"])}}
