"""ONNX quantization steps (fp16, int8-dynamic, int8-static) and the accuracy fallback, on small exported models."""
from __future__ import annotations

import hashlib
import warnings
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
nn = torch.nn

from edgeai import hw  # noqa: E402
from edgeai.errors import DataError, OutputError  # noqa: E402
from edgeai.evaluate import evaluate, run_batched  # noqa: E402
from edgeai.runtime import load  # noqa: E402
from edgeai.steps import StepContext, get_artifact_step  # noqa: E402
from edgeai.steps.quant_fallback import quantize_with_fallback  # noqa: E402
from edgeai.steps.quantize_onnx import (Fp16Config, Int8DynamicConfig, Int8StaticConfig, fp16,  # noqa: E402
                                        int8_dynamic, int8_static)


class SmallCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.f = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                               nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
                               nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(),
                               nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))

    def forward(self, x):
        return self.f(x)


class SmallLSTM(nn.Module):
    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(8, 32, batch_first=True)
        self.fc = nn.Linear(32, 5)

    def forward(self, x):  # (batch, seq, feat)
        y, _ = self.lstm(x)
        return self.fc(y[:, -1])


class TinyAttention(nn.Module):
    """One attention block + MLP: MatMul-heavy like a Transformer layer."""

    def __init__(self, d=64):
        super().__init__()
        self.emb, self.q, self.k, self.v, self.o = (nn.Linear(16, d), nn.Linear(d, d), nn.Linear(d, d),
                                                    nn.Linear(d, d), nn.Linear(d, d))
        self.ff = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))
        self.ln = nn.LayerNorm(d)
        self.head = nn.Linear(d, 10)

    def forward(self, x):  # (batch, seq, 16)
        h = self.emb(x)
        att = torch.softmax(self.q(h) @ self.k(h).transpose(1, 2) / 8.0, dim=-1)
        h = self.ln(h + self.o(att @ self.v(h)))
        return self.head((h + self.ff(h)).mean(1))


class PlantedMLP(nn.Module):
    """MLP whose middle layer has an outlier weight column reading a dead unit: harmless in FP32,
    but a per-tensor INT8 scale of 50/127 rounds every other weight of that layer to zero."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Linear(16, 64), nn.Linear(64, 64), nn.Linear(64, 10)
        with torch.no_grad():
            self.a.weight[7] = 0.0
            self.a.bias[7] = -1.0      # hidden unit 7 is always 0 after ReLU
            self.b.weight[:, 7] = 50.0

    def forward(self, x):
        return self.c(torch.relu(self.b(torch.relu(self.a(x)))))


SAMPLE_SHAPES = {"cnn": (3, 32, 32), "lstm": (6, 8), "attn": (12, 16), "mlp": (16,)}
MODELS = {"cnn": SmallCNN, "lstm": SmallLSTM, "attn": TinyAttention, "mlp": PlantedMLP}


def _export(module, sample_shape, path):
    torch.manual_seed(0)
    module.eval()
    with warnings.catch_warnings():  # the TorchScript exporter's deprecation and tracer warnings
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (torch.randn(2, *sample_shape),), str(path), input_names=["x"],
                          output_names=["y"], dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}}, dynamo=False)
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    torch.set_num_threads(1)
    folder = tmp_path_factory.mktemp("models")
    out = {}
    for name, cls in MODELS.items():
        torch.manual_seed(0)
        out[name] = _export(cls(), SAMPLE_SHAPES[name], folder / f"{name}.onnx")
    return out


def samples(name, n, seed):
    return {"x": np.random.default_rng(seed).standard_normal((n, *SAMPLE_SHAPES[name])).astype(np.float32)}


def cosine_to_fp32(src, dst, feeds):
    reference = run_batched(load(src), feeds)
    return evaluate(dst, feeds, reference=reference).value


def weight_ratio(report):
    return report.details["weight_bytes_before"] / report.details["weight_bytes_after"]


@pytest.mark.parametrize("name", ["cnn", "attn"])
def test_fp16_halves_file_size_and_keeps_cosine_above_0999(models, tmp_path, name):
    dst = tmp_path / "fp16.onnx"
    report = fp16(models[name], dst, Fp16Config(), StepContext())
    ratio = dst.stat().st_size / models[name].stat().st_size
    assert 0.45 <= ratio <= 0.6, ratio
    assert set(report.details["weights_after"]) == {"float16"}
    assert load(dst).inputs[0].dtype == "float32"  # keep_io_types
    assert cosine_to_fp32(models[name], dst, samples(name, 16, 1)) > 0.999


def test_int8_dynamic_stores_matmul_weights_about_4x_smaller(models, tmp_path):
    dst = tmp_path / "dyn.onnx"
    report = int8_dynamic(models["attn"], dst, Int8DynamicConfig(), StepContext())
    assert 3.5 <= weight_ratio(report) <= 4.0, report.details["weights_after"]
    assert report.details["quantized_nodes"] >= 8  # emb, q, k, v, o, ff x2, head
    assert report.details["left_in_fp32"] == {}
    assert cosine_to_fp32(models["attn"], dst, samples("attn", 16, 1)) > 0.99


def test_int8_dynamic_default_op_types_leave_conv_fp32_and_say_so(models, tmp_path):
    report = int8_dynamic(models["cnn"], tmp_path / "dyn.onnx", Int8DynamicConfig(), StepContext())
    ops = report.details["ops_after"]
    assert "ConvInteger" not in ops and ops["Conv"] == 3
    assert len(report.details["left_in_fp32"]["Conv"]) == 3
    assert any(n.startswith("Conv node(s)") and "not in op_types" in n for n in report.notes)
    asked = int8_dynamic(models["cnn"], tmp_path / "dyn_conv.onnx",
                         Int8DynamicConfig(op_types=("Conv", "Gemm")), StepContext())
    assert asked.details["ops_after"].get("ConvInteger") == 3


def test_int8_dynamic_quantizes_lstm_weights(models, tmp_path):
    # per-tensor: per-channel scales (4 x 12 floats per matrix) are a large share of this tiny LSTM
    report = int8_dynamic(models["lstm"], tmp_path / "dyn.onnx", Int8DynamicConfig(per_channel=False), StepContext())
    assert report.details["ops_after"].get("DynamicQuantizeLSTM") == 1
    assert weight_ratio(report) > 3.0
    assert cosine_to_fp32(models["lstm"], tmp_path / "dyn.onnx", samples("lstm", 16, 1)) > 0.99


def test_int8_static_cnn_keeps_cosine_above_099_on_unseen_data(models, tmp_path):
    dst = tmp_path / "static.onnx"
    report = int8_static(models["cnn"], dst, Int8StaticConfig(), StepContext(calibration=samples("cnn", 32, 0)))
    assert report.details["calibration_samples"] == 32
    assert report.details["quantized_nodes"] >= 4 and report.details["left_in_fp32"] == {}
    assert weight_ratio(report) > 3.0
    assert cosine_to_fp32(models["cnn"], dst, samples("cnn", 32, 7)) > 0.99


def test_int8_static_on_lstm_notes_the_lstm_left_in_fp32(models, tmp_path):
    report = int8_static(models["lstm"], tmp_path / "static.onnx", Int8StaticConfig(),
                         StepContext(calibration=samples("lstm", 16, 0)))
    lstm = report.details["left_in_fp32"]["LSTM"]
    assert len(lstm) == 1
    assert f"LSTM node(s) {lstm[0]} left in FP32: static QDQ cannot quantize LSTM; use int8-dynamic" in report.notes
    assert weight_ratio(report) < 1.2  # the LSTM holds almost every weight


@pytest.mark.parametrize("vnni", [False, True])
def test_reduce_range_default_follows_cpu_int8_dot_product(models, tmp_path, monkeypatch, vnni):
    flags = ["avx", "avx2", "fma"] + (["avx512_vnni"] if vnni else [])
    monkeypatch.setattr(hw.platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(hw, "cpu_info", lambda: {"model": "test cpu", "machine": "x86_64", "flags": flags,
                                                 "logical_cores": 2, "physical_cores": 2})
    dst = tmp_path / "dyn.onnx"
    report = int8_dynamic(models["attn"], dst, Int8DynamicConfig(), StepContext())
    assert report.details["reduce_range"] is (not vnni)
    assert ("VNNI" in report.details["reduce_range_reason"]) and ("avx512_vnni" in report.details[
        "reduce_range_reason"]) is vnni
    from onnx import numpy_helper
    int8 = [numpy_helper.to_array(t) for t in onnx.load(str(dst)).graph.initializer if t.data_type == 3]
    peak = max(int(np.abs(a.astype(np.int32)).max()) for a in int8)
    assert peak <= 64 if not vnni else peak == 127  # 7-bit weights when reduce_range


def test_reduce_range_set_in_config_wins(models, tmp_path):
    report = int8_dynamic(models["attn"], tmp_path / "d.onnx", Int8DynamicConfig(reduce_range=True), StepContext())
    assert report.details["reduce_range"] is True and "set in the config" in report.details["reduce_range_reason"]


@pytest.mark.parametrize("step,config", [("onnx:int8-dynamic", Int8DynamicConfig()),
                                         ("onnx:int8-static", Int8StaticConfig(per_channel=False))])
def test_fallback_keeps_planted_outlier_layer_in_fp32_and_restores_top1(models, tmp_path, step, config):
    src = models["mlp"]
    feeds = samples("mlp", 256, 3)
    data = {**feeds, "labels": run_batched(load(src), feeds)["y"].argmax(-1)}  # FP32 top-1 is 100
    report, fb = quantize_with_fallback(step, src, tmp_path / "q.onnx", config,
                                        StepContext(calibration=samples("mlp", 64, 4)),
                                        lambda p: evaluate(p, data).value, max_drop=2.0)
    assert fb.baseline == 100.0
    assert fb.tries[0].drop > 20  # INT8 everywhere wrecks it
    assert fb.ranking[0][0] == "/b/Gemm"
    assert fb.within and fb.chosen_try.excluded == ("/b/Gemm",)
    assert evaluate(tmp_path / "q.onnx", data).value >= 98.0
    assert report.config["exclude_nodes"] == ["/b/Gemm"]
    left = report.details["left_in_fp32"]  # dynamic INT8 turns an FP32 Gemm into MatMul + Add
    assert [n for names in left.values() for n in names] == ["/b/Gemm"]
    assert report.details["quantized_nodes"] >= 2
    assert any("kept 1 node(s) in FP32 (/b/Gemm)" in n for n in report.notes)


def test_steps_are_registered_with_their_precision():
    assert get_artifact_step("onnx:fp16").precision == "fp16"
    assert get_artifact_step("onnx:int8-dynamic").config_cls is Int8DynamicConfig
    assert get_artifact_step("onnx:int8-static").fn is int8_static


def _sha(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def test_steps_handle_external_data_and_never_touch_src(models, tmp_path):
    src = tmp_path / "src" / "attn.onnx"
    src.parent.mkdir()
    onnx.save_model(onnx.load(str(models["attn"])), str(src), save_as_external_data=True,
                    all_tensors_to_one_file=True, location="attn.onnx.data", size_threshold=0)
    before = {p.name: _sha(p) for p in src.parent.iterdir()}
    out = tmp_path / "out"
    r16 = fp16(src, out / "fp16.onnx", Fp16Config(), StepContext())
    r8 = int8_dynamic(src, out / "int8.onnx", Int8DynamicConfig(), StepContext())
    r8s = int8_static(src, out / "static.onnx", Int8StaticConfig(), StepContext(calibration=samples("attn", 16, 0)))
    assert {p.name: _sha(p) for p in src.parent.iterdir()} == before
    assert [r.details["extra_files"] for r in (r16, r8, r8s)] == [
        ["fp16.onnx.data"], ["int8.onnx.data"], ["static.onnx.data"]]
    assert sorted(p.name for p in out.iterdir()) == ["fp16.onnx", "fp16.onnx.data", "int8.onnx", "int8.onnx.data",
                                                     "static.onnx", "static.onnx.data"]
    feeds = samples("attn", 8, 1)
    assert cosine_to_fp32(src, out / "fp16.onnx", feeds) > 0.999
    assert cosine_to_fp32(src, out / "int8.onnx", feeds) > 0.99
    assert cosine_to_fp32(src, out / "static.onnx", feeds) > 0.99


def test_step_refuses_to_overwrite_its_input(models, tmp_path):
    src = tmp_path / "m.onnx"
    src.write_bytes(models["mlp"].read_bytes())
    with pytest.raises(OutputError, match="refusing to overwrite"):
        int8_dynamic(src, src, Int8DynamicConfig(), StepContext())


def test_int8_static_rejects_missing_or_too_little_calibration_data(models, tmp_path):
    with pytest.raises(DataError, match="needs calibration data"):
        int8_static(models["cnn"], tmp_path / "s.onnx", Int8StaticConfig(), StepContext())
    with pytest.raises(DataError, match="calibration data needs at least 8 samples, got 3"):
        int8_static(models["cnn"], tmp_path / "s.onnx", Int8StaticConfig(),
                    StepContext(calibration=samples("cnn", 3, 0)))
    assert not (tmp_path / "s.onnx").exists()


def test_int8_static_excluded_gemm_really_runs_in_fp32(models, tmp_path):
    # onnxruntime's WeightBiasQuantization would quantize a float Gemm fed by DequantizeLinear at load
    src, feeds = models["mlp"], samples("mlp", 256, 3)
    labels = run_batched(load(src), feeds)["y"].argmax(-1)
    ctx = StepContext(calibration=samples("mlp", 64, 4))
    config = Int8StaticConfig(per_channel=False, exclude_nodes=("/b/Gemm",))
    int8_static(src, tmp_path / "keep.onnx", config, ctx)
    gemm_b = next(n for n in onnx.load(str(tmp_path / "keep.onnx")).graph.node if n.name == "/b/Gemm")
    assert "DequantizeLinear" not in gemm_b.input[0]
    assert evaluate(tmp_path / "keep.onnx", feeds, labels=labels).value >= 98.0


@pytest.mark.parametrize("failures,ran", [(1, "no-symbolic-shape"), (2, "none")])
def test_failed_preprocessing_is_retried_then_skipped_with_a_note(models, tmp_path, monkeypatch, failures, ran):
    import onnxruntime.quantization as ortq
    real, calls = ortq.quant_pre_process, []

    def flaky(*args, **kwargs):
        calls.append(kwargs["skip_symbolic_shape"])
        if len(calls) <= failures:
            raise AssertionError("symbolic shape inference failed")
        return real(*args, **kwargs)

    monkeypatch.setattr(ortq, "quant_pre_process", flaky)
    report = int8_dynamic(models["attn"], tmp_path / "d.onnx", Int8DynamicConfig(), StepContext())
    assert calls == [False, True] and report.details["preprocessed"] == ran
    assert any("symbolic shape inference" in n or "quantized the model as exported" in n for n in report.notes)
    assert weight_ratio(report) > 3.5


def test_preprocessing_runs_on_relative_paths(models, tmp_path, monkeypatch):
    # the pre-processing runs in a scratch working folder: relative paths must be resolved before it
    import shutil
    shutil.copy(models["cnn"], tmp_path / "m.onnx")
    monkeypatch.chdir(tmp_path)
    report = int8_dynamic(Path("m.onnx"), Path("d.onnx"), Int8DynamicConfig(), StepContext())
    assert report.details["preprocessed"] == "full", report.notes
    assert not any("pre-processing failed" in n for n in report.notes)
