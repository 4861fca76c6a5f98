"""TFLite path: litert-torch export, LiteRT session, ai-edge-quantizer steps, fused LSTM, crash isolation."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("litert_torch", reason="TFLite export needs litert-torch (pip install \"edgeai[tflite]\")")
pytest.importorskip("ai_edge_litert", reason="the TFLite runtime needs ai-edge-litert (pip install ai-edge-litert)")
nn = torch.nn

from edgeai.errors import DataError, InputSpecError, MissingDependencyError, RuntimeLoadError  # noqa: E402
from edgeai.exporters import get_exporter  # noqa: E402
from edgeai.runtime import load  # noqa: E402
from edgeai.runtime import subproc  # noqa: E402
from edgeai.runtime.tflite_inspect import inspect_tflite  # noqa: E402
from edgeai.specs import TensorSpec  # noqa: E402
from edgeai.steps import StepContext, get_artifact_step  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


class TinyCNN(nn.Module):
    """~100k parameters, so weights dominate the file and size ratios mean something."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
            nn.Conv2d(16, 64, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(64, 128, 3, stride=2, padding=1), nn.ReLU())
        self.fc = nn.Linear(128, 10)

    def forward(self, x):
        return self.fc(self.features(x).mean((2, 3)))


class TinyLSTM(nn.Module):
    def __init__(self, layers: int = 1, use_cell: bool = False):
        super().__init__()
        self.lstm = nn.LSTM(8, 32, num_layers=layers, batch_first=True)
        self.fc = nn.Linear(32, 4)
        self.use_cell = use_cell

    def forward(self, x):
        y, (h, c) = self.lstm(x)
        return self.fc(y[:, -1] + c[-1]) if self.use_cell else self.fc(y[:, -1])


class TinyTransformer(nn.Module):
    def __init__(self):
        super().__init__()
        layer = nn.TransformerEncoderLayer(32, 2, 64, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 1, enable_nested_tensor=False)
        self.head = nn.Linear(32, 3)

    def forward(self, x):
        return self.head(self.encoder(x).mean(1))


class TinyTextModel(nn.Module):
    """Two inputs (int64 ids first) and a dict of two outputs."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(100, 16)
        self.fc = nn.Linear(16, 2)

    def forward(self, ids, mask):
        pooled = (self.embed(ids) * mask.unsqueeze(-1)).mean(1)
        return {"logits": self.fc(pooled), "pooled": pooled}


def _export(module, x, path, name="x", **options):
    torch.manual_seed(0)
    exporter = get_exporter("tflite")
    spec = TensorSpec(name, tuple(x.shape))
    result = exporter.fn(module.eval(), {name: x}, [spec], path, exporter.config_cls(**options))
    return path, result


def _max_err(session, module, x, name="x", nhwc=False):
    feed = x.permute(0, 2, 3, 1).numpy() if nhwc else x.numpy()
    got = session.run({name: feed})["output"]
    with torch.no_grad():
        want = module(x).numpy()
    return float(np.abs(got - want).max())


def _cosine(a, b):
    a, b = np.ravel(a), np.ravel(b)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


@pytest.fixture(scope="module")
def out(tmp_path_factory):
    return tmp_path_factory.mktemp("tflite")


@pytest.fixture(scope="module")
def cnn(out):
    torch.manual_seed(0)
    model = TinyCNN().eval()
    return model, *_export(model, torch.randn(1, 3, 32, 32), out / "cnn.tflite")


@pytest.fixture(scope="module")
def cnn_nhwc(out, cnn):
    model = cnn[0]
    return model, *_export(model, torch.randn(1, 3, 32, 32), out / "cnn_nhwc.tflite", channels_last_io=True)


@pytest.fixture(scope="module")
def lstm(out):
    torch.manual_seed(0)
    model = TinyLSTM().eval()
    return model, *_export(model, torch.randn(1, 12, 8), out / "lstm.tflite")


@pytest.fixture(scope="module")
def lstm_fused(out, lstm):
    model = TinyLSTM(layers=2).eval()
    return model, *_export(model, torch.randn(1, 12, 8), out / "lstm_fused.tflite", fuse_lstm=True)


def test_cnn_export_matches_torch_and_reports_graph_facts(cnn):
    model, path, result = cnn
    session = load(path)
    assert [s.name for s in session.inputs] == ["x"] and [s.name for s in session.outputs] == ["output"]
    assert _max_err(session, model, torch.randn(1, 3, 32, 32)) < 1e-4
    d = result.details
    assert result.exporter.startswith("litert-torch ") and result.files == ["cnn.tflite"]
    assert d["input_layout"] == "NCHW" and d["unrolled_rnn"] is False and d["static_shapes"] is True
    assert d["op_count"] == sum(d["op_histogram"].values()) and d["op_histogram"]["CONV_2D"] == 3
    assert d["transpose_count"] == d["op_histogram"].get("TRANSPOSE", 0) >= 1   # NCHW in, NHWC kernels
    assert d["inputs"] == [{"name": "x", "shape": [1, 3, 32, 32], "dtype": "float32"}]


def test_channels_last_io_takes_nhwc_and_has_fewer_transposes(cnn, cnn_nhwc):
    model, path, result = cnn_nhwc
    session = load(path)
    assert session.inputs[0].shape == (1, 32, 32, 3)
    assert _max_err(session, model, torch.randn(1, 3, 32, 32), nhwc=True) < 1e-4
    assert result.details["input_layout"] == "NHWC" and result.details["channels_last_inputs"] == ["x"]
    assert result.details["inputs"][0]["shape"] == [1, 32, 32, 3]
    # the input permute folds into the converter's own NCHW -> NHWC transpose
    assert result.details["transpose_count"] < cnn[2].details["transpose_count"]


def test_lstm_export_matches_torch_and_is_flagged_unrolled(lstm):
    model, path, result = lstm
    assert _max_err(load(path), model, torch.randn(1, 12, 8)) < 1e-4
    assert result.details["unrolled_rnn"] is True and result.details["op_count"] > 100
    assert not result.details["fused_rnn_ops"]
    assert any("unrolled" in n and str(result.details["op_count"]) in n for n in result.notes)


def test_transformer_export_matches_torch(out):
    torch.manual_seed(0)
    model = TinyTransformer().eval()
    path, result = _export(model, torch.randn(1, 10, 32), out / "transformer.tflite")
    assert _max_err(load(path), model, torch.randn(1, 10, 32)) < 1e-4
    assert result.details["input_layout"] is None and result.details["op_count"] > 10


def test_two_input_model_keeps_call_order_names_and_narrows_int64_ids(out):
    torch.manual_seed(0)
    model = TinyTextModel().eval()
    ids, mask = torch.randint(0, 100, (1, 8)), torch.ones(1, 8)
    exporter = get_exporter("tflite")
    specs = [TensorSpec("input_ids", (1, 8), "int64"), TensorSpec("attention_mask", (1, 8))]
    path = out / "text.tflite"
    result = exporter.fn(model, {"input_ids": ids, "attention_mask": mask}, specs, path, exporter.config_cls())
    session = load(path)
    assert [(s.name, s.dtype) for s in session.inputs] == [("input_ids", "int32"), ("attention_mask", "float32")]
    assert [s.name for s in session.outputs] == ["logits", "pooled"]
    assert [d["dtype"] for d in result.details["inputs"]] == ["int32", "float32"]
    assert any("int64 in torch" in n for n in result.notes)
    got = session.run({"input_ids": ids.numpy(), "attention_mask": mask.numpy()})  # int64 feed is cast
    with torch.no_grad():
        want = model(ids, mask)
    assert max(float(np.abs(got[k] - want[k].numpy()).max()) for k in want) < 1e-4


def test_fused_lstm_is_one_op_per_layer_and_matches_torch_on_every_run(lstm, lstm_fused):
    model, path, result = lstm_fused
    d = result.details
    assert d["fused_rnn_ops"] == {"UNIDIRECTIONAL_SEQUENCE_LSTM": 2} and d["unrolled_rnn"] is False
    assert d["op_count"] < 20 < lstm[2].details["op_count"]
    assert d["stateful"] is True and d["fused_lstm"][0]["fused"] is True
    session = load(path)
    errs = [_max_err(session, model, torch.randn(1, 12, 8)) for _ in range(3)]
    assert max(errs) < 1e-4, errs   # the session zeroes the LSTM state before each run
    streaming = load(path, reset_variables=False)
    x = torch.randn(1, 12, 8)
    first, second = _max_err(streaming, model, x), _max_err(streaming, model, x)
    assert first < 1e-4 < second     # without the reset the state leaks into the next run


def test_fused_lstm_stays_unrolled_when_the_model_reads_the_cell_state(out):
    torch.manual_seed(0)
    model = TinyLSTM(use_cell=True).eval()
    path, result = _export(model, torch.randn(1, 12, 8), out / "lstm_cell.tflite", fuse_lstm=True)
    assert result.details["unrolled_rnn"] is True and result.details["fused_lstm"][0]["fused"] is False
    assert "c_n" in result.details["fused_lstm"][0]["reason"]
    assert _max_err(load(path), model, torch.randn(1, 12, 8)) < 1e-4


def test_dynamic_batch_resizes_and_fixed_shape_rejects_other_batch(out, cnn):
    model, path, _ = cnn
    exporter = get_exporter("tflite")
    spec = TensorSpec("x", ("batch", 3, 32, 32))
    dyn = out / "cnn_dyn_batch.tflite"
    exporter.fn(model, {"x": torch.randn(2, 3, 32, 32)}, [spec], dyn, exporter.config_cls(dynamic_dims=True))
    session = load(dyn)
    assert session.inputs[0].shape[0] == "dim0"
    assert _max_err(session, model, torch.randn(3, 3, 32, 32)) < 1e-4
    with pytest.raises(InputSpecError):
        load(path).run({"x": np.zeros((3, 3, 32, 32), np.float32)})


def _quantize(step, src, ctx=None):
    dst = src.with_name(f"{src.stem}.{step.split(':')[1]}.tflite")
    entry = get_artifact_step(step)
    return dst, entry.fn(src, dst, entry.config_cls(), ctx or StepContext())


def test_fp16_halves_the_file_and_keeps_parity(cnn):
    model, path, _ = cnn
    dst, report = _quantize("tflite:fp16", path)
    assert 0.4 < dst.stat().st_size / path.stat().st_size < 0.6
    assert report.details["weight_bytes_by_dtype"]["float16"] > 10 * report.details["weight_bytes_by_dtype"]["float32"]
    assert _max_err(load(dst), model, torch.randn(1, 3, 32, 32)) < 1e-2
    assert path.stat().st_size == report.details["size_bytes_before"]  # the source is untouched


def test_int8_dynamic_makes_weights_4x_smaller_and_runs(cnn):
    model, path, _ = cnn
    dst, report = _quantize("tflite:int8-dynamic", path)
    float_bytes = inspect_tflite(path)["constant_bytes_by_dtype"]["float32"]
    int8_bytes = report.details["weight_bytes_by_dtype"]["int8"]
    assert 0.24 < int8_bytes / float_bytes < 0.27
    assert dst.stat().st_size / path.stat().st_size < 0.35
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert _cosine(load(dst).run({"x": x.numpy()})["output"], model(x).numpy()) > 0.99


def test_int8_full_with_calibration_keeps_cnn_cosine_above_098(cnn):
    model, path, _ = cnn
    rng = np.random.default_rng(0)
    ctx = StepContext(calibration={"x": rng.standard_normal((32, 3, 32, 32)).astype(np.float32)})
    dst, report = _quantize("tflite:int8-full", path, ctx)
    assert report.details["io_dtypes"] == {"x": "float32", "output": "float32"}
    session = load(dst)
    x = torch.from_numpy(rng.standard_normal((8, 1, 3, 32, 32)).astype(np.float32))
    got = np.stack([session.run({"x": xi.numpy()})["output"] for xi in x])
    with torch.no_grad():
        want = np.stack([model(xi).numpy() for xi in x])
    assert _cosine(got, want) > 0.98


def test_int8_full_moves_nchw_calibration_to_the_channels_last_model(cnn_nhwc):
    model, path, _ = cnn_nhwc
    rng = np.random.default_rng(0)
    ctx = StepContext(calibration={"x": rng.standard_normal((16, 3, 32, 32)).astype(np.float32)},
                      extra={"channels_last_inputs": ["x"]})
    dst, report = _quantize("tflite:int8-full", path, ctx)
    assert any("NCHW -> NHWC" in n for n in report.notes)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert _cosine(load(dst).run({"x": x.permute(0, 2, 3, 1).numpy()})["output"], model(x).numpy()) > 0.98


def test_int8_full_without_calibration_is_a_data_error(cnn):
    with pytest.raises(DataError, match="calibration"):
        _quantize("tflite:int8-full", cnn[1])


def test_fused_lstm_quantization_says_the_lstm_stays_float(lstm_fused):
    _, report = _quantize("tflite:int8-dynamic", lstm_fused[1])
    assert any("UNIDIRECTIONAL_SEQUENCE_LSTM" in n for n in report.notes)


def test_corrupt_tflite_is_a_runtime_load_error_in_the_child(tmp_path):
    bad = tmp_path / "corrupt.tflite"
    bad.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(RuntimeLoadError, match="LiteRT cannot load"):
        subproc.run_isolated(bad, {"x": np.zeros((1, 3), np.float32)})


def test_child_killed_by_a_signal_is_reported_not_fatal(cnn, monkeypatch):
    abort = [sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGABRT)"]
    monkeypatch.setattr(subproc, "_child_command", lambda folder: abort)
    with pytest.raises(RuntimeLoadError, match=r"LiteRT crashed \(signal SIGABRT\)"):
        subproc.run_isolated(cnn[1], {"x": np.zeros((1, 3, 32, 32), np.float32)})


def test_isolated_run_matches_in_process_run(cnn):
    x = np.random.default_rng(1).standard_normal((1, 3, 32, 32)).astype(np.float32)
    outs = subproc.run_isolated_many(cnn[1], [{"x": x}, {"x": 2 * x}])
    assert np.array_equal(outs[0]["output"], load(cnn[1]).run({"x": x})["output"])
    assert not np.array_equal(outs[0]["output"], outs[1]["output"])


@pytest.mark.parametrize("command", ["eval", "run"])
def test_cli_commands_survive_a_litert_crash(cnn, tmp_path, command):
    # a LiteRT whose interpreter aborts on load, as it does on some malformed models
    fake = tmp_path / "fake" / "ai_edge_litert"
    fake.mkdir(parents=True)
    import ai_edge_litert
    real = Path(ai_edge_litert.__file__).parent  # its other modules (the flatbuffer schema) stay real
    (fake / "__init__.py").write_text(f"__path__.append({str(real)!r})\n")
    (fake / "interpreter.py").write_text(
        "import os, sys\n"
        "class OpResolverType:\n    AUTO = 0\n    BUILTIN_WITHOUT_DEFAULT_DELEGATES = 1\n"
        "class Interpreter:\n"
        "    def __init__(self, *a, **k):\n"
        "        print('F0000 fatal: tensor index out of range', file=sys.stderr, flush=True)\n"
        "        os.abort()\n")
    data = tmp_path / "d.npz"
    np.savez(data, x=np.zeros((1, 3, 32, 32), np.float32), labels=np.zeros(1, np.int64))
    args = {"eval": ["--eval-data", data], "run": ["--input-data", data, "-o", tmp_path / "o.npz"]}[command]
    env = {**os.environ, "PYTHONPATH": f"{tmp_path / 'fake'}:{REPO}"}
    done = subprocess.run([sys.executable, "-m", "edgeai.cli", command, str(cnn[1]), *map(str, args)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, (done.returncode, done.stderr)
    error = [line for line in done.stderr.splitlines() if line.startswith("edgeai: error:")]
    assert len(error) == 1 and "LiteRT crashed (signal SIGABRT)" in error[0], done.stderr
    assert "tensor index out of range" in error[0] and not (tmp_path / "o.npz").exists()


def test_runtime_runs_a_tflite_model_without_importing_torch(cnn):
    code = ("import sys, json, numpy as np\n"
            "from edgeai.runtime import load\n"
            f"s = load({str(cnn[1])!r}, threads=1)\n"
            "y = s.run({'x': np.zeros((1, 3, 32, 32), np.float32)})['output']\n"
            "print(json.dumps({'torch': 'torch' in sys.modules, 'shape': list(y.shape), 'rt': s.describe()}))\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["torch"] is False and report["shape"] == [1, 10]
    assert report["rt"]["runtime"] == "ai-edge-litert" and report["rt"]["xnnpack"] is True


def test_missing_litert_torch_names_the_install_command(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "litert_torch", None)
    exporter = get_exporter("tflite")
    with pytest.raises(MissingDependencyError, match=r'pip install .*\[tflite\]'):
        exporter.fn(TinyCNN(), {"x": torch.randn(1, 3, 8, 8)}, [TensorSpec("x", (1, 3, 8, 8))],
                    tmp_path / "m.tflite", exporter.config_cls())


def test_inspect_rejects_a_file_that_is_not_tflite(tmp_path):
    bad = tmp_path / "model.tflite"
    bad.write_bytes(b"not a flatbuffer at all")
    with pytest.raises(RuntimeLoadError, match="not a TFLite flatbuffer"):
        inspect_tflite(bad)
