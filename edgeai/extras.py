"""Which pip extra brings which module, so a device install says in one line what to add (stdlib only)."""
from __future__ import annotations

import importlib.util

from edgeai.errors import MissingDependencyError

# top-level module -> the extra of `pip install "edgeai[EXTRA]"` that installs it
EXTRA_OF_MODULE = {
    "torch": "export", "onnx": "export", "onnxscript": "export", "torch_pruning": "export",
    "sklearn": "export", "yaml": "export",
    "litert_torch": "tflite", "ai_edge_quantizer": "tflite",
    "ai_edge_litert": "litert",
}


def require(module: str, what: str) -> None:
    """Raise a one-line MissingDependencyError naming the extra unless `module` can be imported
    (checked with find_spec: nothing is imported)."""
    if importlib.util.find_spec(module) is None:
        extra = EXTRA_OF_MODULE[module]
        raise MissingDependencyError(f"{what} needs the '{extra}' extra ({module} is not installed); "
                                     f"run: pip install \"edgeai[{extra}]\"")
