"""TFLite INT8 under a budget: per-op recipes keep the op that adds the error in float32, verified in LiteRT."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("litert_torch", reason="TFLite export needs litert-torch")
pytest.importorskip("ai_edge_quantizer", reason="TFLite quantization needs ai-edge-quantizer")

from edgeai.evaluate import evaluate, run_batched  # noqa: E402
from edgeai.exporters import get_exporter  # noqa: E402
from edgeai.runtime import load  # noqa: E402
from edgeai.specs import TensorSpec  # noqa: E402
from edgeai.steps import StepContext, get_artifact_step  # noqa: E402
from edgeai.steps.quant_fallback_tflite import _ops, quantize_tflite_with_fallback, weighted_ops, weighted_units  # noqa: E402
from edgeai.steps.quantize_tflite import TFLiteInt8FullConfig  # noqa: E402

from models import OutlierMLP  # noqa: E402


@pytest.fixture(scope="module")
def mlp_tflite(tmp_path_factory):
    torch.manual_seed(0)
    model = OutlierMLP().eval()
    path = tmp_path_factory.mktemp("tfl") / "mlp.tflite"
    exporter = get_exporter("tflite")
    exporter.fn(model, {"x": torch.randn(1, 16)}, [TensorSpec("x", (1, 16))], path, exporter.config_cls())
    return path


def samples(n, seed):
    return {"x": np.random.default_rng(seed).standard_normal((n, 16)).astype(np.float32)}


def test_int8_full_is_an_alias_of_int8_static_in_every_format():
    for fmt in ("onnx", "tflite"):
        assert get_artifact_step(f"{fmt}:int8-full") is get_artifact_step(f"{fmt}:int8-static")


def test_tflite_fallback_keeps_the_outlier_layer_in_float_and_meets_the_budget(mlp_tflite, tmp_path):
    feeds = samples(128, 3)
    data = {**feeds, "labels": run_batched(load(mlp_tflite), feeds)["output"].argmax(-1)}  # FP32 top-1 is 100
    report, fb = quantize_tflite_with_fallback(
        "tflite:int8-static", mlp_tflite, tmp_path / "q.tflite", TFLiteInt8FullConfig(),
        StepContext(calibration=samples(64, 4)), lambda p: evaluate(p, data).value, max_drop=10.0)
    ops = weighted_ops(mlp_tflite)
    assert [kind for kind, _, _, _ in ops] == ["FULLY_CONNECTED"] * 3
    middle = ops[1][1]                                # the scope of layer b
    assert fb.baseline == 100.0
    assert fb.tries[0].drop > 20                      # INT8 everywhere wrecks it
    assert fb.ranking[0][0] == middle                 # the layer reading the outlier column adds the error
    assert fb.within and fb.chosen_try.excluded == (middle,)
    assert evaluate(tmp_path / "q.tflite", data).value >= 90.0  # run in LiteRT (57 with every layer INT8)
    assert report.config["exclude_ops"] == [middle]
    assert report.details["weight_bytes_by_dtype"].get("int8", 0) > 0  # the other layers stay INT8


class ShiftedBatchNormCNN(torch.nn.Module):
    """Conv -> ReLU -> BatchNorm (not foldable after the ReLU: SUB/MUL in TFLite) -> pool -> dense. One
    channel's running mean is 1000 (variance 1e6): the SUB output spans +-1000 and a per-tensor INT8
    scale wipes the other channels, though the BatchNorm's output is in range again."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 16, (3, 1), padding=(1, 0))
        self.bn = torch.nn.BatchNorm2d(16)
        self.fc = torch.nn.Linear(16 * 8, 10)
        with torch.no_grad():
            self.bn.running_mean[0] = 1000.0
            self.bn.running_var[0] = 1e6

    def forward(self, x):
        y = torch.nn.functional.max_pool2d(self.bn(torch.relu(self.conv(x))), (2, 1))
        return self.fc(torch.flatten(y, 1))


def cnn_feeds(n, seed):
    return {"x": np.random.default_rng(seed).standard_normal((n, 1, 16, 1)).astype(np.float32)}


@pytest.fixture(scope="module")
def shifted_bn_tflite(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tfl") / "cnn.tflite"
    exporter = get_exporter("tflite")
    exporter.fn(ShiftedBatchNormCNN().eval(), {"x": torch.randn(1, 1, 16, 1)}, [TensorSpec("x", (1, 1, 16, 1))], path,
                exporter.config_cls())
    return path


def test_tflite_fallback_keeps_a_conv_with_its_epilogue_in_float(shifted_bn_tflite, tmp_path):
    path, feeds = shifted_bn_tflite, cnn_feeds
    data = {**feeds(128, 3), "labels": run_batched(load(path), feeds(128, 3))["output"].argmax(-1)}
    kinds = {scope: kind for kind, scope, _, _ in _ops(path)}
    conv_unit = weighted_units(path)[0][1]
    assert [kinds[s] for s in conv_unit][:4] == ["DEPTHWISE_CONV_2D", "RESHAPE", "SUB", "MUL"]  # conv, lead, epilogue
    step = get_artifact_step("tflite:int8-static")
    weights_only = TFLiteInt8FullConfig(exclude_ops=tuple(s for _, s, _, _ in weighted_ops(path)))
    step.fn(path, tmp_path / "w.tflite", weights_only, StepContext(calibration=feeds(64, 4)))
    assert evaluate(tmp_path / "w.tflite", data).value < 20  # every conv/dense op in float is not enough
    report, fb = quantize_tflite_with_fallback(
        "tflite:int8-static", path, tmp_path / "q.tflite", TFLiteInt8FullConfig(), StepContext(calibration=feeds(64, 4)),
        lambda p: evaluate(p, data).value, max_drop=10.0)
    assert fb.tries[0].metric < 20 and fb.within
    kept = set(fb.chosen_try.excluded)
    assert "SUB" in {kinds[s] for s in kept} and "FULLY_CONNECTED" not in {kinds[s] for s in kept}
    assert evaluate(tmp_path / "q.tflite", data).value >= 90.0


def test_a_tflite_variant_within_budget_only_with_every_op_in_float_is_not_kept(shifted_bn_tflite, tmp_path):
    from edgeai.budget import Budget, quantize_within_budget
    from edgeai.steps import VariantNotKept

    feeds = cnn_feeds(128, 3)
    labels = run_batched(load(shifted_bn_tflite), feeds)["output"].argmax(-1)
    budget = Budget(feeds, None, labels, None, 0.0, None, "top-1 drop <= 0", cnn_feeds(64, 4))  # no drop at all
    step = get_artifact_step("tflite:int8-static")
    ctx = StepContext(calibration=cnn_feeds(64, 4))
    with pytest.raises(VariantNotKept, match="no node of this model was quantized"):
        quantize_within_budget("tflite:int8-static", step, shifted_bn_tflite, tmp_path / "q.tflite",
                               TFLiteInt8FullConfig(), ctx, budget)
    report = step.fn(shifted_bn_tflite, tmp_path / "all.tflite", TFLiteInt8FullConfig(), ctx)
    assert report.details["quantized_nodes"] >= 3  # conv, BatchNorm, dense: INT8 when nothing is excluded


def test_a_scheme_given_twice_under_its_alias_is_refused(tmp_path):
    import edgeai
    from edgeai.recipe import DataConfig, RecipeError, SummaryConfig
    np.savez(tmp_path / "calib.npz", image=np.random.default_rng(0).standard_normal((16, 3, 16, 16)).astype(np.float32))
    with pytest.raises(RecipeError, match="'int8-static' is asked twice"):
        edgeai.export("tests/models.py:cnn", tmp_path / "o", inputs=["image:batch,3,16,16"],
                      quantize=({"int8-full": {}}, {"int8-static": {}}), summary=SummaryConfig(bench=False),
                      data=DataConfig(calibration=str(tmp_path / "calib.npz")))


@pytest.mark.slow
def test_tflite_int8_static_from_the_cli_is_written_under_the_canonical_name(tmp_path, cli):
    np.savez(tmp_path / "calib.npz", image=np.random.default_rng(0).standard_normal((32, 3, 16, 16)).astype(np.float32))
    code, out, err = cli("export", "tests/models.py:cnn", "--input", "image:batch,3,16,16", "--format", "tflite",
                         "--quantize", "int8-full", "--calibration", str(tmp_path / "calib.npz"), "-o", str(tmp_path / "o"))
    assert code == 0, err
    from edgeai.manifest import Manifest
    manifest = Manifest.read(tmp_path / "o")
    (q,) = [a for a in manifest.artifacts if a.name != "fp32"]
    assert q.name == "int8-static" and q.file == "model.int8-static.tflite" and q.precision == "int8"
    assert q.details["budget"]["min_metric"] == 0.99 and "output cosine to FP32 >= 0.99" in " ".join(q.notes)
