"""The accuracy fallback keeps in float what buys the most accuracy per byte, and says how many samples judged it."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto
from onnx import helper as oh
from onnx import numpy_helper as nh

from edgeai.evaluate import evaluate
from edgeai.runtime import load
from edgeai.steps import StepContext
from edgeai.steps.quant_fallback import quantize_with_fallback
from edgeai.steps.quantize_onnx import Int8DynamicConfig

VOCAB, DIM, SEQ = 4000, 32, 8


def _embedding_then_matmul(path, seed=0):
    """ids -> Gather(table 4000x32, 512 KB) -> + position -> MatMul(32x32, 4 KB) -> y.

    The table's per-tensor INT8 scale is set by one outlier (token 7, never fed), so its small
    features lose most precision; the MatMul reads only the two large features, where that
    error is small. The MatMul's INT8 weights lose precision to an outlier input row. Measured:
    all INT8 cosine 0.9867, table in float 0.9876, MatMul in float 0.9991; the table's own
    (local) error 0.135 ranks above the MatMul's 0.039.
    """
    rng = np.random.default_rng(seed)
    table = (0.5 * rng.standard_normal((VOCAB, DIM))).astype(np.float32)
    table[:, 1] = 0.0
    table[:, 30:] = 3 * rng.standard_normal((VOCAB, 2))
    table[7, 0] = 100.0
    w = np.zeros((DIM, DIM), np.float32)
    w[1, :] = 40.0
    w[30:] = rng.standard_normal((2, DIM))
    graph = oh.make_graph(
        [oh.make_node("Gather", ["table", "ids"], ["x0"], name="embedding"),
         oh.make_node("Add", ["x0", "position"], ["x"], name="add_position"),
         oh.make_node("MatMul", ["x", "w"], ["y"], name="matmul")], "emb_mm",
        [oh.make_tensor_value_info("ids", TensorProto.INT64, ["batch", SEQ])],
        [oh.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", SEQ, DIM])],
        [nh.from_array(table, "table"), nh.from_array(w, "w"), nh.from_array(np.zeros((SEQ, DIM), np.float32), "position")])
    onnx.save(oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)], ir_version=9), str(path))
    return path


@pytest.fixture(scope="module")
def competing(tmp_path_factory):
    src = _embedding_then_matmul(tmp_path_factory.mktemp("fb") / "m.onnx")
    feeds = {"ids": np.random.default_rng(1).integers(8, VOCAB, (64, SEQ)).astype(np.int64)}
    reference = {"y": load(src).run(feeds)["y"]}
    return src, feeds, (lambda p: evaluate(p, feeds, reference=reference).value)


def _fallback(competing, dst, samples):
    src, feeds, cosine = competing
    return quantize_with_fallback("onnx:int8-dynamic", src, dst, Int8DynamicConfig(preprocess=False),
                                  StepContext(calibration=feeds), cosine, min_metric=0.99, budget_samples=samples)


def test_fallback_keeps_the_small_matmul_not_the_embedding_table(competing, tmp_path):
    src, feeds, cosine = competing
    report, fb = _fallback(competing, tmp_path / "q.onnx", 64)
    scores = dict(fb.ranking)
    assert scores["embedding"] > scores["matmul"] > 0          # by its own error the table ranks first
    assert [u for u, _ in fb.ranking] == ["matmul", "embedding"]  # per float byte the MatMul does
    assert fb.tries[0].metric < 0.99 and fb.within
    assert fb.chosen_try.excluded == ("matmul",) and fb.chosen_try.float_bytes == DIM * DIM * 4
    assert fb.unit_bytes == {"matmul": DIM * DIM * 4, "embedding": VOCAB * DIM * 4}
    assert cosine(tmp_path / "q.onnx") >= 0.99
    table_alone = quantize_with_fallback("onnx:int8-dynamic", src, tmp_path / "t.onnx",
                                         Int8DynamicConfig(preprocess=False, exclude_nodes=("embedding",)),
                                         StepContext(calibration=feeds), cosine, min_metric=0.0)[1]
    assert table_alone.tries[0].metric < 0.99                     # the table in float would not have done
    assert any("kept 1 node(s) in FP32 (matmul) with 4.1 KB of float weights" in n for n in report.notes)
    assert not any("measured on only" in n for n in report.notes)


def test_a_budget_measured_on_few_samples_is_flagged(competing, tmp_path):
    report, fb = _fallback(competing, tmp_path / "q.onnx", 2)
    assert fb.samples == 2
    assert any("measured on only 2 sample(s) (< 32)" in n for n in report.notes)
    assert any("measured on 2 sample(s)" in n for n in report.notes if n.startswith("accuracy fallback"))
