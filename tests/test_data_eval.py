"""Data loading/validation (edgeai.data) and the task metric (edgeai.evaluate) on models with known outputs."""
from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from edgeai.data import iter_batches, load_feeds, split_labels  # noqa: E402
from edgeai.errors import DataError  # noqa: E402
from edgeai.evaluate import EvalResult, evaluate  # noqa: E402
from edgeai.runtime import load  # noqa: E402
from edgeai.specs import TensorSpec  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SPECS = [TensorSpec("x", ("batch", 4)), TensorSpec("ids", ("batch", "seq"), "int64")]


def matmul_model(path: Path, weight: np.ndarray, batch: int | str = "batch") -> Path:
    """y = x @ weight, built without torch: outputs are known exactly."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, weight.shape[0]])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, weight.shape[1]])
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "mm", [x], [y],
                              [numpy_helper.from_array(weight.astype(np.float32), "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.save_model(model, str(path))
    return path


def good_feeds(n=10):
    rng = np.random.default_rng(0)
    return {"x": rng.standard_normal((n, 4)).astype(np.float32), "ids": rng.integers(0, 9, (n, 5))}


# ------------------------------------------------------------------ data


def test_load_feeds_reads_npz_folder_and_callables_alike(tmp_path, monkeypatch):
    feeds = {**good_feeds(), "labels": np.arange(10)}
    np.savez(tmp_path / "d.npz", **feeds)
    folder = tmp_path / "npy"
    folder.mkdir()
    for k, v in feeds.items():
        np.save(folder / f"{k}.npy", v)
    (tmp_path / "make_data.py").write_text(textwrap.dedent("""
        import numpy as np
        def calib():
            d = dict(np.load(%r))
            return d
    """ % str(tmp_path / "d.npz")))
    monkeypatch.syspath_prepend(str(tmp_path))
    sources = [tmp_path / "d.npz", str(folder), f"{tmp_path / 'make_data.py'}:calib", "make_data:calib",
               lambda: feeds, feeds]
    for source in sources:
        got = load_feeds(source, SPECS)
        assert list(got) == ["x", "ids", "labels"], source
        for k in feeds:
            np.testing.assert_array_equal(got[k], feeds[k])


def test_load_feeds_casts_to_the_spec_dtype(tmp_path):
    feeds = good_feeds()
    got = load_feeds({"x": feeds["x"].astype(np.float64), "ids": feeds["ids"].astype(np.int32)}, SPECS)
    assert got["x"].dtype == np.float32 and got["ids"].dtype == np.int64
    got = load_feeds({"x": feeds["x"], "ids": feeds["ids"].astype(np.float32)}, SPECS)  # integral floats are fine
    assert got["ids"].dtype == np.int64


@pytest.mark.parametrize("change,message", [
    (lambda f: f["x"].__setitem__((2, 1), np.nan), r"calibration data: array 'x' has 1 NaN value;"),
    (lambda f: f["x"].__setitem__((0, 0), np.inf), r"calibration data: array 'x' has 1 Inf value;"),
    (lambda f: f.pop("ids"), r"lacks input\(s\) ids; the model needs x, ids"),
    (lambda f: f.__setitem__("x", np.zeros((10, 5), np.float32)), r"input 'x' has shape 10x5, the model wants batchx4"),
    (lambda f: f.__setitem__("x", np.zeros((10, 4, 1), np.float32)), r"input 'x' has shape 10x4x1"),
    (lambda f: f.__setitem__("ids", f["ids"][:7]), r"different numbers of samples on axis 0 \(x=10, ids=7\)"),
    (lambda f: f.__setitem__("labels", np.arange(9)), r"different numbers of samples.*labels=9"),
    (lambda f: f.__setitem__("mask", f["ids"]), r"array\(s\) mask that are not model inputs"),
    (lambda f: f.__setitem__("ids", f["ids"] + 0.5), r"input 'ids' holds non-integer floats"),
])
def test_bad_data_raises_data_error_saying_what_is_wrong(change, message):
    feeds = good_feeds()
    change(feeds)
    with pytest.raises(DataError, match=message):
        load_feeds(feeds, SPECS)


def test_too_few_calibration_samples_is_a_data_error():
    with pytest.raises(DataError, match="calibration data needs at least 8 samples, got 3"):
        load_feeds(good_feeds(3), SPECS, min_samples=8)
    assert len(load_feeds(good_feeds(8), SPECS, min_samples=8)["x"]) == 8


def test_unreadable_sources_are_data_errors(tmp_path):
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    (tmp_path / "gen.py").write_text("def make():\n    return [1, 2]\n")
    (tmp_path / "empty").mkdir()
    cases = [(tmp_path / "missing.npz", "does not exist"), (tmp_path / "bad.npz", "not a readable .npz"),
             (f"{tmp_path / 'gen.py'}:make", "returned list"), (f"{tmp_path / 'gen.py'}:nope", "no callable 'nope'"),
             (f"{tmp_path / 'nope.py'}:make", "does not exist"), ("no_such_module_xyz:make", "cannot import"),
             (str(tmp_path / "empty"), "holds no .npy files"), ("plain words", "neither an .npz")]
    for source, message in cases:
        with pytest.raises(DataError, match=message):
            load_feeds(source, SPECS)


def test_split_labels_and_iter_batches_cover_every_sample_once():
    feeds = {**good_feeds(10), "labels": np.arange(10)}
    inputs, labels = split_labels(feeds)
    assert list(inputs) == ["x", "ids"] and labels.tolist() == list(range(10))
    assert split_labels(good_feeds())[1] is None
    batches = list(iter_batches(feeds, 4))
    assert [len(b["x"]) for b in batches] == [4, 4, 2]
    assert np.concatenate([b["labels"] for b in batches]).tolist() == list(range(10))


# ------------------------------------------------------------------ evaluate


@pytest.fixture
def identity_model(tmp_path):
    return matmul_model(tmp_path / "eye.onnx", np.eye(4))


def test_evaluate_top1_counts_argmax_hits_exactly(identity_model):
    x = np.eye(4, dtype=np.float32)[[0, 1, 2, 3, 0, 1, 2, 3]] * 3 + 0.1  # argmax = row's one-hot index
    labels = np.array([0, 1, 2, 3, 0, 1, 3, 0])  # 6 of 8 right
    r = evaluate(identity_model, {"x": x}, labels=labels)
    assert (r.metric, r.value, r.n) == ("top1", 75.0, 8)
    assert evaluate(identity_model, {"x": x, "labels": labels}, batch_size=3).value == 75.0  # labels in the data


def test_evaluate_cosine_matches_the_hand_computed_value(tmp_path):
    w = np.random.default_rng(1).standard_normal((4, 6))
    model = matmul_model(tmp_path / "mm.onnx", w)
    x = np.random.default_rng(2).standard_normal((6, 4)).astype(np.float32)
    exact = x.astype(np.float64) @ w
    assert evaluate(model, {"x": x}, reference={"y": exact}).value == pytest.approx(1.0, abs=1e-6)
    flipped = exact.copy()
    flipped[:3] *= -1  # half the samples point the other way: mean cosine (3 - 3) / 6 = 0
    r = evaluate(model, {"x": x}, reference={"logits": flipped})  # name mismatch: first reference array
    assert (r.metric, r.n) == ("cosine", 6) and r.value == pytest.approx(0.0, abs=1e-6)


def test_evaluate_runs_a_fixed_batch_model_in_chunks_of_its_batch(tmp_path):
    w = np.random.default_rng(3).standard_normal((4, 3))
    x = np.random.default_rng(4).standard_normal((10, 4)).astype(np.float32)
    labels = (x @ w).argmax(-1)
    for batch in (1, 4):  # 10 samples: 10 runs of 1; 3 runs of 4, the last padded
        model = matmul_model(tmp_path / f"b{batch}.onnx", w, batch=batch)
        assert load(model).inputs[0].shape[0] == batch
        assert evaluate(model, {"x": x}, labels=labels).value == 100.0
        assert evaluate(model, {"x": x}, reference={"y": x @ w}).value == pytest.approx(1.0, abs=1e-6)


def test_evaluate_without_labels_or_reference_is_a_data_error(identity_model):
    with pytest.raises(DataError, match="needs labels"):
        evaluate(identity_model, {"x": np.ones((2, 4), np.float32)})


def test_eval_result_drop_is_positive_when_worse():
    fp32, int8 = EvalResult("top1", 91.5, 200), EvalResult("top1", 90.0, 200)
    assert int8.drop_from(fp32) == pytest.approx(1.5)
    with pytest.raises(ValueError):
        int8.drop_from(EvalResult("cosine", 1.0, 200))


def test_evaluate_does_not_import_torch(identity_model, tmp_path):
    np.savez(tmp_path / "d.npz", x=np.eye(4, dtype=np.float32), labels=np.arange(4))
    code = textwrap.dedent(f"""
        import sys
        from edgeai.evaluate import evaluate
        r = evaluate({str(identity_model)!r}, {str(tmp_path / 'd.npz')!r})
        assert r.value == 100.0, r
        bad = [m for m in ("torch", "onnx", "tensorflow") if m in sys.modules]
        assert not bad, bad
    """)
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
