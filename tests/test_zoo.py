"""The zoo's shipped reference models load, keep their recorded accuracy, and its data split is fixed."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import edgeai.zoo as zoo
from edgeai.specs import load_npz, parse_input_spec
from edgeai.zoo import data

torch = pytest.importorskip("torch")

REPO = Path(__file__).resolve().parents[1]
METRICS = json.loads(zoo.METRICS_PATH.read_text())


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _top1(model, x: np.ndarray, y: np.ndarray) -> float:
    with torch.no_grad():
        pred = model(torch.from_numpy(x)).argmax(1).numpy()
    return float((pred == y).mean())


@pytest.mark.parametrize("name", ["cnn", "lstm", "vit"])
def test_shipped_model_reaches_recorded_heldout_accuracy(name):
    ref = zoo.REFERENCE_MODELS[name]
    model = getattr(zoo, f"digits_{name}")()
    assert not model.training
    feeds = load_npz(ref.test_data)
    (input_name,) = [parse_input_spec(s).name for s in ref.inputs]
    assert sorted(feeds) == sorted([input_name, "labels"])
    acc = _top1(model, feeds[input_name], feeds["labels"])
    assert acc >= 0.95
    assert acc == pytest.approx(ref.accuracy, abs=1 / len(feeds["labels"]))
    assert ref.accuracy == METRICS[name]["accuracy"]


@pytest.mark.parametrize("name", ["cnn", "lstm", "vit"])
def test_shipped_weights_are_small_fp32_and_match_recorded_params(name):
    path = zoo.WEIGHTS_DIR / f"digits_{name}.pt"
    assert path.stat().st_size < 2 * 1024 * 1024
    state = torch.load(path, map_location="cpu", weights_only=True)
    floats = [v for v in state.values() if v.is_floating_point()]
    assert all(v.dtype == torch.float32 for v in floats)
    model = getattr(zoo, f"digits_{name}")()
    assert sum(p.numel() for p in model.parameters()) == METRICS[name]["params"]


@pytest.mark.parametrize("name", ["cnn", "vit"])
def test_image_models_map_batch_1x32x32_to_10_logits(name):
    model = getattr(zoo, f"digits_{name}")()
    (spec,) = [parse_input_spec(s) for s in zoo.REFERENCE_MODELS[name].inputs]
    assert (spec.name, spec.shape) == ("image", ("batch", 1, 32, 32))
    x, _ = data.digits("test", "image")
    with torch.no_grad():
        one = model(torch.from_numpy(x[:1]))
        five = model(torch.from_numpy(x[:5]))
    assert one.shape == (1, 10) and five.shape == (5, 10)
    torch.testing.assert_close(one, five[:1], rtol=1e-4, atol=1e-5)  # batch rows are independent


def test_lstm_accepts_two_sequence_lengths_and_full_rows_stay_accurate():
    model = zoo.digits_lstm()
    (spec,) = [parse_input_spec(s) for s in zoo.REFERENCE_MODELS["lstm"].inputs]
    assert (spec.name, spec.shape, dict(spec.example_sizes)) == ("rows", ("batch", "seq", 32), {"seq": 32})
    x, y = data.digits("test", "rows")
    with torch.no_grad():
        full = model(torch.from_numpy(x[:64]))
        short = model(torch.from_numpy(np.ascontiguousarray(x[:64, :20])))
    assert full.shape == short.shape == (64, 10)
    assert torch.isfinite(short).all()
    assert not torch.allclose(full, short)  # the extra rows are read, not ignored
    assert float((full.argmax(1).numpy() == y[:64]).mean()) >= 0.95


def test_vit_has_timm_attention_layout_that_a_pruner_can_rely_on():
    from edgeai.zoo.models import Attention

    model = zoo.digits_vit()
    attns = [m for m in model.modules() if isinstance(m, Attention)]
    assert len(attns) == 4
    for a in attns:
        d = a.proj.out_features
        assert a.num_heads == 4 and (a.qkv.in_features, a.qkv.out_features) == (d, 3 * d)
    assert model.patch_embed.proj.kernel_size == (4, 4) and model.patch_embed.proj.stride == (4, 4)
    assert model.pos_embed.shape[1] == 64  # 8x8 tokens
    for blk in model.blocks:
        assert blk.mlp.fc1.in_features == blk.mlp.fc2.out_features == d


def test_import_zoo_does_not_import_torch():
    code = ("import sys, edgeai.zoo, edgeai.zoo.data as d; "
            "assert 'torch' not in sys.modules, 'torch imported'; "
            "assert edgeai.zoo.REFERENCE_MODELS['cnn'].accuracy >= 0.95; "
            "d.test_rows(); assert 'torch' not in sys.modules, 'torch imported by data'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO,
                   env={"PYTHONPATH": str(REPO), "PATH": ""})


def test_split_is_deterministic_stratified_and_disjoint():
    x_train, y_train = data.digits("train", "image")
    x_test, y_test = data.digits("test", "image")
    assert x_train.shape == (len(y_train), 1, 32, 32) and x_train.dtype == np.float32
    assert y_train.dtype == np.int64 and len(y_train) + len(y_test) == 1797
    assert len(y_test) == pytest.approx(0.2 * 1797, abs=5)
    assert np.bincount(y_test).min() >= 35  # every class in the test split, ~20% each
    train_idx, test_idx = data.stratified_split(np.concatenate([y_train, y_test]))
    again = data.stratified_split(np.concatenate([y_train, y_test]))
    assert np.array_equal(train_idx, again[0]) and np.array_equal(test_idx, again[1])
    # no test image also appears in training (digits has a few exact duplicate images; allow those)
    train_keys = {r.tobytes() for r in x_train.reshape(len(x_train), -1)}
    shared = sum(r.tobytes() in train_keys for r in x_test.reshape(len(x_test), -1))
    assert shared <= 3
    assert x_train.min() == -0.5 and x_train.max() == 0.5


def test_rows_layout_is_the_image_read_row_by_row():
    img, y_img = data.digits("test", "image")
    rows, y_rows = data.digits("test", "rows")
    assert rows.shape == (len(y_rows), 32, 32)
    assert np.array_equal(img[:, 0], rows) and np.array_equal(y_img, y_rows)


def test_upsample_matches_torch_bilinear_without_align_corners():
    from sklearn.datasets import load_digits

    small = load_digits().images[:8]
    ref = torch.nn.functional.interpolate(torch.from_numpy(small)[:, None], size=32, mode="bilinear",
                                          align_corners=False)[:, 0].numpy()
    np.testing.assert_allclose(data.upsample(small), ref, atol=1e-12)


def test_shipped_npz_files_equal_the_data_functions():
    for kind, layout, make in [("test", "image", data.test_image), ("test", "rows", data.test_rows),
                               ("calib", "image", data.calib_image), ("calib", "rows", data.calib_rows)]:
        shipped = load_npz(data.npz_path(kind, layout))
        fresh = make()
        assert sorted(shipped) == sorted(fresh)
        for k in fresh:
            assert shipped[k].dtype == fresh[k].dtype and np.array_equal(shipped[k], fresh[k])
    calib = data.calib_image()["image"]
    assert calib.shape == (128, 1, 32, 32)
    x_train, _ = data.digits("train", "image")
    train_keys = {r.tobytes() for r in x_train.reshape(len(x_train), -1)}
    assert all(r.tobytes() in train_keys for r in calib.reshape(128, -1))  # calibration is train data


def test_reference_models_describe_files_and_callables_that_exist():
    import importlib

    assert set(zoo.REFERENCE_MODELS) == {"cnn", "lstm", "vit"}
    kinds = {k: r.kind for k, r in zoo.REFERENCE_MODELS.items()}
    assert kinds == {"cnn": "cnn", "lstm": "rnn", "vit": "transformer"}
    for ref in zoo.REFERENCE_MODELS.values():
        assert Path(ref.test_data).is_absolute() and Path(ref.test_data).is_file()
        assert Path(ref.calib_data).is_file()
        for target in (ref.factory, ref.train_data):
            module, _, fn = target.partition(":")
            assert callable(getattr(importlib.import_module(module), fn))
        feeds = importlib.import_module("edgeai.zoo.data").__dict__[ref.train_data.split(":")[1]]()
        assert set(feeds) == {parse_input_spec(ref.inputs[0]).name, "labels"}


def test_bad_split_or_layout_names_the_choices():
    from edgeai.errors import DataError

    with pytest.raises(DataError, match="train, test"):
        data.digits("val")
    with pytest.raises(DataError, match="image, rows"):
        data.digits("train", "nhwc")


def test_missing_weights_raise_model_load_error_naming_the_train_command(tmp_path, monkeypatch):
    from edgeai.errors import ModelLoadError

    monkeypatch.setattr(zoo, "WEIGHTS_DIR", tmp_path)
    with pytest.raises(ModelLoadError, match="python -m edgeai.zoo.train --model cnn"):
        zoo.digits_cnn()


@pytest.mark.slow
@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
@pytest.mark.parametrize("name", ["cnn", "lstm", "vit"])
def test_zoo_model_exports_to_onnx_with_dynamic_dims_and_matches_torch(name, dynamo, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    model = getattr(zoo, f"digits_{name}")()
    (spec,) = [parse_input_spec(s) for s in zoo.REFERENCE_MODELS[name].inputs]
    x = load_npz(zoo.REFERENCE_MODELS[name].test_data)
    dyn = {i: d for i, d in enumerate(spec.shape) if isinstance(d, str)}  # {0: "batch"[, 1: "seq"]}
    path = tmp_path / f"{name}.onnx"
    example = (torch.from_numpy(x[spec.name][:2]),)
    if dynamo:
        shapes = {spec.name: {i: torch.export.Dim(d, min=2) for i, d in dyn.items()}}
        torch.onnx.export(model, example, path, input_names=[spec.name], dynamo=True, dynamic_shapes=shapes)
    else:
        torch.onnx.export(model, example, path, input_names=[spec.name], dynamo=False,
                          dynamic_axes={spec.name: dyn}, opset_version=17)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (out,) = sess.run(None, {spec.name: x[spec.name]})
    with torch.no_grad():
        ref = model(torch.from_numpy(x[spec.name])).numpy()
    np.testing.assert_allclose(out, ref, atol=1e-4, rtol=1e-4)
    acc = float((out.argmax(1) == x["labels"]).mean())
    assert acc == pytest.approx(zoo.REFERENCE_MODELS[name].accuracy, abs=1 / len(x["labels"]))
    if name == "lstm":  # a second batch size and sequence length through the same graph
        short = np.ascontiguousarray(x[spec.name][:7, :20])
        (out,) = sess.run(None, {spec.name: short})
        with torch.no_grad():
            np.testing.assert_allclose(out, model(torch.from_numpy(short)).numpy(), atol=1e-4, rtol=1e-4)
