"""The PyTorch "runtime" for `edgeai bench --runtime torch`: an nn.Module behind the Session interface.

It lives in bench, not in edgeai.runtime, because the on-device runtime never imports torch.
torch is imported only when a TorchSession is built.
"""
from __future__ import annotations

import copy
from itertools import chain
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np

from edgeai.bench.results import BenchConfig, BenchResult
from edgeai.bench.targets import Target
from edgeai.bench.worker import measure_or_fail
from edgeai.errors import RuntimeLoadError
from edgeai.runtime.base import Session
from edgeai.specs import TensorSpec

if TYPE_CHECKING:
    import torch


class TorchSession(Session):
    """Runs `module(*inputs)` under inference_mode; numpy in, numpy out, like every Session.

    The timed call includes `torch.from_numpy` (zero-copy on CPU), the copy to the device for
    CUDA, and the copy of outputs back to numpy, as an onnxruntime session does for its own.
    `outputs` is empty: a module's outputs are not known before it runs.
    """

    format = "torch"

    def __init__(self, module: "torch.nn.Module", input_specs: Sequence[TensorSpec],
                 provider: str = "cpu", threads: int | None = None, precision: str = "fp32"):
        import torch
        if threads:
            torch.set_num_threads(threads)  # process-wide, as for any torch program
            try:
                torch.set_num_interop_threads(1)
            except RuntimeError:  # only settable before the first parallel op of the process
                pass
        if provider not in ("cpu", "cuda"):
            raise RuntimeLoadError(f"unknown provider {provider!r} for torch; known: cpu, cuda")
        if provider == "cuda" and not torch.cuda.is_available():
            raise RuntimeLoadError(f"provider cuda: this torch ({torch.__version__}) has no CUDA device; "
                                   "use --provider cpu")
        dtypes = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
        if precision not in dtypes:
            raise RuntimeLoadError(f"unknown precision {precision!r} for torch; known: {', '.join(dtypes)}")
        self._torch, self._device, self._dtype = torch, torch.device(provider), dtypes[precision]
        if precision != "fp32":  # nn.Module.to casts in place: leave the caller's module in its precision
            module = copy.deepcopy(module)
        self.module = module.eval().to(self._device, self._dtype)  # casts floating parameters/buffers only
        self.inputs, self.outputs = list(input_specs), []
        self.provider, self.threads, self.precision = provider, threads, precision
        tensors = chain(self.module.parameters(), self.module.buffers())
        self.size_bytes = sum(t.numel() * t.element_size() for t in tensors)  # in-memory weights

    def prepare(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """On CUDA, also copy the feeds to the GPU once: timed runs of them start on the device."""
        prepared = super().prepare(feeds)
        if self.provider == "cuda":
            self._on_device = (prepared, [self._tensor(prepared[s.name]) for s in self.inputs])
        return prepared

    def _tensor(self, array: np.ndarray) -> "torch.Tensor":
        """numpy -> a tensor on the device, floating inputs cast to the session's precision."""
        t = self._torch.from_numpy(array).to(self._device)
        return t.to(self._dtype) if t.is_floating_point() else t

    def run_unchecked(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """CPU: numpy in and out. CUDA with the feeds `prepare` returned (the timed loop): inputs already
        on the GPU, run, synchronize, outputs left there ({}); other feeds are copied both ways."""
        torch, device = self._torch, self._device
        bound = getattr(self, "_on_device", None)
        with torch.inference_mode():
            if bound is not None and bound[0] is feeds:
                self.module(*bound[1])
                torch.cuda.synchronize(device)
                return {}
            out = self.module(*(self._tensor(feeds[s.name]) for s in self.inputs))
        return dict(_flatten("output", out))

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self.run_unchecked(Session.prepare(self, feeds))  # outputs wanted: no device-only path

    def describe(self) -> dict:
        info = {**super().describe(), "runtime": "torch", "runtime_version": self._torch.__version__,
                "precision": self.precision}
        notes = []
        if self.precision != "fp32":
            notes.append(f"weights and floating inputs cast to {self.precision} (outputs returned as float32)")
        if self.provider == "cuda":
            info["peak_gpu_memory_bytes"] = int(self._torch.cuda.max_memory_allocated(self._device))
            notes.append("GPU timing: inputs copied to the GPU once before timing, outputs left on the "
                         "GPU; each timed run ends with torch.cuda.synchronize (host copies are not timed)")
        if notes:
            info["notes"] = notes
        return info


def _flatten(name: str, value: Any):
    """Yield (name, array) for a tensor or a nest of tuples/lists/dicts of tensors."""
    if isinstance(value, Mapping):
        for k, v in value.items():
            yield from _flatten(str(k), v)
    elif isinstance(value, (tuple, list)):
        for i, v in enumerate(value):
            yield from _flatten(f"{name}{i}", v)
    elif hasattr(value, "detach"):
        value = value.detach().cpu()
        yield name, (value.float() if value.is_floating_point() else value).numpy()  # numpy has no bf16


def specs_from_examples(example_inputs: Mapping[str, "torch.Tensor"]) -> list[TensorSpec]:
    """Fixed-shape specs (in call order) from named example tensors."""
    return [TensorSpec(name, tuple(t.shape), str(t.dtype).removeprefix("torch."))
            for name, t in example_inputs.items()]


def check_model_specs(specs: Sequence[str], config: BenchConfig) -> None:
    """Refuse, before any worker starts, a .pt2/TorchScript spec whose loading could reach files or processes."""
    from pathlib import Path

    from edgeai.source import check_model_file
    for spec in specs:
        if Path(spec).is_file():
            check_model_file(Path(spec), bool(config.load_options.get("trust_pickle")))


def load_torch_session(spec: str, config: BenchConfig) -> TorchSession:
    """Build the module of a model spec with edgeai.source.load_model and wrap it."""
    from edgeai.source import load_model
    source = load_model(spec, inputs=list(config.inputs) or None, **config.load_options)
    return TorchSession(source.module, source.input_specs, config.provider, config.threads, config.precision)


def measure_module(module: "torch.nn.Module", example_inputs: Mapping[str, "torch.Tensor"],
                   config: BenchConfig | None = None, label: str = "module") -> BenchResult:
    """Benchmark an in-memory module in this process (for callers and tests that hold one)."""
    config = config or BenchConfig(runtime="torch", isolate=False)
    target = Target(label, "module", label, "torch")
    specs = specs_from_examples(example_inputs)
    return measure_or_fail(target, config, isolated=False,
                           open_fn=lambda: TorchSession(module, specs, config.provider, config.threads,
                                                        config.precision))
