"""Exporter registry: format name -> how to turn a torch module into a file of that format.

An exporter is one new file that registers an `Exporter`; nothing else is edited.
The exporter writes `out_path` (plus extra files beside it) and does NOT verify: the
pipeline verifies every artifact in its own runtime afterwards.
"""
from __future__ import annotations

import contextlib
import signal
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

from edgeai.registry import Registry

if TYPE_CHECKING:  # torch is imported only when an export runs
    import torch

    from edgeai.specs import TensorSpec


@dataclass(frozen=True)
class ExportResult:
    exporter: str                                  # which path produced it, e.g. "torch.export"
    files: list[str]                               # model file first, then extra files (relative names)
    details: dict[str, Any] = field(default_factory=dict)   # format-specific facts for the manifest
    notes: list[str] = field(default_factory=list)          # things the user must know


# fn(module, example_inputs {name: tensor, call order}, input_specs, out_path, config) -> ExportResult
ExportFn = Callable[["torch.nn.Module", "dict[str, torch.Tensor]", "list[TensorSpec]", Path, Any], ExportResult]


def _single_attempt(config: Any) -> list[Any]:
    return [config]


@dataclass(frozen=True)
class Exporter:
    format: str
    suffix: str           # ".onnx"
    config_cls: type      # frozen dataclass of options
    fn: ExportFn
    # configs to try in order (export + verify each) until one passes; e.g. ONNX tries
    # torch.export first and TorchScript after it
    attempts: Callable[[Any], list[Any]] = _single_attempt
    # True when this config writes a model with fixed shapes: the pipeline then exports at batch 1
    fixed_shapes: Callable[[Any], bool] = lambda config: False


EXPORTERS: Registry[Exporter] = Registry("exporter", package=__name__)


def get_exporter(fmt: str) -> Exporter:
    return EXPORTERS.get(fmt)


def flatten_outputs(outputs: Any) -> list:
    """Module outputs (tensor, nested tuples/lists, dict) as a flat list, in exported output order."""
    if isinstance(outputs, dict):
        return [t for v in outputs.values() for t in flatten_outputs(v)]
    if isinstance(outputs, (tuple, list)):
        return [t for v in outputs for t in flatten_outputs(v)]
    return [outputs]


def output_names(outputs: Any) -> tuple[list[str], list]:
    """(names, flat outputs), the same in every format: the keys of a flat dict (one key too, e.g.
    last_hidden_state), 'output' for one tensor, else output_0, output_1, ..."""
    leaves = flatten_outputs(outputs)
    if isinstance(outputs, dict) and len(outputs) == len(leaves):
        return [str(k) for k in outputs], leaves
    if len(leaves) == 1:
        return ["output"], leaves
    return [f"output_{i}" for i in range(len(leaves))], leaves


@contextlib.contextmanager
def interrupts_propagate() -> Iterator[None]:
    """Inside: a Ctrl-C (SIGINT) or SIGTERM always ends the export with KeyboardInterrupt / Terminated.

    torch's tracers catch what user code raises (torch.export's strict mode turns it into an
    export error), so a KeyboardInterrupt raised while tracing can come out as an ordinary
    failure, and the pipeline would then fall back to the next export path. The signal is
    remembered here and raised again, whatever the exporter made of it.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}

    def remember(signum, frame):
        caught.append(signum)
        previous[signum](signum, frame)  # raises KeyboardInterrupt / Terminated

    # only Python-level handlers are wrapped: a default SIGTERM still ends the process at once
    wrapped = [sig for sig, h in previous.items() if callable(h)]
    for sig in wrapped:
        signal.signal(sig, remember)
    try:
        yield
    except KeyboardInterrupt:
        raise
    except BaseException as e:
        if caught or _interrupt_in(e):
            raise _interrupt(caught) from None
        raise
    else:
        if caught:  # the tracer swallowed the interrupt and went on
            raise _interrupt(caught)
    finally:
        for sig in wrapped:
            signal.signal(sig, previous[sig])


def _interrupt(caught: list[int]) -> KeyboardInterrupt:
    from edgeai.errors import Terminated
    return Terminated() if signal.SIGTERM in caught else KeyboardInterrupt()


def _interrupt_in(e: BaseException | None) -> bool:
    """True when a KeyboardInterrupt is anywhere in the exception's cause/context chain."""
    seen = set()
    while e is not None and id(e) not in seen:
        if isinstance(e, KeyboardInterrupt):
            return True
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return False
