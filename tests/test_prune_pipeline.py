"""prune -> distill -> quantize -> export as one recipe: each stage's MACs, size and metric in the manifest."""
import pytest

import edgeai
from edgeai.errors import ConfigError, DataError
from edgeai.recipe import DataConfig, SummaryConfig
from edgeai.zoo import REFERENCE_MODELS

LSTM = REFERENCE_MODELS["lstm"]


def test_lstm_pruned_distilled_and_quantized_keeps_top1_within_1pt(tmp_path):
    out = edgeai.export(LSTM.factory, tmp_path, inputs=LSTM.inputs,
                        steps=({"prune": {"ratio": 0.5, "round_to": 8}}, {"distill": {"epochs": 30, "seed": 0}}),
                        quantize=({"int8-dynamic": {}},),
                        data=DataConfig(train=LSTM.train_data, eval=LSTM.test_data),
                        summary=SummaryConfig(bench=False))
    original, student, q = out.artifacts
    assert [a.name for a in out.artifacts] == ["original", "fp32", "int8-dynamic"]
    assert original.steps == [original.steps[0]] and original.steps[0]["type"] == "export.onnx"
    assert [s["type"] for s in student.steps] == ["model.prune", "model.distill", "export.onnx"]
    # a smaller dense model: fewer MACs and parameters, a smaller file, still verified
    assert student.metrics["macs"] < 0.55 * original.metrics["macs"]
    assert student.metrics["params"] < original.metrics["params"]
    assert student.size_bytes < 0.7 * original.size_bytes and student.parity["passed"]
    assert student.inputs[0]["shape"] == ["batch", "seq", 32]  # hidden units went, the interface stayed
    prune, distill = student.steps[0]["details"], student.steps[1]["details"]
    # pruning alone cost more than a point; distillation brings it back within 1 point of the teacher
    assert distill["initial_metric"] * 100 < original.metrics["top1"] - 1.0
    assert original.metrics["top1"] - student.metrics["top1"] <= 1.0, (original.metrics, student.metrics, distill)
    assert original.metrics["top1"] - q.metrics["top1"] <= 1.5
    assert prune["achieved_ratio"] == pytest.approx(0.5, abs=0.05)


def test_model_step_errors_are_clear(tmp_path):
    with pytest.raises(ConfigError, match="ratio must be between 0 and 1"):
        edgeai.export(LSTM.factory, tmp_path / "a", inputs=LSTM.inputs, steps=({"prune": {"ratio": 1.5}},),
                      summary=SummaryConfig(bench=False))
    with pytest.raises(ConfigError, match="bad options"):
        edgeai.export(LSTM.factory, tmp_path / "b", inputs=LSTM.inputs, steps=({"prune": {"ratoi": 0.5}},),
                      summary=SummaryConfig(bench=False))
    with pytest.raises(DataError):
        edgeai.export(LSTM.factory, tmp_path / "c", inputs=LSTM.inputs, steps=({"distill": {"epochs": 1}},),
                      summary=SummaryConfig(bench=False))
    assert not any((tmp_path / d / "manifest.json").exists() for d in "abc")


@pytest.mark.slow
def test_fast_cnn_recipe_prunes_distills_and_quantizes_within_1pt(cli, tmp_path):
    code, out, err = cli("export", "recipes/digits_cnn_fast.yaml", "-o", tmp_path, "--no-bench")
    assert code == 0, err
    from edgeai.manifest import Manifest
    m = Manifest.read(tmp_path)
    original, student, q = m.artifacts
    assert student.metrics["macs"] < 0.3 * original.metrics["macs"]
    assert original.metrics["top1"] - student.metrics["top1"] <= 1.0
    assert original.metrics["top1"] - q.metrics["top1"] <= 1.0
    assert "prune: MACs" in out and "distill: top1" in out
