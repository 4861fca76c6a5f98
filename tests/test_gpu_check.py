"""benchmarks/gpu_check.py rehearsed on the CPU: the one-shot GPU script runs end to end and writes its report.

The GPU part runs only where a GPU is lent (see benchmarks/results/gpu.md); this proves the flow,
the output check, the bookkeeping probe and the report before GPU minutes are spent on it.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_gpu_check_rehearsal_on_cpu_writes_every_section(tmp_path):
    out = tmp_path / "gpu"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--provider", "cpu", "--quick",
                           "--min-seconds", "0.2", "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert proc.returncode in (0, 1), proc.stderr[-2000:]
    report = json.loads((out / "gpu.json").read_text())
    assert report["provider"] == "cpu" and report["skipped"] == []
    assert {(r["model"], r["status"]) for r in report["bench"]} == {("digits-cnn", "ok"), ("causal-lm", "ok")}
    assert all(r["p50_ms"] > 0 for r in report["bench"])
    # the same module on the same device: outputs equal to CPU FP32
    assert [r["min_cosine"] for r in report["outputs"]] == [1.0, 1.0]
    book = report["bookkeeping"][0]
    assert book["timed_calls"] == 20 and book["memcpy_htod"] == 0 and book["bare_p50_ms"] > 0
    assert {(r["cache"], r["status"]) for r in report["decoder"]} == {("dynamic", "ok"), ("static", "ok")}
    assert all(r["decode_tokens_per_s"] > 0 for r in report["decoder"])
    md = (out / "gpu.md").read_text()
    assert "## Decoder" in md and "| digits-cnn | cpu | 1 | fp32 |" in md


def test_gpu_check_refuses_cuda_without_a_gpu(tmp_path):
    import torch
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: the refusal is for machines without one")
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "no CUDA device" in proc.stderr


def test_torch_bench_precision_casts_weights_and_inputs_and_returns_float32():
    import numpy as np
    import torch

    from edgeai.bench.torch_session import TorchSession
    from edgeai.specs import TensorSpec
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.GELU(), torch.nn.Linear(32, 4))
    x = np.random.default_rng(0).standard_normal((8, 16)).astype(np.float32)
    specs = [TensorSpec("x", (8, 16), "float32")]
    ref = TorchSession(module, specs).run({"x": x})["output"]
    for precision in ("bf16", "fp16"):
        got = TorchSession(module, specs, precision=precision).run({"x": x})["output"]
        assert got.dtype == np.float32
        cos = float((ref * got).sum() / np.linalg.norm(ref) / np.linalg.norm(got))
        assert 0.999 < cos < 1.0 + 1e-6 and not np.array_equal(ref, got)  # really computed in 16 bits


def test_precision_is_refused_outside_the_torch_runtime():
    from edgeai.bench import BenchConfig
    from edgeai.errors import InputSpecError
    with pytest.raises(InputSpecError, match="--runtime torch only"):
        BenchConfig(runtime="onnxruntime", precision="fp16")
    with pytest.raises(InputSpecError, match="unknown precision"):
        BenchConfig(runtime="torch", precision="int3")
