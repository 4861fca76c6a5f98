"""What optimize's cache keys are made of: digests of the model, the data and the metric, not their paths."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np


def model(source) -> str:
    """The weights and structure of the model (its file for ONNX), not the path it was loaded from."""
    h = hashlib.sha256()
    h.update(json.dumps(source.to_dict()["inputs"], sort_keys=True).encode())
    if source.module is None:
        h.update(Path(source.onnx_path).read_bytes())
        return h.hexdigest()
    h.update(repr(source.module).encode())
    for name, tensor in source.module.state_dict().items():
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def arrays(feeds: dict) -> str:
    h = hashlib.sha256()
    for name in sorted(feeds):
        a = np.ascontiguousarray(feeds[name])
        h.update(f"{name}{a.dtype}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def metric(spec: str | None) -> str | None:
    if not spec:
        return None
    file = spec.rpartition(":")[0]
    if file.endswith(".py") and Path(file).is_file():
        return hashlib.sha256(Path(file).read_bytes()).hexdigest() + ":" + spec.rpartition(":")[2]
    return spec

