"""Accuracy measured where it runs: with --device, the budget is judged on outputs computed on the device."""
from __future__ import annotations

import json
import os
import stat

import numpy as np
import pytest

from devicekit import SSH_HOST
from test_devices import make_wide_mlp, sshd, venv_python  # noqa: F401  (module fixtures: the device venv, sshd)
from test_optimize_search import FakeLab, by_id, config

from edgeai.bench import ssh_run
from edgeai.bench.devices import DeviceError
from edgeai.fsutil import sha256_file
from edgeai.optimize.cache import Cache
from edgeai.optimize.device_accuracy import stable_npz
from edgeai.optimize.report import candidate_dict
from edgeai.optimize.search import Search

DEVICE = f"ssh://{SSH_HOST}"


# ---- the search's rule, on a deterministic lab --------------------------------------------------

class DeviceLab(FakeLab):
    """FakeLab whose device gives its own metric per candidate (a table), or an error."""

    def __init__(self, on_device, **kw):
        super().__init__(**kw)
        self.on_device, self.scored = on_device, []

    def score_on_device(self, folders):
        self.scored.append(sorted(folders))
        out = {}
        for cid in folders:
            got = self.on_device.get(cid, self.metric.get(cid, 98.0))
            out[cid] = {"error": got} if isinstance(got, str) else {"metric": "top1", "value": got}
        return out


def device_search(lab, tmp_path, **kw):
    return Search(config(device="ssh://board", **kw), lab, Cache(tmp_path / "cache")).run()


def test_a_candidate_within_the_budget_here_but_not_on_the_device_is_rejected_naming_both(tmp_path):
    lab = DeviceLab(on_device={"onnx/fp32": 98.0, "onnx/int8-static": 95.0, "onnx/int8-dynamic": 97.6},
                    latency={"onnx/int8-static": 4.0, "onnx/int8-dynamic": 6.0},
                    metric={"onnx/fp32": 98.0, "onnx/int8-static": 97.9, "onnx/int8-dynamic": 97.8})
    result = device_search(lab, tmp_path)
    rows = by_id(result)
    static = rows["onnx/int8-static"]
    assert static.status == "rejected" and static.drop == pytest.approx(3.0) and static.timing is None
    assert static.reason == ("top1 drop 3 on ssh://board (95, FP32 98) > --max-drop 1; on this machine drop 0.1 "
                             "(97.9), within it")
    # the next fastest is judged on the device's numbers too, and wins
    assert result.chosen.id == "onnx/int8-dynamic" and rows["onnx/int8-dynamic"].drop == pytest.approx(0.4)
    c = candidate_dict(static, "ssh://board")
    assert (c["value"], c["host_value"], c["device_value"], c["accuracy_measured_on"]) == (95.0, 97.9, 95.0,
                                                                                          "ssh://board")
    # each build's candidates were scored there once, the baseline with them
    assert lab.scored[0] == ["onnx/fp32", "onnx/int8-dynamic", "onnx/int8-static"]
    # scores are cached: a second run asks the device nothing
    lab2 = DeviceLab(on_device={}, **{k: getattr(lab, k) for k in ("latency", "metric")})
    again = device_search(lab2, tmp_path)
    assert lab2.scored == [] and by_id(again)["onnx/int8-static"].device.value == 95.0


def test_a_candidate_the_device_cannot_run_is_rejected_with_the_reason_and_the_search_goes_on(tmp_path):
    why = "onnxruntime crashed (signal SIGILL) while running 'int8-static.onnx'"
    lab = DeviceLab(on_device={"onnx/int8-static": why}, latency={"onnx/int8-static": 4.0, "onnx/int8-dynamic": 6.0},
                    metric={})
    rows = by_id(device_search(lab, tmp_path))
    assert rows["onnx/int8-static"].status == "rejected"
    assert rows["onnx/int8-static"].reason == f"cannot run on ssh://board: {why}"
    assert rows["onnx/int8-dynamic"].status == "chosen"
    assert candidate_dict(rows["onnx/int8-static"], "ssh://board")["accuracy_measured_on"] == "host"
    # a failure there is not cached: the next run asks again
    lab2 = DeviceLab(on_device={}, latency=lab.latency, metric={})
    device_search(lab2, tmp_path)
    assert lab2.scored == [["onnx/int8-static"]]


def test_a_signal_while_scoring_on_the_device_leaves_those_candidates_unjudged_and_never_chosen(tmp_path):
    from edgeai.optimize.stop import Stopped

    class SignalLab(DeviceLab):
        def score_on_device(self, folders):
            if any("prune" in cid for cid in folders):
                raise Stopped("SIGINT")
            return super().score_on_device(folders)

    lab = SignalLab(on_device={}, latency={"onnx/int8-static": 5.0, "onnx/prune0.5/fp32": 2.0}, metric={})
    result = device_search(lab, tmp_path, prune_ratios=(0.5,))
    pruned = by_id(result)["onnx/prune0.5/fp32"]
    assert result.stopped == "SIGINT" and result.chosen.id == "onnx/int8-static"
    assert pruned.status == "skipped" and pruned.timing is None
    assert pruned.reason == "stopped before its accuracy was measured on ssh://board"


def test_a_baseline_the_device_cannot_run_is_a_one_line_error(tmp_path):
    lab = DeviceLab(on_device={"onnx/fp32": "onnxruntime cannot load 'fp32.onnx': opset 99"}, latency={}, metric={})
    with pytest.raises(DeviceError, match=r"^the FP32 baseline onnx/fp32 cannot run on ssh://board: onnxruntime"):
        device_search(lab, tmp_path)


def test_without_a_device_the_numbers_are_this_machines_and_say_so(tmp_path):
    lab = FakeLab(latency={"onnx/int8-static": 4.0}, metric={"onnx/int8-static": 97.5})
    rows = by_id(Search(config(), lab, Cache(tmp_path / "cache")).run())
    c = candidate_dict(rows["onnx/int8-static"])
    assert (c["value"], c["host_value"], c["device_value"], c["accuracy_measured_on"]) == (97.5, 97.5, None, "host")


def test_eval_inputs_npz_bytes_depend_on_the_arrays_only(tmp_path):
    x = {"b": np.arange(6, dtype=np.float32).reshape(2, 3), "a": np.ones((2, 1), np.int64)}
    one, two = stable_npz(x, tmp_path / "1.npz"), stable_npz(dict(reversed(x.items())), tmp_path / "2.npz")
    os.utime(two, (0, 0))
    assert one.read_bytes() == two.read_bytes()   # the device keeps one copy by sha256, across runs
    with np.load(one) as z:
        assert sorted(z.files) == ["a", "b"] and np.array_equal(z["b"], x["b"])


# ---- the device's agent, run here on a local "device cache" ---------------------------------------

def _two_output_folder(folder):
    """An export folder whose model maps x[batch, 3] to relu(x) and -x."""
    import onnx
    from onnx import TensorProto, helper

    from edgeai.manifest import ArtifactEntry, Manifest

    folder.mkdir()
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["relu"]), helper.make_node("Neg", ["x"], ["neg"])],
                              "two", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3])],
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch", 3])
                               for n in ("relu", "neg")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, folder / "fp32.onnx")
    entry = ArtifactEntry(name="fp32", file="fp32.onnx", format="onnx", precision="fp32",
                          sha256=sha256_file(folder / "fp32.onnx"), size_bytes=(folder / "fp32.onnx").stat().st_size,
                          inputs=[{"name": "x", "shape": ["batch", 3], "dtype": "float32"}],
                          outputs=[{"name": n, "shape": ["batch", 3]} for n in ("relu", "neg")])
    Manifest(source={"spec": "test"}, artifacts=[entry], versions={}, created="now").write(folder)
    return folder


def run_here(cache, jobs, threads=1, first_only=False):
    """outputs_over_ssh without ssh: the device agent's run_job on a cache folder here, files staged as scp would."""
    from edgeai.bench.run_agent import run_job
    from edgeai.bench.ssh import target_specs
    from edgeai.bench.ssh_run import _decoded

    blobs = {}
    specs = target_specs([t for t, _ in jobs], blobs)
    for spec, (_, inputs) in zip(specs, jobs):
        spec["inputs"] = sha256_file(inputs)
        blobs[spec["inputs"]] = inputs
    incoming = cache / "incoming"
    (cache / "blobs").mkdir(parents=True, exist_ok=True)
    incoming.mkdir()
    for sha, path in blobs.items():
        (incoming / sha).write_bytes(path.read_bytes())
    job = {"cache": str(cache), "incoming": str(incoming), "threads": threads, "first_only": first_only,
           "targets": specs}
    return [_decoded(r) for r in json.loads(json.dumps(run_job(job)))["results"]]


X = np.array([[-1.0, 0.5, 2.0], [3.0, -4.0, 0.0]], np.float32)


def test_the_device_agent_returns_the_outputs_asked_for_and_one_line_errors_without_its_cache_path(tmp_path):
    from edgeai.bench.targets import expand_targets

    target = expand_targets([_two_output_folder(tmp_path / "export")])[0]
    good, bad = stable_npz({"x": X}, tmp_path / "good.npz"), stable_npz({"x": X[:, :2]}, tmp_path / "bad.npz")
    every = run_here(tmp_path / "cache", [(target, good), (target, bad)])
    assert list(every[0]["outputs"]) == ["relu", "neg"]
    assert np.array_equal(every[0]["outputs"]["relu"], np.maximum(X, 0))
    assert np.array_equal(every[0]["outputs"]["neg"], -X)
    assert every[1] == {"error": "input 'x' has shape 2x2, model wants batchx3"}   # that target only, in one line
    first = run_here(tmp_path / "cache2", [(target, good)], first_only=True)
    assert list(first[0]["outputs"]) == ["relu"]


def test_device_outputs_are_scored_here_by_top1_with_labels_or_the_users_metric_on_every_output(tmp_path,
                                                                                               monkeypatch):
    from edgeai.optimize.device_accuracy import DeviceScorer

    folder = str(_two_output_folder(tmp_path / "export"))
    asked = []

    def here(device, jobs, threads=None, first_only=False):
        asked.append(first_only)
        return run_here(tmp_path / f"cache{len(asked)}", jobs, threads, first_only)
    monkeypatch.setattr(ssh_run, "outputs_over_ssh", here)
    feeds = {"x": X, "labels": np.array([2, 1])}   # argmax(relu(x)) is [2, 0]: one of two right
    assert DeviceScorer(None, feeds, None, None, 1).score({"c": folder}) == {"c": {"metric": "top1", "value": 50.0}}
    (tmp_path / "metric.py").write_text("def neg_total(outputs, labels):\n    return float(outputs['neg'].sum())\n")
    scorer = DeviceScorer(None, feeds, None, f"{tmp_path / 'metric.py'}:neg_total", 1)
    assert scorer.score({"c": folder}) == {"c": {"metric": "neg_total", "value": pytest.approx(-float(X.sum()))}}
    assert asked == [True, False]   # top-1 brings back the first output only; a user metric every output


# ---- on a real ssh device (sshd on 127.0.0.1, the torch-free device venv) ------------------------

# On the "device" only: its onnxruntime computes INT8 models differently. int8-dynamic's outputs get
# noise of half their spread (a device whose INT8 kernels are wrong), int8-static aborts when run.
SITECUSTOMIZE = '''
import os
from pathlib import Path
import numpy as np
import onnxruntime as ort

_init, _run = ort.InferenceSession.__init__, ort.InferenceSession.run

def __init__(self, path, *args, **kwargs):
    self._edgeai_test_name = Path(str(path)).name
    _init(self, path, *args, **kwargs)

def run(self, names, feeds, *args, **kwargs):
    name = getattr(self, "_edgeai_test_name", "")
    if "int8-static" in name:
        os.abort()
    out = _run(self, names, feeds, *args, **kwargs)
    if "int8-dynamic" in name:
        rng = np.random.default_rng(0)
        out = [o + (0.5 * o.std() * rng.standard_normal(o.shape)).astype(o.dtype) for o in out]
    return out

ort.InferenceSession.__init__, ort.InferenceSession.run = __init__, run
'''


def _optimize(cli, tmp_path, sshd, python, *extra):  # noqa: F811
    model = make_wide_mlp(tmp_path / "wide.onnx")
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "eval.npz", x=rng.standard_normal((32, 256)).astype(np.float32))
    np.savez(tmp_path / "calib.npz", x=rng.standard_normal((16, 256)).astype(np.float32))
    out = tmp_path / "opt"
    code, _, err = cli("optimize", model, "--eval-data", tmp_path / "eval.npz", "--max-drop", "0.05",
                       "--rounds", "1", "--min-seconds", "0.05", "--prune-ratios", "", "-o", out, "-q",
                       "--device", DEVICE, "--ssh-config", sshd.ssh_config, "--device-python", python, *extra)
    assert code == 0, err
    return out, json.loads((out / "report.json").read_text())


def test_optimize_on_an_ssh_device_scores_every_candidate_there_and_says_so(venv_python, sshd, tmp_path, cli,
                                                                             monkeypatch):  # noqa: F811
    out, report = _optimize(cli, tmp_path, sshd, venv_python)
    rows = {c["id"]: c for c in report["candidates"]}
    scored = [rows["onnx/fp32"], rows["onnx/int8-dynamic"]]
    for c in scored:
        assert c["accuracy_measured_on"] == DEVICE and c["metric"] == "cosine"
        assert c["value"] == c["device_value"] and c["device_value"] > 0.99
    # the same onnxruntime there: FP32 gives this machine's outputs, to float rounding
    assert rows["onnx/fp32"]["device_value"] == pytest.approx(rows["onnx/fp32"]["host_value"], abs=1e-6)
    assert rows["onnx/int8-dynamic"]["drop"] == pytest.approx(
        rows["onnx/fp32"]["device_value"] - rows["onnx/int8-dynamic"]["device_value"])
    # the evaluation inputs went to the device's blob store, as the artifacts did
    from edgeai.data import load_feeds
    from edgeai.specs import TensorSpec
    x = load_feeds(str(tmp_path / "eval.npz"), [TensorSpec("x", ("batch", 256), "float32")], what="eval")
    sha = sha256_file(stable_npz(x, tmp_path / "x.npz"))
    assert (sshd.cache / "blobs" / sha).is_file()
    md, html = (out / "report.md").read_text(), (out / "report.html").read_text()
    assert f"Accuracy measured on {DEVICE}" in md and f"Accuracy measured on {DEVICE}" in html
    assert f"(host {rows['onnx/int8-dynamic']['host_value']:.4g})" in md
    from edgeai.manifest import Manifest
    assert Manifest.read(out / "best").source["optimize"]["accuracy"]["accuracy_measured_on"] == DEVICE
    # a second run takes the device's scores from the cache: nothing is run there for accuracy
    monkeypatch.setattr(ssh_run, "outputs_over_ssh", lambda *a, **k: pytest.fail("scored on the device again"))
    _, again = _optimize(cli, tmp_path, sshd, venv_python)
    assert {c["id"]: c["device_value"] for c in again["candidates"]} == {i: c["device_value"] for i, c in rows.items()}


def test_optimize_rejects_what_the_device_computes_wrong_or_cannot_run(venv_python, sshd, tmp_path, cli):  # noqa: F811
    site = tmp_path / "device-site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
    wrapper = tmp_path / "device-python"
    wrapper.write_text(f'#!/bin/sh\nPYTHONPATH="{site}" exec "{venv_python}" "$@"\n')
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR)
    out, report = _optimize(cli, tmp_path, sshd, wrapper, "--calibration", tmp_path / "calib.npz")
    rows = {c["id"]: c for c in report["candidates"]}
    dyn, static = rows["onnx/int8-dynamic"], rows["onnx/int8-static"]
    # within the budget here, not there: rejected on the device's numbers, both named
    assert dyn["host_value"] > 0.999 and dyn["device_value"] < 0.95 and dyn["accuracy_measured_on"] == DEVICE
    assert dyn["status"] == "rejected" and dyn["rounds"] is None
    assert dyn["reason"].startswith(f"cosine drop {dyn['drop']:.4g} on {DEVICE} ({dyn['device_value']:.6g}, FP32 ")
    assert dyn["reason"].endswith(f"on this machine drop {rows['onnx/fp32']['host_value'] - dyn['host_value']:.4g} "
                                  f"({dyn['host_value']:.6g}), within it")
    # the device's runtime dies on it: rejected with the reason, in one line; the search went on
    assert static["status"] == "rejected" and static["accuracy_measured_on"] == "host"
    assert static["reason"].startswith(f"cannot run on {DEVICE}: onnxruntime crashed (signal SIGABRT)")
    assert "while running 'model.int8-static.onnx'" in static["reason"]   # its name, not the device's cache path
    assert "\n" not in static["reason"] and str(sshd.cache) not in static["reason"]
    assert report["chosen"] == "onnx/fp32" and rows["onnx/fp32"]["device_value"] > 0.999
