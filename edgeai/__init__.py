"""edgeai: make a trained PyTorch model small and fast, export it, verify it, run and bench it.

`import edgeai` is light: torch and the converters load only when a step needs them.
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

_LAZY = {
    "export": "edgeai.api",          # a model spec or an nn.Module; the pipeline does the work
    "evaluate": "edgeai.evaluate",
    "bench": "edgeai.bench",
    "load_model": "edgeai.source",
    "runtime": "edgeai.runtime",
    "optimize": "edgeai.optimize",   # a callable module: edgeai.optimize(model, out_dir, ...)
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        module = importlib.import_module(_LAZY[name])
        return module if module.__name__.endswith(name) else getattr(module, name)
    raise AttributeError(f"module 'edgeai' has no attribute {name!r}")
