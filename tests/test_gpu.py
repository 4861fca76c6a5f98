"""GPU timing path with fakes (no GPU here): IO binding copies inputs once, syncs every run, never times host copies.

A fake `onnxruntime` (CUDA and TensorRT providers, OrtValue, IOBinding) records each host-to-device
copy, run, sync and device-to-host copy (a fake `torch` does the same for TorchSession on "cuda");
a fake `nvidia-smi` answers the fingerprint queries. What
these prove is the bookkeeping of the timed path, not GPU speed: see README "GPU".
"""
from __future__ import annotations

import contextlib
import os
import sys
import textwrap
import types
from pathlib import Path

import numpy as np
import pytest

from edgeai import runtime
from edgeai.bench import BenchConfig
from edgeai.bench.env import cpu_governor, environment, gpu_info, gpu_process_memory_bytes, temperature_c
from edgeai.bench.gpu import NOTE, IoBindingSession, wrap_for_gpu
from edgeai.bench.targets import Target
from edgeai.bench.worker import measure

W = np.arange(12, dtype=np.float32).reshape(4, 3) / 10  # the fake model: y = x @ W


def fake_onnxruntime(events: list, providers=("TensorrtExecutionProvider", "CUDAExecutionProvider",
                                              "CPUExecutionProvider")) -> types.ModuleType:
    ort = types.ModuleType("onnxruntime")
    ort.__version__ = "1.31.1-fake"
    ort.get_available_providers = lambda: list(providers)
    ort.GraphOptimizationLevel = types.SimpleNamespace(ORT_ENABLE_ALL=99, ORT_ENABLE_BASIC=1, ORT_DISABLE_ALL=0)
    ort.SessionOptions = ort.RunOptions = types.SimpleNamespace
    arg = types.SimpleNamespace

    class OrtValue:
        def __init__(self, array, device):
            self.array, self.device = array, device

        @staticmethod
        def ortvalue_from_numpy(array, device, device_id):
            events.append(("h2d", device, device_id))
            return OrtValue(np.array(array), device)

    class Binding:
        def __init__(self):
            self.inputs, self.outputs, self.result = {}, [], None

        def bind_ortvalue_input(self, name, value):
            self.inputs[name] = value

        def bind_output(self, name, device, device_id):
            self.outputs.append((name, device))

        def synchronize_outputs(self):
            events.append(("sync",))

        def copy_outputs_to_cpu(self):
            events.append(("d2h",))
            return [self.result]

    class InferenceSession:
        def __init__(self, path, sess_options=None, providers=None):
            self.providers = [p for p in providers if p in ort.get_available_providers()]

        def get_providers(self):
            return self.providers

        def get_inputs(self):
            return [arg(name="x", shape=["batch", 4], type="tensor(float)")]

        def get_outputs(self):
            return [arg(name="y", shape=["batch", 3], type="tensor(float)")]

        def io_binding(self):
            return Binding()

        def run_with_iobinding(self, binding):
            assert all(v.device == "cuda" for v in binding.inputs.values()), "inputs must be on the GPU"
            assert binding.outputs == [("y", "cuda")], "outputs must be bound to GPU memory"
            events.append(("run",))
            binding.result = binding.inputs["x"].array @ W

        def run(self, names, feeds):
            raise AssertionError("a GPU session must not use run(): it copies inside the timed call")

    ort.OrtValue, ort.InferenceSession = OrtValue, InferenceSession
    return ort


@pytest.fixture
def fake_gpu(monkeypatch, tmp_path):
    """The fake onnxruntime in sys.modules, a fake nvidia-smi first on PATH, an empty model file."""
    events: list = []
    monkeypatch.setitem(sys.modules, "onnxruntime", fake_onnxruntime(events))
    smi = tmp_path / "bin" / "nvidia-smi"
    smi.parent.mkdir()
    smi.write_text(textwrap.dedent(f"""\
        #!{sys.executable}
        import sys
        if any(a.startswith("--query-gpu") for a in sys.argv):
            print("NVIDIA H200, 565.57.01, 143771, 1024")
        else:
            print("{os.getpid()}, 512")
            print("1, 9999")
        """))
    smi.chmod(0o755)
    monkeypatch.setenv("PATH", f"{smi.parent}{os.pathsep}{os.environ['PATH']}")
    model = tmp_path / "m.onnx"
    model.write_bytes(b"")
    return events, model


@pytest.mark.parametrize("provider", ["cuda", "tensorrt"])
def test_gpu_timed_runs_copy_inputs_once_sync_each_run_and_copy_nothing_back(fake_gpu, provider):
    events, model = fake_gpu
    config = BenchConfig(provider=provider, warmup=5, runs=40, isolate=False)
    target = Target(str(model), "file", str(model), "onnx")
    session = wrap_for_gpu(runtime.load(model, provider=provider))
    assert isinstance(session, IoBindingSession)
    result = measure(target, config, open_fn=lambda: session)

    assert result.status == "ok" and result.timing.n == 40
    runs = 1 + 5 + 40                                       # first inference, warmup, timed
    assert events.count(("run",)) == runs and events.count(("sync",)) == runs
    assert events.count(("d2h",)) == 0                      # outputs never leave the GPU while timing
    assert events.count(("h2d", "cuda", 0)) == session.host_copies == 2  # measure + time_session prepare, 1 input
    assert NOTE in result.notes
    assert result.peak_gpu_memory_bytes == 512 * 2**20     # this process's line of nvidia-smi


def test_run_on_gpu_returns_the_outputs_copied_to_the_host(fake_gpu):
    events, model = fake_gpu
    session = wrap_for_gpu(runtime.load(model, provider="cuda"))
    x = np.random.default_rng(0).standard_normal((2, 4)).astype(np.float32)
    out = session.run({"x": x})
    np.testing.assert_allclose(out["y"], x @ W, rtol=1e-6)
    assert events == [("h2d", "cuda", 0), ("run",), ("sync",), ("d2h",)]


def test_cpu_sessions_are_not_wrapped(fake_gpu):
    events, model = fake_gpu
    assert not isinstance(wrap_for_gpu(runtime.load(model, provider="cpu")), IoBindingSession)


def test_gpu_fingerprint_has_name_driver_and_memory(fake_gpu):
    assert gpu_info() == [{"name": "NVIDIA H200", "driver": "565.57.01", "memory_total_bytes": 143771 * 2**20,
                           "memory_used_bytes": 1024 * 2**20}]
    env = environment(1, "cuda")
    assert env["gpu"][0]["name"] == "NVIDIA H200" and environment(1, "cpu")["gpu"] is None
    assert gpu_process_memory_bytes(424242) is None        # a process nvidia-smi does not list


def test_no_nvidia_smi_means_no_gpu_fields(tmp_path):
    assert gpu_info(str(tmp_path / "nvidia-smi")) is None
    assert gpu_process_memory_bytes(1, str(tmp_path / "nvidia-smi")) is None


def test_governor_and_temperature_come_from_sysfs(tmp_path):
    cpu = tmp_path / "cpu" / "cpu0" / "cpufreq"
    cpu.mkdir(parents=True)
    (cpu / "scaling_governor").write_text("ondemand\n")
    for i, milli in enumerate(("45123", "61000", "garbage")):
        zone = tmp_path / "thermal" / f"thermal_zone{i}"
        zone.mkdir(parents=True)
        (zone / "temp").write_text(milli + "\n")
    assert cpu_governor(tmp_path / "cpu") == "ondemand"
    assert temperature_c(tmp_path / "thermal") == 61.0
    assert cpu_governor(tmp_path / "none") is None and temperature_c(tmp_path / "none") is None


def fake_torch(events: list) -> types.ModuleType:
    """Just enough torch for TorchSession on "cuda": tensors record copies, the module records runs."""
    torch = types.ModuleType("torch")
    torch.__version__ = "2.13.0-fake"

    class Tensor:
        def __init__(self, array, device="cpu"):
            self.array, self.device = array, device

        def to(self, device):
            if device in DTYPES:  # a cast on the tensor's own device, no copy between devices
                return Tensor(self.array.astype(DTYPES[device]), self.device)
            if device != self.device:
                events.append(("h2d",) if device == "cuda" else ("d2h",))
            return Tensor(self.array, device)

        def is_floating_point(self):
            return self.array.dtype.kind == "f"

        def float(self):
            return Tensor(self.array.astype(np.float32), self.device)

        def detach(self):
            return self

        def cpu(self):
            return self.to("cpu")

        def numpy(self):
            assert self.device == "cpu", "numpy() of a GPU tensor"
            return self.array

    DTYPES = {"float32": np.float32, "float16": np.float16, "bfloat16": np.float32}
    torch.float32, torch.float16, torch.bfloat16 = "float32", "float16", "bfloat16"
    torch.from_numpy = lambda a: Tensor(a)
    torch.device = lambda name: name
    torch.inference_mode = contextlib.nullcontext
    torch.set_num_threads = torch.set_num_interop_threads = lambda n: None
    torch.cuda = types.SimpleNamespace(is_available=lambda: True,
                                       synchronize=lambda device: events.append(("sync",)),
                                       max_memory_allocated=lambda device: 3 * 2**20)

    class Module:
        def eval(self):
            return self

        def to(self, device, dtype=None):
            return self

        def parameters(self):
            return iter(())

        buffers = parameters

        def __call__(self, x):
            assert x.device == "cuda"
            events.append(("run",))
            return Tensor(x.array @ W, "cuda")

    torch.Module = Module
    return torch


def test_torch_cuda_timed_runs_start_on_the_gpu_and_end_with_a_sync(monkeypatch):
    from edgeai.bench.torch_session import TorchSession
    from edgeai.specs import TensorSpec
    events: list = []
    torch = fake_torch(events)
    monkeypatch.setitem(sys.modules, "torch", torch)
    session = TorchSession(torch.Module(), [TensorSpec("x", (2, 4))], provider="cuda")
    config = BenchConfig(runtime="torch", provider="cuda", warmup=3, runs=20, isolate=False)
    result = measure(Target("m", "module", "m", "torch"), config, open_fn=lambda: session)

    assert result.status == "ok" and result.timing.n == 20
    assert events.count(("run",)) == events.count(("sync",)) == 1 + 3 + 20
    assert events.count(("d2h",)) == 0 and events.count(("h2d",)) == 2   # once per prepare, never per run
    assert result.peak_gpu_memory_bytes == 3 * 2**20 and "torch.cuda.synchronize" in result.notes[-1]

    events.clear()
    x = np.ones((2, 4), np.float32)
    np.testing.assert_allclose(session.run({"x": x})["output"], x @ W)
    assert events == [("h2d",), ("run",), ("d2h",)]
