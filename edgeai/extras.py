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


def missing_extra_error(error: ModuleNotFoundError, what: str) -> MissingDependencyError | None:
    """The one-line error for `what` when `error` names a module an extra provides, else None."""
    module = (error.name or "").partition(".")[0]
    extra = EXTRA_OF_MODULE.get(module)
    if extra is None:
        return None
    return MissingDependencyError(
        f"{what} needs the '{extra}' extra ({module} is not installed); "
        f"run: pip install \"edgeai[{extra}]\"")


def require(module: str, what: str) -> None:
    """Raise the missing-extra error for `what` unless `module` can be imported (nothing is imported)."""
    if importlib.util.find_spec(module) is None:
        raise missing_extra_error(ModuleNotFoundError(f"No module named {module!r}", name=module), what)
