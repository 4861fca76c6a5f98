"""`edgeai eval` says what it compares against, and refuses to compare a lone artifact with itself (optimize's best/)."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from test_bench import make_mlp, write_export_folder

from edgeai.manifest import Manifest


@pytest.fixture()
def folder(tmp_path):
    return write_export_folder(tmp_path / "export", (make_mlp(tmp_path / "a.onnx", 32),
                                                     make_mlp(tmp_path / "b.onnx", 64, seed=1)))


def ort_outputs(path, x) -> np.ndarray:
    import onnxruntime as ort
    return ort.InferenceSession(str(path)).run(None, {"x": x})[0]


def cosine(a, b) -> float:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return float(np.mean((a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))))


def single(folder, tmp_path, name: str, source: dict | None = None):
    """A folder holding only artifact `name` of `folder`, as optimize's best/ does."""
    m = Manifest.read(folder)
    entry = m.get(name)
    out = tmp_path / f"only-{name}"
    out.mkdir()
    shutil.copy(folder / entry.file, out / entry.file)
    Manifest(source=source or m.source, artifacts=[entry], versions={}, created="now").write(out)
    return out


def test_eval_says_it_compares_with_the_first_artifact_or_the_labels(cli, folder, tmp_path):
    x = np.random.default_rng(0).standard_normal((40, 16)).astype(np.float32)
    np.savez(tmp_path / "d.npz", x=x)
    code, out, err = cli("eval", folder, "--eval-data", tmp_path / "d.npz", "--json", tmp_path / "e.json")
    assert code == 0, err
    assert "compared with: the first artifact, fp32 (cosine of the first output)" in out
    results = json.loads((tmp_path / "e.json").read_text())["results"]
    assert results[1]["value"] == pytest.approx(cosine(ort_outputs(folder / "wide.onnx", x),
                                                       ort_outputs(folder / "fp32.onnx", x)), abs=1e-6)
    assert results[1]["compared_with"].startswith("the first artifact, fp32")

    labels = np.argmax(ort_outputs(folder / "fp32.onnx", x), 1)
    np.savez(tmp_path / "l.npz", x=x, labels=labels)
    code, out, err = cli("eval", f"{folder}@fp32", "--eval-data", tmp_path / "l.npz")
    assert code == 0 and "compared with: the data's 'labels' (top-1 accuracy in points)" in out, err
    assert "100.00" in out
    code, out, err = cli("eval", folder, "--eval-data", tmp_path / "l.npz", "--reference", folder / "wide.onnx")
    assert code == 0 and "(top-1 accuracy in points); --reference is not used" in out, err


def test_a_lone_artifact_without_labels_is_refused_not_compared_with_itself(cli, folder, tmp_path):
    x = np.random.default_rng(1).standard_normal((8, 16)).astype(np.float32)
    np.savez(tmp_path / "d.npz", x=x)
    code, out, err = cli("eval", single(folder, tmp_path, "wide"), "--eval-data", tmp_path / "d.npz")
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "holds one fp32 artifact (wide)" in err and "comparing it with itself would say nothing" in err
    assert "--metric FILE.py:FUNC" in err and "--reference FP32_MODEL" in err
    code, _, err = cli("eval", f"{folder}@wide", "--eval-data", tmp_path / "d.npz")
    assert code == 2 and "comparing it with itself" in err


def test_reference_flag_and_the_digest_optimize_recorded(cli, folder, tmp_path):
    from edgeai.optimize.builder import outputs_digest

    rng = np.random.default_rng(2)
    x, other = (rng.standard_normal((70, 16)).astype(np.float32) for _ in range(2))   # > one batch of 64
    np.savez(tmp_path / "d.npz", x=x)
    np.savez(tmp_path / "other.npz", x=other)
    recorded = {"optimize": {"chosen": "onnx/wide", "reference": {
        "artifact": "onnx/fp32", "outputs_sha256": outputs_digest({"y": ort_outputs(folder / "fp32.onnx", x)})}}}
    best = single(folder, tmp_path, "wide", source=recorded)
    code, _, err = cli("eval", best, "--eval-data", tmp_path / "d.npz")
    assert code == 2 and "edgeai optimize compared it with onnx/fp32" in err, err

    code, out, err = cli("eval", best, "--eval-data", tmp_path / "d.npz", "--reference", folder / "fp32.onnx",
                         "--json", tmp_path / "e.json")
    assert code == 0, err
    assert f"the outputs of --reference {folder / 'fp32.onnx'}" in out
    assert "they match the FP32 reference outputs edgeai optimize recorded" in " ".join(out.split())
    value = json.loads((tmp_path / "e.json").read_text())["results"][0]["value"]
    assert value == pytest.approx(cosine(ort_outputs(folder / "wide.onnx", x), ort_outputs(folder / "fp32.onnx", x)),
                                  abs=1e-6)
    assert value < 0.9   # two different random networks: the reference is not the artifact itself

    code, out, err = cli("eval", best, "--eval-data", tmp_path / "other.npz", "--reference", folder / "fp32.onnx")
    assert code == 0 and "they differ from the FP32 reference outputs" in " ".join(out.split()), err
