"""onnxruntime session: CPU always, CUDA when onnxruntime-gpu is installed."""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np

from edgeai.errors import MissingDependencyError, RuntimeLoadError
from edgeai.runtime.base import RUNTIMES, Session
from edgeai.specs import TensorSpec

_ORT_DTYPES = {
    "tensor(float)": "float32", "tensor(float16)": "float16", "tensor(double)": "float64",
    "tensor(int64)": "int64", "tensor(int32)": "int32", "tensor(int8)": "int8",
    "tensor(uint8)": "uint8", "tensor(bool)": "bool",
}
PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider",
             "tensorrt": "TensorrtExecutionProvider"}


def _spec(arg) -> TensorSpec:
    shape = tuple(d if isinstance(d, int) else (d or f"dim{i}") for i, d in enumerate(arg.shape))
    return TensorSpec(arg.name, shape, _ORT_DTYPES.get(arg.type, arg.type))


@RUNTIMES.register("onnx")
class OnnxSession(Session):
    format = "onnx"

    def __init__(self, path: str | Path, provider: str = "cpu", threads: int | None = None,
                 optimization: str = "all"):
        try:
            import onnxruntime as ort
        except ImportError:
            raise MissingDependencyError("onnxruntime is not installed; run: pip install onnxruntime") from None
        if provider not in PROVIDERS:
            raise RuntimeLoadError(f"unknown provider {provider!r}; known: {', '.join(PROVIDERS)}")
        available = ort.get_available_providers()
        if PROVIDERS[provider] not in available:
            raise RuntimeLoadError(
                f"provider {provider!r} is not available in this onnxruntime (has: {', '.join(available)}); "
                "for CUDA install onnxruntime-gpu")
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
        opts.graph_optimization_level = {
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "none": ort.GraphOptimizationLevel.ORT_DISABLE_ALL}[optimization]
        opts.log_severity_level = 3
        providers = [PROVIDERS[provider]] + (["CPUExecutionProvider"] if provider != "cpu" else [])
        try:
            self._sess = ort.InferenceSession(str(path), sess_options=opts, providers=providers)
        except Exception as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise RuntimeLoadError(f"onnxruntime cannot load {str(path)!r}: {first}") from None
        if provider != "cpu" and self._sess.get_providers()[0] != PROVIDERS[provider]:
            raise RuntimeLoadError(f"onnxruntime fell back from {provider!r} to CPU for {str(path)!r}")
        self.path, self.provider, self.threads = Path(path), provider, threads
        self.inputs = [_spec(a) for a in self._sess.get_inputs()]
        self.outputs = [_spec(a) for a in self._sess.get_outputs()]
        self._output_names = [o.name for o in self.outputs]
        self._run_options = ort.RunOptions()
        self._run_options.log_severity_level = 4  # a failed run is raised, not also logged in red

    @classmethod
    def read_specs(cls, path) -> tuple[list[TensorSpec], list[TensorSpec]]:
        """Inputs and outputs, from a session without graph optimizations (where ORT crashes happen)."""
        session = cls(path, optimization="none")
        return session.inputs, session.outputs

    def run_unchecked(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        try:
            outputs = self._sess.run(self._output_names, feeds, self._run_options)
        except Exception as e:  # onnxruntime's own errors: a value the graph cannot take (an index out of range)
            text = " ".join(str(e).split())[:300] or type(e).__name__
            raise RuntimeLoadError(f"onnxruntime failed to run {self.path.name!r} on these inputs: {text}") from None
        return dict(zip(self._output_names, outputs))

    @property
    def inference_session(self):
        """The wrapped onnxruntime.InferenceSession (to measure edgeai against a bare loop)."""
        return self._sess

    def describe(self) -> dict:
        import onnxruntime as ort
        return {**super().describe(), "runtime": "onnxruntime", "runtime_version": ort.__version__}
