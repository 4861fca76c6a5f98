"""GPU timing that is true: onnxruntime IO binding (inputs on the device once, outputs left there, a sync per run).

Without IO binding, `InferenceSession.run` copies every input to the GPU and every output back
inside the timed call, so a GPU number measures PCIe as much as the model. `IoBindingSession`
wraps an OnnxSession on the CUDA or TensorRT provider: `prepare` copies the feeds to the device
once and binds them (outputs are bound to device memory), and each `run_unchecked` of those feeds
is `run_with_iobinding` followed by `synchronize_outputs`, so a timed run ends when the GPU is
done and includes no host copy. `run` (the user's path) still returns numpy outputs.
"""
from __future__ import annotations

import os
from typing import Mapping

import numpy as np

from edgeai.bench.env import gpu_process_memory_bytes
from edgeai.runtime.base import Session

# bench provider -> the device name onnxruntime's OrtValue takes (TensorRT runs on CUDA memory)
ORT_DEVICE = {"cuda": "cuda", "tensorrt": "cuda"}
NOTE = ("GPU timing with onnxruntime IO binding: inputs copied to the GPU once before timing, outputs "
        "left on the GPU; each timed run ends with a device sync (host copies are not timed)")


class IoBindingSession(Session):
    """An OnnxSession on a GPU provider, timed through IO binding (see the module docstring)."""

    format = "onnx"

    def __init__(self, session: Session, device_id: int = 0):
        import onnxruntime as ort
        self._ort, self._inner, self._device_id = ort, session, device_id
        self._sess = session.inference_session
        self.inputs, self.outputs = session.inputs, session.outputs
        self.provider, self.threads = session.provider, session.threads
        self._device = ORT_DEVICE[session.provider]
        self._binding = None
        self._bound_feeds: dict[str, np.ndarray] = {}
        self.host_copies = 0  # inputs copied to the device (once per prepared feed set)

    def prepare(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Check and cast like any session, then copy the feeds to the GPU and bind them."""
        prepared = super().prepare(feeds)
        self._bind(prepared)
        return prepared

    def _bind(self, feeds: Mapping[str, np.ndarray]) -> None:
        ort = self._ort
        binding = self._sess.io_binding()
        for spec in self.inputs:
            value = ort.OrtValue.ortvalue_from_numpy(feeds[spec.name], self._device, self._device_id)
            binding.bind_ortvalue_input(spec.name, value)
            self.host_copies += 1
        for spec in self.outputs:
            binding.bind_output(spec.name, self._device, self._device_id)  # allocated on the device
        self._binding, self._bound_feeds = binding, dict(feeds)

    def _is_bound(self, feeds: Mapping[str, np.ndarray]) -> bool:
        bound = self._bound_feeds
        return len(feeds) == len(bound) and all(bound.get(k) is v for k, v in feeds.items())

    def run_unchecked(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Feeds already bound (the timed loop): run and sync, outputs stay on the GPU, returns {}.
        Other feeds: bind them, run, and return the outputs copied to numpy."""
        if self._is_bound(feeds):
            self._sess.run_with_iobinding(self._binding)
            self._binding.synchronize_outputs()
            return {}
        self._bind(feeds)
        self._sess.run_with_iobinding(self._binding)
        self._binding.synchronize_outputs()
        arrays = self._binding.copy_outputs_to_cpu()
        return {spec.name: np.asarray(a) for spec, a in zip(self.outputs, arrays)}

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        prepared = Session.prepare(self, feeds)
        self._bound_feeds = {}  # force the copying path: the caller wants the outputs
        return self.run_unchecked(prepared)

    def describe(self) -> dict:
        return {**self._inner.describe(), "notes": [NOTE],
                "peak_gpu_memory_bytes": gpu_process_memory_bytes(os.getpid())}


def wrap_for_gpu(session: Session) -> Session:
    """IO binding for ONNX sessions on a GPU provider; every other session unchanged."""
    if session.format == "onnx" and session.provider in ORT_DEVICE:
        return IoBindingSession(session)
    return session
