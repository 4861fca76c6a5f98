"""edgeai.bench: statistics, stopping rules, isolation of crashing targets, folders, JSON schema, CLI, torch path."""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from edgeai.bench import SCHEMA, BenchConfig, TimingStats, bench, expand_targets, time_session
from edgeai.bench import cli, runner
from edgeai.bench.stats import StopRule
from edgeai.bench.worker import feed_sizes
from edgeai.errors import InputSpecError, RuntimeLoadError
from edgeai.fsutil import sha256_file
from edgeai.manifest import ArtifactEntry, Manifest
from edgeai.runtime.base import Session
from edgeai.specs import TensorSpec

REPO = Path(__file__).resolve().parent.parent
FAST = dict(warmup=2, runs=20)


def make_mlp(path: Path, hidden: int, seed: int = 0) -> Path:
    """x[batch, 16] -> MatMul -> Relu -> MatMul -> y[batch, 4], built with onnx.helper (no torch)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    rng = np.random.default_rng(seed)
    w1 = numpy_helper.from_array(rng.standard_normal((16, hidden)).astype(np.float32), "w1")
    w2 = numpy_helper.from_array(rng.standard_normal((hidden, 4)).astype(np.float32), "w2")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
         helper.make_node("MatMul", ["r", "w2"], ["y"])], "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])], [w1, w2])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("models")
    return make_mlp(d / "small.onnx", 32), make_mlp(d / "big.onnx", 512, seed=1)


def write_export_folder(folder: Path, models: tuple[Path, Path]) -> Path:
    folder.mkdir()
    entries = []
    for name, src in zip(("fp32", "wide"), models):
        shutil.copy(src, folder / f"{name}.onnx")
        spec = [{"name": "x", "shape": ["batch", 16], "dtype": "float32"}]
        entries.append(ArtifactEntry(name=name, file=f"{name}.onnx", format="onnx", precision="fp32",
                                     sha256=sha256_file(folder / f"{name}.onnx"),
                                     size_bytes=(folder / f"{name}.onnx").stat().st_size,
                                     inputs=spec, outputs=[{"name": "y", "shape": ["batch", 4]}]))
    Manifest(source={"spec": "test"}, artifacts=entries, versions={}, created="now").write(folder)
    return folder


class CountingSession(Session):
    """A fake runtime whose run takes `sleep_s` and counts its calls."""

    format = "fake"

    def __init__(self, sleep_s: float = 0.0):
        self.inputs = [TensorSpec("x", (2, 3), "float32")]
        self.outputs = []
        self.calls, self.sleep_s = 0, sleep_s

    def run_unchecked(self, feeds):
        self.calls += 1
        if self.sleep_s:
            time.sleep(self.sleep_s)
        return {}


# ---- statistics and the timed loop -------------------------------------------------------------

def test_stats_percentiles_and_std_on_known_samples():
    s = TimingStats.from_samples(np.arange(1, 101, dtype=float))  # 1..100 ms
    assert (s.n, s.min_ms, s.max_ms, s.mean_ms) == (100, 1.0, 100.0, 50.5)
    assert s.p50_ms == pytest.approx(50.5) and s.p90_ms == pytest.approx(90.1)
    assert s.p99_ms == pytest.approx(99.01)
    assert s.std_ms == pytest.approx(29.011491975882016)  # sample std (ddof=1)
    assert s.total_s == pytest.approx(5.05)
    one = TimingStats.from_samples([3.0])
    assert (one.p50_ms, one.p99_ms, one.std_ms) == (3.0, 3.0, 0.0)
    skewed = TimingStats.from_samples([1.0] * 9 + [11.0])
    assert skewed.p50_ms == 1.0 and skewed.mean_ms == pytest.approx(2.0)
    assert skewed.p90_ms == pytest.approx(2.0) and skewed.p99_ms == pytest.approx(10.1)


def test_time_session_runs_exactly_warmup_plus_runs():
    sess = CountingSession()
    stats = time_session(sess, {"x": np.zeros((2, 3))}, warmup=4, runs=25)
    assert stats.n == 25 and sess.calls == 29


def test_time_session_measures_a_known_latency():
    stats = time_session(CountingSession(sleep_s=0.002), {"x": np.zeros((2, 3), np.float32)},
                         warmup=1, runs=10)
    assert 2.0 <= stats.min_ms <= stats.p50_ms <= stats.p90_ms <= stats.max_ms
    assert stats.p50_ms < 20.0


def test_min_seconds_runs_until_time_has_passed():
    stats = time_session(CountingSession(sleep_s=0.005), {"x": np.zeros((2, 3))}, warmup=0,
                         min_seconds=0.1)
    assert stats.total_s >= 0.095 and 10 <= stats.n <= 21


def test_default_stop_rule_is_50_runs_and_1_s_capped_at_10_s():
    rule = StopRule.from_options()
    assert (rule.min_runs, rule.min_seconds, rule.max_seconds) == (50, 1.0, 10.0)
    assert StopRule.from_options(runs=7).describe() == "exactly 7 runs"
    with pytest.raises(InputSpecError):
        StopRule.from_options(runs=0)


def test_time_session_rejects_feeds_of_the_wrong_shape():
    with pytest.raises(InputSpecError, match="shape"):
        time_session(CountingSession(), {"x": np.zeros((5, 3))}, runs=1)


def test_dynamic_dims_take_batch_and_named_sizes():
    specs = [TensorSpec("ids", ("batch", "seq"), "int64"), TensorSpec("mask", ("batch", "seq"), "int64")]
    sizes, notes = feed_sizes(specs, batch=4, dims={"seq": 128})
    assert sizes == {"batch": 4, "seq": 128} and notes == []
    sizes, notes = feed_sizes([TensorSpec("x", ("n", 3))], batch=2, dims={"sequ": 8})
    assert sizes == {"n": 2} and "sequ" in notes[0]
    sizes, notes = feed_sizes([TensorSpec("x", (1, 3))], batch=8, dims={})
    assert sizes == {} and "fixed" in notes[0]


# ---- bench: isolation, ratios, folders, schema ---------------------------------------------------

def test_two_targets_give_speedup_1_for_the_first_and_record_shapes(models):
    report = bench(list(models), batch=3, **FAST)
    small, big = report.results
    assert [r.status for r in report.results] == ["ok", "ok"]
    assert small.speedup_vs_baseline == 1.0 and report.baseline == str(models[0])
    assert big.speedup_vs_baseline == pytest.approx(small.timing.p50_ms / big.timing.p50_ms)
    assert small.timing.n == 20 and small.warmup == 2 and small.isolated
    assert small.inputs == ({"name": "x", "shape": [3, 16], "dtype": "float32"},)
    assert small.size_bytes == models[0].stat().st_size
    assert big.size_bytes > 10 * small.size_bytes  # 512 vs 32 hidden units
    assert small.runtime == "onnxruntime" and small.load_ms > 0 and small.first_ms > 0
    assert small.peak_rss_bytes >= small.rss_before_load_bytes > 10_000_000


def test_json_schema_fields_are_present_and_typed(models, tmp_path):
    report = bench([models[0]], **FAST)
    path = report.write_json(tmp_path / "bench.json")
    d = json.loads(path.read_text())
    assert d["schema"] == SCHEMA == "edgeai.bench/1"
    assert set(d) == {"schema", "created", "env", "config", "baseline", "results"}
    env = d["env"]
    assert isinstance(env["cpu"]["model"], str) and isinstance(env["cpu"]["flags"], list)
    assert isinstance(env["logical_cores"], int) and isinstance(env["physical_cores"], int)
    assert env["python"].count(".") == 2 and env["threads"] == 1 and env["provider"] == "cpu"
    assert env["versions"]["numpy"] == np.__version__ and "edgeai" in env["versions"]
    assert d["config"]["runs"] == 20 and d["config"]["stop_rule"] == "exactly 20 runs"
    r = d["results"][0]
    types = {"target": str, "kind": str, "path": str, "format": str, "status": str, "isolated": bool,
             "runtime": str, "runtime_version": str, "size_bytes": int, "import_ms": float,
             "load_ms": float, "first_ms": float, "warmup": int, "timing": dict, "inputs": list,
             "rss_before_load_bytes": int, "peak_rss_bytes": int, "speedup_vs_baseline": float,
             "notes": list}
    for key, typ in types.items():
        assert isinstance(r[key], typ), (key, r[key])
    for key in ("artifact", "error", "exit_code", "signal", "stderr_tail"):
        assert r[key] is None
    timing = r["timing"]
    assert set(timing) == {"n", "mean_ms", "std_ms", "min_ms", "max_ms", "p50_ms", "p90_ms", "p99_ms", "total_s"}
    assert timing["n"] == 20 and timing["min_ms"] <= timing["p50_ms"] <= timing["p90_ms"] <= timing["p99_ms"]


def test_a_target_that_aborts_is_reported_and_the_others_are_measured(models, tmp_path, monkeypatch):
    crash = shutil.copy(models[0], tmp_path / "crash.onnx")
    fake_worker = tmp_path / "fake_worker.py"
    fake_worker.write_text(textwrap.dedent("""\
        import io, json, os, sys
        text = sys.stdin.read()
        if json.loads(text)["target"]["path"].endswith("crash.onnx"):
            print("runtime: fatal error in kernel", file=sys.stderr, flush=True)
            os.abort()
        sys.stdin = io.StringIO(text)
        from edgeai.bench.worker import main
        sys.exit(main())
        """))
    monkeypatch.setattr(runner, "WORKER_CMD", (sys.executable, str(fake_worker)))
    report = bench([crash, models[1]], **FAST)
    dead, alive = report.results
    assert dead.status == "failed" and dead.signal == "SIGABRT" and dead.exit_code == -6
    assert "killed by SIGABRT" in dead.error and "fatal error in kernel" in dead.stderr_tail
    assert dead.timing is None and dead.speedup_vs_baseline is None
    assert alive.ok and alive.timing.n == 20
    assert report.baseline == str(models[1]) and alive.speedup_vs_baseline == 1.0
    assert [r.target for r in report.failed] == [str(crash)]


def test_a_model_the_runtime_rejects_fails_alone(models, tmp_path):
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a model")
    report = bench([broken, models[0]], **FAST)
    assert report.results[0].status == "failed" and "cannot load" in report.results[0].error
    assert report.results[0].exit_code is None and report.results[1].ok


def test_folder_expands_to_manifest_artifacts_in_order(models, tmp_path):
    folder = write_export_folder(tmp_path / "out", models)
    targets = expand_targets([folder])
    assert [t.label for t in targets] == [f"{folder}@fp32", f"{folder}@wide"]
    assert [t.size_bytes for t in targets] == [m.stat().st_size for m in models]
    assert [t.artifact for t in expand_targets([f"{folder}@wide"])] == ["wide"]
    with pytest.raises(RuntimeLoadError, match="known: fp32, wide"):
        expand_targets([f"{folder}@int8"])
    report = bench([folder], isolate=False, **FAST)
    assert [r.artifact for r in report.results] == ["fp32", "wide"]
    assert all(r.ok and not r.isolated and r.kind == "artifact" for r in report.results)
    assert "in-process" in report.results[0].notes[0]


def test_bad_targets_are_user_errors(models, tmp_path):
    with pytest.raises(RuntimeLoadError, match="does not exist"):
        expand_targets([tmp_path / "missing.onnx"])
    with pytest.raises(RuntimeLoadError, match="--runtime torch"):
        expand_targets([shutil.copy(models[0], tmp_path / "model.pt")])
    with pytest.raises(RuntimeLoadError, match="exported artifact"):
        expand_targets([models[0]], runtime="torch")
    with pytest.raises(RuntimeLoadError, match="runs tflite"):
        expand_targets([models[0]], runtime="tflite")
    with pytest.raises(InputSpecError, match="threads"):
        BenchConfig(threads=0)


# ---- imports ----------------------------------------------------------------------------------

def _python(code: str) -> str:
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                          check=True).stdout.strip()


def test_import_edgeai_bench_imports_no_runtime():
    out = _python("import sys, edgeai.bench, edgeai.bench.cli; "
                  "print(sorted(m for m in ('torch', 'onnxruntime', 'onnx', 'rich') if m in sys.modules))")
    assert out == "[]"


def test_worker_onnxruntime_path_never_imports_torch(models, tmp_path):
    job = {"target": expand_targets([models[0]])[0].to_dict(), "config": BenchConfig(runs=3, warmup=0).to_dict()}
    out = tmp_path / "result.json"
    code = ("import sys; from edgeai.bench.worker import main; rc = main([sys.argv[1]]); "
            "print(rc, 'onnxruntime' in sys.modules, 'torch' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code, str(out)], input=json.dumps(job), cwd=REPO,
                          capture_output=True, text=True, check=True)
    assert proc.stdout.split() == ["0", "True", "False"]
    assert json.loads(out.read_text())["timing"]["n"] == 3


# ---- torch ------------------------------------------------------------------------------------

def test_torch_runtime_measures_a_tiny_module():
    torch = pytest.importorskip("torch")
    from edgeai.bench.torch_session import TorchSession, measure_module
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Linear(8, 3), torch.nn.ReLU())
    x = torch.randn(4, 8)
    result = measure_module(module, {"x": x}, BenchConfig(runtime="torch", isolate=False, **FAST))
    assert result.ok, result.error
    assert result.runtime == "torch" and result.runtime_version == torch.__version__
    assert result.timing.n == 20 and result.inputs == ({"name": "x", "shape": [4, 8], "dtype": "float32"},)
    assert result.size_bytes == (8 * 3 + 3) * 4
    out = TorchSession(module, [TensorSpec("x", (4, 8))]).run({"x": x.numpy()})
    np.testing.assert_allclose(out["output"], module(x).detach().numpy(), rtol=1e-6)


# ---- CLI --------------------------------------------------------------------------------------

def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="edgeai")
    cli.add_parser(parser.add_subparsers())
    return parser.parse_args(["bench", *argv])


def test_cli_writes_json_and_returns_0(models, tmp_path, capsys):
    out = tmp_path / "sub" / "bench.json"
    args = _parse(str(models[0]), str(models[1]), "--runs", "5", "--warmup", "1", "--batch", "2",
                  "--json", str(out))
    assert args.func(args) == 0
    d = json.loads(out.read_text())
    assert [r["timing"]["n"] for r in d["results"]] == [5, 5]
    assert d["results"][0]["inputs"][0]["shape"] == [2, 16] and d["config"]["batch"] == 2
    printed = capsys.readouterr().out
    assert "speedup" in printed and "vs #1" in printed and "p99" in printed


def test_cli_user_errors(models):
    with pytest.raises(InputSpecError, match="NAME=SIZE"):
        cli.run(_parse(str(models[0]), "--dim", "seq"))
    with pytest.raises(InputSpecError, match="--runtime torch"):
        cli.run(_parse(str(models[0]), "--input", "x:batch,16"))
    with pytest.raises(SystemExit):
        _parse(str(models[0]), "--runs", "5", "--min-seconds", "1")
    with pytest.raises(SystemExit):
        _parse(str(models[0]), "--threads", "0")
