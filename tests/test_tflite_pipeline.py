"""TFLite through `edgeai export`: verified in a child process, channels-last I/O, quantized variants, bench."""
import numpy as np
import pytest

pytest.importorskip("litert_torch", reason="TFLite export needs the extra: pip install -c constraints.txt '.[tflite]'")
pytest.importorskip("ai_edge_litert", reason="LiteRT runtime not installed: pip install ai-edge-litert")

import edgeai  # noqa: E402
from edgeai.bench import bench  # noqa: E402
from edgeai.manifest import Manifest  # noqa: E402
from edgeai.recipe import DataConfig, SummaryConfig  # noqa: E402

from conftest import factory  # noqa: E402


@pytest.fixture(scope="module")
def cnn_tflite(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tfl")
    x = np.random.default_rng(0).standard_normal((32, 3, 16, 16)).astype(np.float32)
    np.savez(tmp / "data.npz", image=x)
    out = edgeai.export(factory("cnn"), tmp / "out", inputs=["image:batch,3,16,16"], format="tflite",
                        export={"channels_last_io": True}, quantize=({"int8-full": {}},),
                        data=DataConfig(eval=str(tmp / "data.npz"), calibration=str(tmp / "data.npz")),
                        summary=SummaryConfig(bench=False))
    return tmp, out


def test_channels_last_cnn_is_verified_at_batch_1_and_takes_nhwc(cnn_tflite):
    tmp, out = cnn_tflite
    fp32, q = out.artifacts
    assert fp32.format == "tflite" and fp32.exporter.startswith("litert-torch")
    assert fp32.inputs == [{"name": "image", "shape": [1, 16, 16, 3], "dtype": "float32"}]
    assert fp32.details["input_layout"] == "NHWC" and fp32.details["transpose_count"] <= 1
    assert fp32.parity["passed"] and fp32.parity["max_abs"] < 1e-4
    # the example at batch 1, then 8 single eval samples (the artifact's fixed batch), NCHW -> NHWC for each
    assert fp32.parity["frozen_dims"] == ["batch"] and [c["dims"] for c in fp32.parity["checks"]] == \
        [{"batch": 1}] + [{"samples": f"{i}-{i}", "batch": 1} for i in range(8)]
    assert fp32.metrics["cosine"] > 0.99999
    assert q.precision == "int8" and q.size_bytes < 0.8 * fp32.size_bytes  # tiny model: headers dominate
    assert q.metrics["cosine"] > 0.99 and q.details["channels_last_inputs"] == ["image"]


def test_runtime_runs_the_exported_tflite_and_matches_onnx(cnn_tflite, tmp_path):
    tmp, _ = cnn_tflite
    onnx_out = edgeai.export(factory("cnn"), tmp_path / "onnx", inputs=["image:batch,3,16,16"],
                             summary=SummaryConfig(bench=False))
    x = np.random.default_rng(5).standard_normal((1, 3, 16, 16)).astype(np.float32)
    tfl = edgeai.runtime.load(tmp / "out").run({"image": x.transpose(0, 2, 3, 1)})["output"]
    ref = edgeai.runtime.load(onnx_out.out_dir).run({"image": x})["output"]
    np.testing.assert_allclose(tfl, ref, atol=1e-4)


def test_onnx_and_tflite_variants_compare_in_one_bench_table(cnn_tflite, tmp_path):
    tmp, _ = cnn_tflite
    edgeai.export(factory("cnn"), tmp_path / "onnx", inputs=["image:batch,3,16,16"], summary=SummaryConfig(bench=False))
    report = bench([str(tmp_path / "onnx"), str(tmp / "out")], runs=20, warmup=2)
    assert [r.format for r in report.results] == ["onnx", "tflite", "tflite"]
    assert all(r.ok for r in report.results), [r.error for r in report.results]
    assert report.results[0].speedup_vs_baseline == 1.0
    d = report.to_dict()
    assert d["schema"] == "edgeai.bench/1" and {r["runtime"] for r in d["results"]} == {"onnxruntime", "ai-edge-litert"}


def test_lstm_fused_vs_unrolled_is_reported(tmp_path):
    unrolled = edgeai.export(factory("lstm"), tmp_path / "u", inputs=["rows:batch,seq=5,6"], format="tflite",
                             summary=SummaryConfig(bench=False)).artifacts[0]
    fused = edgeai.export(factory("lstm"), tmp_path / "f", inputs=["rows:batch,seq=5,6"], format="tflite",
                          export={"fuse_lstm": True}, summary=SummaryConfig(bench=False)).artifacts[0]
    assert unrolled.details["unrolled_rnn"] and any("unrolled" in n for n in unrolled.notes)
    assert not fused.details["unrolled_rnn"]
    assert fused.details["fused_rnn_ops"].get("UNIDIRECTIONAL_SEQUENCE_LSTM") == 1
    assert fused.details["op_count"] < unrolled.details["op_count"] / 5
    assert fused.parity["passed"] and unrolled.parity["passed"]
    assert Manifest.read(tmp_path / "f").get().details["stateful"]
