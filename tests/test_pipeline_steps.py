"""Quantized variants through `edgeai export`: written beside FP32, verified, evaluated, timed, reported."""
import numpy as np
import onnx
from onnx import numpy_helper
import torch

import edgeai
import edgeai.recipe  # the attribute below: `import edgeai` alone is lazy
from edgeai.manifest import Manifest

from conftest import factory
import models


def _labelled(module, n=256, seed=0):
    x = np.random.default_rng(seed).standard_normal((n, module.a.in_features if hasattr(module, "a") else 64))
    x = x.astype(np.float32)
    with torch.no_grad():
        labels = module(torch.from_numpy(x)).argmax(-1).numpy()
    return x, labels


def test_quantized_variants_are_verified_evaluated_and_timed(tmp_path):
    x, labels = _labelled(models.wide_mlp())
    np.savez(tmp_path / "eval.npz", x=x, labels=labels)
    np.savez(tmp_path / "calib.npz", x=x[:64])
    out = edgeai.export(factory("wide_mlp"), tmp_path / "o", inputs=["x:batch,64"],
                        quantize=({"fp16": {}}, {"int8-dynamic": {}}, {"int8-static": {}}),
                        data=edgeai.recipe.DataConfig(eval=str(tmp_path / "eval.npz"),
                                                      calibration=str(tmp_path / "calib.npz")))
    by = {a.name: a for a in out.artifacts}
    assert list(by) == ["fp32", "fp16", "int8-dynamic", "int8-static"]
    fp32 = by["fp32"]
    assert fp32.metrics["top1"] == 100.0          # labels are the FP32 model's own predictions
    assert 0.45 < by["fp16"].size_bytes / fp32.size_bytes < 0.6
    assert by["int8-dynamic"].size_bytes / fp32.size_bytes < 0.35
    for a in out.artifacts:
        assert a.parity["passed"] and (tmp_path / "o" / a.file).is_file()
        assert a.metrics["latency_p50_ms"] > 0 and a.metrics["latency_threads"] == 1
        # 96.9 for int8-static on a host without VNNI (reduce_range: 7-bit activations), 100 with it
        assert a.metrics["top1"] >= (95.0 if a.precision == "int8" else 97.0), (a.name, a.metrics)
        assert a.steps[0]["type"] == "export.onnx"
    assert by["int8-static"].steps[-1]["type"] == "onnx:int8-static"
    assert Manifest.read(tmp_path / "o").get("int8-dynamic").precision == "int8"


def test_max_drop_keeps_the_planted_sensitive_layer_in_fp32(cli, tmp_path):
    x, labels = _labelled(models.outlier_mlp())
    x = x[:, :16]
    with torch.no_grad():
        labels = models.outlier_mlp()(torch.from_numpy(x)).argmax(-1).numpy()
    np.savez(tmp_path / "eval.npz", x=x, labels=labels)
    code, out, err = cli("export", factory("outlier_mlp"), "--input", "x:batch,16", "-o", tmp_path / "o",
                         "--quantize", "int8-dynamic", "--eval-data", tmp_path / "eval.npz", "--max-drop", "2",
                         "--no-bench")
    assert code == 0, err
    m = Manifest.read(tmp_path / "o")
    q = m.get("int8-dynamic")
    excluded = q.steps[-1]["config"]["exclude_nodes"]
    assert len(excluded) == 1
    # the excluded node is the one that reads the outlier weights (layer b)
    graph = onnx.load(str(tmp_path / "o" / m.get("fp32").file)).graph
    weights = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    node = next(n for n in graph.node if n.name == excluded[0])
    assert max(float(np.abs(weights[i]).max()) for i in node.input if i in weights) == 50.0
    assert q.metrics["top1"] >= 98.0
    assert any("kept 1 node(s) in FP32" in n for n in q.notes)
    assert "int8-dynamic" in out and "kept 1 node(s) in FP32" in out


def test_cosine_metric_without_labels(tmp_path):
    x = np.random.default_rng(3).standard_normal((64, 64)).astype(np.float32)
    np.savez(tmp_path / "eval.npz", x=x)
    out = edgeai.export(factory("wide_mlp"), tmp_path / "o", inputs=["x:batch,64"], quantize=({"fp16": {}},),
                        data=edgeai.recipe.DataConfig(eval=str(tmp_path / "eval.npz")),
                        summary=edgeai.recipe.SummaryConfig(bench=False))
    fp32, fp16 = out.artifacts
    assert fp32.metrics["cosine"] > 0.99999 and fp16.metrics["cosine"] > 0.999
    assert "latency_p50_ms" not in fp32.metrics


def test_variant_that_crashes_its_runtime_is_left_out_and_reported(tmp_path):
    # onnxruntime 1.31 segfaults creating a session for this FP16 graph (full optimizations);
    # the export must survive, keep the other variants and say what happened
    out = edgeai.export(factory("tiny_encoder"), tmp_path / "o", inputs=["tokens:batch,seq=8,32"],
                        quantize=({"fp16": {}}, {"int8-dynamic": {}}), summary=edgeai.recipe.SummaryConfig(bench=False))
    names = [a.name for a in out.artifacts]
    assert names[0] == "fp32" and "int8-dynamic" in names
    failed = {f["name"]: f["error"] for f in out.manifest.failed}
    if "fp16" in failed:
        assert "crashed (signal SIGSEGV)" in failed["fp16"] and "fp16" not in names
        assert not list((tmp_path / "o").glob("model.fp16*"))
    else:  # a fixed onnxruntime: then the variant must be a verified artifact
        assert out.manifest.get("fp16").parity["passed"]


def test_broken_variant_is_reported_and_the_rest_is_written(tmp_path):
    from dataclasses import dataclass

    from edgeai.steps import ARTIFACT_STEPS, ArtifactStep, StepReport

    @dataclass(frozen=True)
    class GarbageConfig:
        pass

    def garbage(src, dst, config, ctx):
        dst.write_bytes(b"not an onnx model")
        return StepReport("onnx:test-garbage", {})

    if "onnx:test-garbage" not in ARTIFACT_STEPS:
        ARTIFACT_STEPS.add("onnx:test-garbage", ArtifactStep(GarbageConfig, garbage, "int8"))
    out = edgeai.export(factory("wide_mlp"), tmp_path / "o", inputs=["x:batch,64"],
                        quantize=({"test-garbage": {}}, {"fp16": {}}), summary=edgeai.recipe.SummaryConfig(bench=False))
    assert [a.name for a in out.artifacts] == ["fp32", "fp16"]
    (f,) = out.manifest.failed
    assert f["name"] == "test-garbage" and "cannot load" in f["error"]
    assert Manifest.read(tmp_path / "o").failed == out.manifest.failed


def test_quantized_variant_that_computes_something_else_is_rejected(tmp_path):
    from dataclasses import dataclass

    from edgeai.steps import ARTIFACT_STEPS, ArtifactStep, StepReport

    @dataclass(frozen=True)
    class NegateConfig:
        pass

    def negate_weights(src, dst, config, ctx):  # a valid graph whose outputs have nothing to do with FP32
        model = onnx.load(str(src))
        for init in model.graph.initializer:
            arr = numpy_helper.to_array(init)
            if arr.dtype == np.float32:
                init.CopyFrom(numpy_helper.from_array(-arr, init.name))
        onnx.save(model, str(dst))
        return StepReport("onnx:test-negate", {})

    if "onnx:test-negate" not in ARTIFACT_STEPS:
        ARTIFACT_STEPS.add("onnx:test-negate", ArtifactStep(NegateConfig, negate_weights, "int8"))
    out = edgeai.export(factory("wide_mlp"), tmp_path / "o", inputs=["x:batch,64"],
                        quantize=({"test-negate": {}},), summary=edgeai.recipe.SummaryConfig(bench=False))
    assert [a.name for a in out.artifacts] == ["fp32"]
    (f,) = out.manifest.failed
    assert "computes something else" in f["error"] and "cosine" in f["error"]
