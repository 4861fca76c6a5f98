"""LiteRT (TFLite) session: ai-edge-litert's interpreter (XNNPACK on by default), numpy in and out."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Mapping

import numpy as np

from edgeai.errors import InputSpecError, MissingDependencyError, RuntimeLoadError
from edgeai.runtime.base import RUNTIMES, Session
from edgeai.runtime.tflite_inspect import inspect_tflite
from edgeai.specs import TensorSpec

log = logging.getLogger(__name__)

__all__ = ["TFLiteSession", "inspect_tflite", "import_interpreter"]


def import_interpreter():
    """(interpreter module, runtime name, version): ai-edge-litert, else tflite-runtime with a warning."""
    try:
        from ai_edge_litert import interpreter as mod
        import ai_edge_litert
        return mod, "ai-edge-litert", getattr(ai_edge_litert, "__version__", "")
    except ImportError:
        pass
    try:
        from tflite_runtime import interpreter as mod
        import tflite_runtime
    except ImportError:
        raise MissingDependencyError("running .tflite models needs LiteRT; run: pip install ai-edge-litert") from None
    log.warning("ai-edge-litert is not installed; using the older tflite-runtime (it fails under numpy 2); "
                "prefer: pip install ai-edge-litert")
    return mod, "tflite-runtime", getattr(tflite_runtime, "__version__", "")


# tensor types numpy can hold and LiteRT can be fed or read as arrays (not RESOURCE, VARIANT, INT4, STRING, ...)
IO_DTYPES = ("float32", "float16", "float64", "int8", "uint8", "int16", "uint16", "int32", "uint32", "int64",
             "uint64", "bool", "complex64", "complex128")


def check_io_types(info: dict, path: str | Path) -> None:
    """RuntimeLoadError naming the tensor when an input or output of the model has a type edgeai cannot feed or read."""
    for kind in ("inputs", "outputs"):
        for d in info[kind]:
            if d["dtype"] not in IO_DTYPES:
                raise RuntimeLoadError(f"{str(path)!r}: {kind[:-1]} {d['name']!r} has type {d['dtype'].upper()}, "
                                       "which cannot be fed or read as an array; edgeai runs .tflite models whose "
                                       f"inputs and outputs are {', '.join(IO_DTYPES[:-2])}")


def _spec(name: str, detail: dict) -> TensorSpec:
    sig = detail.get("shape_signature")
    if sig is None or len(sig) != len(detail["shape"]):
        sig = detail["shape"]
    shape = tuple(int(d) if d >= 0 else f"dim{i}" for i, d in enumerate(sig))
    return TensorSpec(name, shape, np.dtype(detail["dtype"]).name)


@RUNTIMES.register("tflite")
class TFLiteSession(Session):
    """A .tflite model in the LiteRT interpreter; inputs and outputs carry the signature's names.

    Dimensions the model marks dynamic (-1) are resized to each feed; fixed dimensions must match.
    Variable tensors (the state of a fused LSTM) are reset before every run unless
    reset_variables=False (streaming: each run continues from the previous state).
    """

    format = "tflite"
    crash_prone = True

    @classmethod
    def read_specs(cls, path) -> tuple[list[TensorSpec], list[TensorSpec]]:
        """Inputs and outputs from the flatbuffer alone: no interpreter, so no crash."""
        info = inspect_tflite(path)
        check_io_types(info, path)
        return ([_spec(d["name"], d) for d in info["inputs"]], [_spec(d["name"], d) for d in info["outputs"]])

    def __init__(self, path: str | Path, provider: str = "cpu", threads: int | None = None,
                 xnnpack: bool = True, reset_variables: bool = True):
        if provider != "cpu":
            raise RuntimeLoadError(f"the TFLite runtime runs on 'cpu' only here, not {provider!r}; "
                                   "GPU/NPU delegates are not wired into edgeai yet")
        if threads is not None and threads < 1:
            raise RuntimeLoadError(f"threads must be >= 1, got {threads}")
        mod, self._runtime, self._version = import_interpreter()
        path = Path(path)
        if not path.is_file():
            raise RuntimeLoadError(f"model {str(path)!r} does not exist")
        resolver = (mod.OpResolverType.AUTO if xnnpack
                    else mod.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
        try:
            self._it = mod.Interpreter(model_path=str(path), num_threads=threads,
                                       experimental_op_resolver_type=resolver)
            self._it.allocate_tensors()
        except (ValueError, RuntimeError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise RuntimeLoadError(f"LiteRT cannot load {str(path)!r}: {first}") from None
        info = inspect_tflite(path)  # names and types from the flatbuffer: the same rule as read_specs
        check_io_types(info, path)
        # LiteRT runs on 1 thread unless told otherwise; report what it really uses
        self.path, self.provider, self.threads, self.xnnpack = path, provider, threads or 1, xnnpack
        # a fused LSTM keeps h/c in variable tensors that survive invoke(); zero them per run
        self._reset = reset_variables and info["variable_tensors"] > 0
        in_named, out_named = self._named_io(info)
        self.inputs = [_spec(n, d) for n, d in in_named]
        self.outputs = [_spec(n, d) for n, d in out_named]
        self._in_index = {n: d["index"] for n, d in in_named}
        self._out_index = [(n, d["index"]) for n, d in out_named]
        self._shapes = {n: tuple(int(s) for s in d["shape"]) for n, d in in_named}
        self._static = {n: all(int(s) >= 0 for s in d.get("shape_signature", d["shape"])) for n, d in in_named}

    def _named_io(self, info: dict) -> tuple[list[tuple[str, dict]], list[tuple[str, dict]]]:
        """(name, tensor details) for inputs and outputs in the graph's (call) order, named as
        inspect_tflite names them (tflite_inspect.io_names: the signature's names, else plain tensor names)."""
        names = {d["index"]: d["name"] for d in (*info["inputs"], *info["outputs"])}
        ins, outs = self._it.get_input_details(), self._it.get_output_details()
        return [(names[d["index"]], d) for d in ins], [(names[d["index"]], d) for d in outs]

    def _resize(self, feeds: Mapping[str, np.ndarray]) -> None:
        changed = False
        for name, arr in feeds.items():
            shape = tuple(arr.shape)
            if shape == self._shapes[name]:
                continue
            if self._static[name]:
                raise InputSpecError(f"input {name!r} has shape {shape}, but this .tflite model is fixed "
                                     f"to {self._shapes[name]}; re-export at that shape")
            try:
                self._it.resize_tensor_input(self._in_index[name], list(shape), strict=True)
            except (ValueError, RuntimeError) as e:
                raise InputSpecError(f"LiteRT cannot resize input {name!r} to {shape}: {e}") from None
            self._shapes[name] = shape
            changed = True
        if changed:
            self._it.allocate_tensors()

    def run_unchecked(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        self._resize(feeds)
        if self._reset:
            self._it.reset_all_variables()
        for name, arr in feeds.items():
            self._it.set_tensor(self._in_index[name], arr)
        self._it.invoke()
        return {name: self._it.get_tensor(idx) for name, idx in self._out_index}

    def inspect(self) -> dict:
        """Graph facts (ops, transposes, layouts) read from the flatbuffer."""
        return inspect_tflite(self.path)

    def describe(self) -> dict:
        return {**super().describe(), "runtime": self._runtime, "runtime_version": self._version,
                "xnnpack": self.xnnpack}
