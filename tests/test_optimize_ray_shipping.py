"""Optimize's Ray jobs carry no path of the driver: input files go as bytes (once each), artifacts come back as
bytes and land only inside the candidate's folder, whatever names a buggy or hostile worker sends."""
import hashlib
import json
import pickle
from pathlib import Path

import numpy as np
import pytest

from edgeai.optimize.shipping import Shipper, build_shipped, safe_parts, unpack


class Store:
    """A stand-in for Ray's object store: put returns a token, get returns the bytes."""

    def __init__(self):
        self.blobs = {}

    def put(self, blob):
        ref = f"ref-{len(self.blobs)}"
        self.blobs[ref] = blob
        return ref

    def get(self, refs):
        return [self.blobs[r] for r in refs]


MODEL_PY = """import torch
from torch import nn


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(6, 64), nn.ReLU(), nn.Linear(64, 3))

    def forward(self, x):
        return self.net(x)


def make():
    torch.manual_seed(0)
    return MLP().eval()
"""

METRIC_PY = """import numpy as np


def neg_mse(outputs, labels):
    return -float(np.mean((next(iter(outputs.values())) - labels) ** 2))
"""


def driver_inputs(tmp_path, metric_py: str) -> Path:
    """The driver's inputs: a model file, a metric file, one .npz for evaluation and calibration."""
    d = tmp_path / "driver-inputs"
    d.mkdir()
    (d / "model.py").write_text(MODEL_PY)
    (d / "metric.py").write_text(metric_py)
    rng = np.random.default_rng(0)
    np.savez(d / "eval.npz", x=rng.normal(size=(16, 6)).astype(np.float32), labels=rng.normal(size=(16, 3)))
    return d


@pytest.fixture
def driver(tmp_path):
    """driver_inputs plus a .npy folder of training data."""
    d = driver_inputs(tmp_path, METRIC_PY)
    (d / "train").mkdir()
    np.save(d / "train" / "x.npy", np.random.default_rng(1).normal(size=(8, 6)).astype(np.float32))
    return d


def _job(d, tmp_path):
    recipe = {"model": f"{d}/model.py:make", "inputs": ["x:batch,6"], "format": "onnx", "export": {}, "steps": [],
              "quantize": ["int8-dynamic"], "max_drop": 1.0, "metric": f"{d}/metric.py:neg_mse",
              "data": {"eval": str(d / "eval.npz"), "calibration": str(d / "eval.npz"), "train": str(d / "train")}}
    return {"recipe": recipe, "ids": {"fp32": "onnx/fp32", "int8-dynamic": "onnx/int8-dynamic"},
            "dests": {"onnx/fp32": str(tmp_path / "dest-fp32"), "onnx/int8-dynamic": str(tmp_path / "dest-int8")},
            "work": str(tmp_path / "driver-unit"), "deadline": None, "after_distill_s": 0.0, "reference": True}


def test_a_shipped_job_names_no_driver_path_and_unpacks_to_the_workers_own_files(driver, tmp_path):
    store = Store()
    shipped, originals = Shipper(store.put).ship(_job(driver, tmp_path))
    assert str(tmp_path) not in repr(pickle.dumps(shipped)) and str(tmp_path) not in json.dumps(shipped)
    assert len(store.blobs) == 4   # model.py, metric.py, train/x.npy, and eval.npz once for two slots
    assert originals["model"] == f"{driver}/model.py" and originals["data/train"] == str(driver / "train")

    worker = tmp_path / "worker"
    worker.mkdir()
    job, paths = unpack(shipped, worker, store.get)
    recipe = job["recipe"]
    assert recipe["model"].endswith("/model.py:make") and recipe["metric"].endswith("/metric.py:neg_mse")
    for spec in (recipe["model"], recipe["metric"], *recipe["data"].values(), *job["dests"].values(), job["work"]):
        assert spec.startswith(str(worker)) and str(driver) not in spec
    local = {slot: p for p, slot in paths.items()}
    assert (worker / local["model"].split(str(worker) + "/")[1]).read_text() == MODEL_PY
    assert recipe["data"]["eval"] == recipe["data"]["calibration"]   # one copy of one file
    with np.load(recipe["data"]["eval"]) as got, np.load(driver / "eval.npz") as want:
        assert np.array_equal(got["x"], want["x"])
    assert np.array_equal(np.load(f"{recipe['data']['train']}/x.npy"), np.load(driver / "train" / "x.npy"))


def test_module_specs_and_hub_ids_travel_as_they_are(tmp_path):
    store = Store()
    job = {"recipe": {"model": "hf:org/name", "data": {"eval": "edgeai.zoo:digits_test", "calibration": None,
                                                        "train": None}, "metric": "mypkg.metrics:f"},
           "ids": {"fp32": "onnx/fp32"}}
    shipped, _ = Shipper(store.put).ship(job)
    assert shipped["recipe"] == job["recipe"] and not shipped["files"] and not store.blobs


def test_an_onnx_model_ships_with_its_external_data_an_hf_folder_whole_a_data_folder_its_npy_files(tmp_path):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    d = tmp_path / "in"
    (d / "hf-model" / "sub").mkdir(parents=True)
    (d / "hf-model" / "config.json").write_text("{}")
    (d / "hf-model" / "sub" / "tokenizer.json").write_text("{}")
    (d / "calib").mkdir()
    np.save(d / "calib" / "x.npy", np.ones((2, 4), np.float32))
    (d / "calib" / "notes.bin").write_bytes(b"\0" * 1000)   # not read by load_feeds: not shipped
    w = numpy_helper.from_array(np.ones((4, 4), np.float32), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], [w])
    onnx.save(helper.make_model(graph), str(d / "m.onnx"), save_as_external_data=True, location="m.weights",
              size_threshold=0)
    (d / "distill_metric.py").write_text(METRIC_PY)
    store = Store()
    recipe = {"model": str(d / "m.onnx"), "arch": f"hf:{d / 'hf-model'}", "data": {"calibration": str(d / "calib")},
              "steps": [{"prune": {"ratio": 0.5}}, {"distill": {"metric": f"{d}/distill_metric.py:neg_mse"}}]}
    shipped, originals = Shipper(store.put).ship({"recipe": recipe, "ids": {"fp32": "onnx/fp32"}})
    files = shipped["files"]
    assert sorted(files["model"]["entries"]) == ["m.onnx", "m.weights"]
    assert sorted(files["arch"]["entries"]) == ["hf-model/config.json", "hf-model/sub/tokenizer.json"]
    assert sorted(files["data/calibration"]["entries"]) == ["calib/x.npy"]
    assert originals["steps/1/distill/metric"] == f"{d}/distill_metric.py" and str(d) not in json.dumps(shipped)

    (tmp_path / "worker").mkdir()
    job, _ = unpack(shipped, tmp_path / "worker", store.get)
    got = job["recipe"]
    assert got["arch"].startswith(f"hf:{tmp_path / 'worker'}") and Path(got["arch"][3:], "sub", "tokenizer.json").is_file()
    assert got["steps"][1]["distill"]["metric"].endswith("/distill_metric.py:neg_mse")
    model = onnx.load(got["model"])   # its weights are found beside it
    assert np.array_equal(numpy_helper.to_array(model.graph.initializer[0]), np.ones((4, 4), np.float32))


def test_a_malformed_result_from_a_worker_fails_its_candidates_and_never_the_run(tmp_path):
    dest = tmp_path / "dest"
    dest.mkdir()
    job = {"ids": {"fp32": "onnx/fp32"}, "dests": {"onnx/fp32": str(dest)}}
    shipper = Shipper(Store().put)
    for out in (None, {"results": ["x"]}, {"results": {"onnx/fp32": {"id": "onnx/fp32", "files": [["a"]]}}},
                {"results": {"onnx/fp32": {"id": "onnx/fp32", "files": 7}}, "paths": [1]},
                {"results": {"onnx/fp32": {"id": "onnx/fp32", "value": 1.0}}}):
        r = shipper.land(out, job, {})["onnx/fp32"]
        assert r["error"] and r["transient"] and list(dest.iterdir()) == [], (out, r)


def test_a_damaged_input_is_refused_on_the_worker(driver, tmp_path):
    store = Store()
    shipped, _ = Shipper(store.put).ship(_job(driver, tmp_path))
    ref = shipped["files"]["model"]["entries"]["model.py"][1]
    store.blobs[ref] = b"import os; os.system('echo owned')"
    out = build_shipped(shipped, store.get)
    assert all("does not match its sha256" in r["error"] and r["transient"] for r in out["results"].values())


def _files(**named):
    return [[name, hashlib.sha256(blob).hexdigest(), blob] for name, blob in named.items()]


def _landed(tmp_path, files, paths=None):
    dest = tmp_path / "dest"
    dest.mkdir(exist_ok=True)
    job = {"ids": {"fp32": "onnx/fp32"}, "dests": {"onnx/fp32": str(dest)}}
    out = {"results": {"onnx/fp32": {"id": "onnx/fp32", "folder": "/worker/out/0", "size_bytes": 3, "files": files},
                       "onnx/other": {"id": "onnx/other", "folder": "/x"}},
           "paths": paths or {}}
    return Shipper(Store().put).land(out, job, {"model": "/driver/model.py"}), dest


def test_returned_artifacts_land_in_the_dest_folder_named_as_the_driver_named_its_inputs(tmp_path):
    manifest = json.dumps({"source": {"origin": "/worker/in/ab/model.py:make"}}).encode()
    files = _files(**{"model.onnx": b"onnx", "sub/tok.json": b"{}", "manifest.json": manifest})
    results, dest = _landed(tmp_path, files, {"/worker/in/ab/model.py": "model"})
    assert set(results) == {"onnx/fp32"}   # a candidate not asked for is dropped
    assert results["onnx/fp32"]["folder"] == str(dest) and "files" not in results["onnx/fp32"]
    assert (dest / "model.onnx").read_bytes() == b"onnx" and (dest / "sub" / "tok.json").read_bytes() == b"{}"
    assert json.loads((dest / "manifest.json").read_text())["source"]["origin"] == "/driver/model.py:make"


@pytest.mark.parametrize("name", ["../evil", "/tmp/evil", "a/../../evil", "", "./evil", "a\\..\\evil", "a//evil"])
def test_a_returned_name_outside_the_dest_folder_is_refused_and_nothing_is_written(tmp_path, name):
    results, dest = _landed(tmp_path, _files(**{"model.onnx": b"ok", name: b"evil"}))
    r = results["onnx/fp32"]
    assert "refused" in r["error"] and r["transient"] and "folder" not in r
    assert list(dest.iterdir()) == []   # the good file was not written either: every name is checked first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dest"]
    with pytest.raises(Exception, match="refusing"):
        safe_parts(name)


def test_a_returned_file_that_does_not_match_its_sha256_is_refused(tmp_path):
    files = _files(**{"model.onnx": b"ok"})
    files[0][2] = b"changed"
    results, dest = _landed(tmp_path, files)
    assert "sha256" in results["onnx/fp32"]["error"] and list(dest.iterdir()) == []


def test_a_link_planted_in_the_dest_folder_is_not_written_through(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "sub").symlink_to(outside)
    results, _ = _landed(tmp_path, _files(**{"sub/model.onnx": b"ok"}))
    assert "refused" in results["onnx/fp32"]["error"] and list(outside.iterdir()) == []


def test_a_shipped_build_returns_the_same_artifacts_as_a_local_one_and_leaves_no_unit_folder(driver, tmp_path,
                                                                                             monkeypatch):
    import tempfile

    from edgeai.manifest import Manifest
    from edgeai.optimize.builder import build_unit

    job = _job(driver, tmp_path)
    for dest in job["dests"].values():
        (tmp_path / dest).mkdir()
    local = build_unit(job)

    node_tmp = tmp_path / "node-tmp"
    node_tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(node_tmp))
    store = Store()
    shipped, originals = Shipper(store.put).ship(job)
    out = build_shipped(shipped, store.get)
    assert [p.name for p in node_tmp.iterdir()] == ["edgeai-ray-units"]
    assert list((node_tmp / "edgeai-ray-units").iterdir()) == []   # the worker's unit folder is gone
    landed_dests = {cid: tmp_path / f"landed-{i}" for i, cid in enumerate(job["ids"].values())}
    for d in landed_dests.values():
        d.mkdir()
    landed = Shipper(store.put).land(out, {**job, "dests": {c: str(d) for c, d in landed_dests.items()}}, originals)
    for cid, want in local.items():
        got = landed[cid]
        assert "error" not in want and "error" not in got, (want, got)
        assert (got["value"], got["metric"]) == (want["value"], want["metric"])
        assert got.get("reference_sha256") == want.get("reference_sha256")
        a, b = Manifest.read(got["folder"]), Manifest.read(want["folder"])
        assert onnx_graph(f"{got['folder']}/{a.artifacts[0].file}") == onnx_graph(f"{want['folder']}/{b.artifacts[0].file}")
        assert json.dumps(a.source) == json.dumps(b.source) and f"{driver}/model.py" in json.dumps(a.source)


def onnx_graph(path) -> bytes:
    """The graph without the exporter's per-node metadata (stack traces name the model file where it was loaded)."""
    import onnx

    model = onnx.load(str(path))
    for node in model.graph.node:
        del node.metadata_props[:]
        node.doc_string = ""
    return model.graph.SerializeToString()


def test_a_data_folder_named_dot_ships_under_its_own_name(tmp_path, monkeypatch):
    (tmp_path / "feeds").mkdir()
    np.save(tmp_path / "feeds" / "x.npy", np.zeros((2, 3), np.float32))
    monkeypatch.chdir(tmp_path / "feeds")
    store = Store()
    shipped, originals = Shipper(store.put).ship({"recipe": {"data": {"eval": "."}}, "ids": {}})
    assert list(shipped["files"]["data/eval"]["entries"]) == ["feeds/x.npy"] and originals["data/eval"] == "."
    (tmp_path / "w").mkdir()
    job, _ = unpack(shipped, tmp_path / "w", store.get)
    assert np.array_equal(np.load(Path(job["recipe"]["data"]["eval"], "x.npy")), np.zeros((2, 3), np.float32))
