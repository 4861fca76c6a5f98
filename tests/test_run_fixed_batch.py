"""`edgeai run` on a model whose batch is fixed at 1 (TFLite, a fixed-batch export) runs a file of several
samples one at a time and stacks the outputs, as a batched model would return them."""
from __future__ import annotations

import numpy as np


def _fixed_batch_onnx(path):
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    w = numpy_helper.from_array(np.arange(12, dtype=np.float32).reshape(4, 3) / 10, "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])], [w])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9), path)
    return path


def test_run_feeds_a_batch_1_model_one_sample_at_a_time(cli, tmp_path):
    model = _fixed_batch_onnx(tmp_path / "m.onnx")
    x = np.random.default_rng(0).standard_normal((5, 4)).astype(np.float32)
    np.savez(tmp_path / "x.npz", x=x)
    code, out, err = cli("run", model, "--input-data", tmp_path / "x.npz", "-o", tmp_path / "y.npz")
    assert code == 0, err
    y = np.load(tmp_path / "y.npz")["y"]
    np.testing.assert_allclose(y, x @ (np.arange(12, dtype=np.float32).reshape(4, 3) / 10), rtol=1e-6)
    assert "shape (5, 3)" in out and "one at a time" in err
