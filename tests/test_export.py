"""Export -> verify -> manifest for every model source kind, with dynamic shapes and fallbacks."""
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

import edgeai
from edgeai.errors import ExportError, ModelLoadError
from edgeai.fsutil import sha256_file
from edgeai.manifest import Manifest
from edgeai.runtime import load

from conftest import factory
import models


def _only(outcome):
    assert len(outcome.artifacts) == 1
    return outcome.artifacts[0]


def test_cnn_factory_exports_verified_onnx_with_complete_manifest(tmp_path):
    out = edgeai.export(factory("cnn"), tmp_path, inputs=["image:batch,3,16,16"])
    a = _only(out)
    model_file = tmp_path / a.file
    assert a.format == "onnx" and a.precision == "fp32"
    assert a.sha256 == sha256_file(model_file) and a.size_bytes == model_file.stat().st_size
    assert a.parity["passed"] and a.parity["max_abs"] < 1e-4
    # example shape + a second batch size were both compared
    assert [c["dims"]["batch"] for c in a.parity["checks"]] == [2, 5]
    assert a.inputs == [{"name": "image", "shape": ["batch", 3, 16, 16], "dtype": "float32"}]
    assert a.exporter.startswith("torch.onnx") and a.steps[0]["type"] == "export.onnx"
    m = json.loads((tmp_path / "manifest.json").read_text())
    assert m["schema"] == "edgeai.manifest/2" and m["artifacts"][0]["digests"] == {a.file: a.sha256}
    assert {"edgeai", "torch", "onnx", "onnxruntime"} <= set(m["versions"])
    assert Manifest.read(tmp_path).artifacts[0].sha256 == a.sha256


def test_lstm_dynamic_seq_is_checked_at_a_second_length(tmp_path):
    out = edgeai.export(factory("lstm"), tmp_path, inputs=["rows:batch,seq=7,6"])
    a = _only(out)
    seqs = sorted({c["dims"]["seq"] for c in a.parity["checks"]})
    assert seqs == [7, 10]
    sess = load(tmp_path)
    x = np.random.default_rng(1).standard_normal((3, 13, 6)).astype(np.float32)
    with torch.no_grad():
        ref = models.lstm()(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(sess.run({"rows": x})["output"], ref, atol=1e-5)


def test_multi_input_integer_transformer_with_dict_outputs(tmp_path):
    out = edgeai.export(factory("text_transformer"), tmp_path,
                        inputs=["input_ids:batch,seq=6:int64", "attention_mask:batch,seq:int64"])
    a = _only(out)
    assert [o["name"] for o in a.outputs] == ["logits", "hidden"]
    assert [i["dtype"] for i in a.inputs] == ["int64", "int64"]
    assert len(a.parity["checks"]) == 3 and a.parity["passed"]


def test_example_inputs_npz_sets_order_and_dynamic_batch(tmp_path):
    ids = np.random.default_rng(0).integers(0, 50, size=(3, 5))
    mask = np.ones((3, 5), dtype=np.int64)
    np.savez(tmp_path / "ex.npz", input_ids=ids, attention_mask=mask)
    out = edgeai.export(factory("text_transformer"), tmp_path / "o", example_inputs=str(tmp_path / "ex.npz"))
    a = _only(out)
    assert [i["shape"] for i in a.inputs] == [["batch", 5], ["batch", 5]]
    assert [c["dims"] for c in a.parity["checks"]] == [{"batch": 3}, {"batch": 6}]


def test_dimension_frozen_by_either_exporter_fails_loudly(tmp_path):
    # TorchScript keeps the input dynamic but bakes batch=2 into the graph: caught at batch=5
    with pytest.raises(ExportError, match="batch=5"):
        edgeai.export(factory("frozen_batch"), tmp_path / "ts", inputs=["x:batch,4"],
                      export={"exporter": "torchscript"})
    # torch.export specialises the input itself: caught from the artifact's input shape
    with pytest.raises(ExportError, match=r"froze dynamic dim\(s\) \{'batch': 2\}"):
        edgeai.export(factory("frozen_batch"), tmp_path / "dy", inputs=["x:batch,4"],
                      export={"exporter": "dynamo"})
    assert not (tmp_path / "ts" / "manifest.json").exists() and not (tmp_path / "dy" / "manifest.json").exists()


def test_falls_back_to_torchscript_and_records_why(tmp_path):
    np.savez(tmp_path / "ex.npz", x=np.abs(np.random.default_rng(0).standard_normal((2, 3))).astype(np.float32) + 0.1)
    a = _only(edgeai.export(factory("data_dependent"), tmp_path / "o", example_inputs=str(tmp_path / "ex.npz"),
                            export={"allow_trace_branches": True}))  # its `if` on values: tests/test_security_code.py
    assert "TorchScript" in a.exporter
    assert any("fell back" in n and "dynamo" in n for n in a.notes)


def test_torchscript_pt2_and_state_dict_sources(tmp_path):
    m = models.cnn()
    x = torch.randn(2, 3, 16, 16)
    torch.jit.save(torch.jit.trace(m, x), tmp_path / "m.ts")
    torch.export.save(torch.export.export(m, (x,)), tmp_path / "m.pt2")
    torch.save(m.state_dict(), tmp_path / "sd.pt")
    with torch.no_grad():
        ref = m(x).numpy()
    for spec, extra in ((tmp_path / "m.ts", {}), (tmp_path / "m.pt2", {}),
                        (tmp_path / "sd.pt", {"arch": factory("cnn")})):
        out_dir = tmp_path / f"out_{spec.stem}_{spec.suffix[1:]}"
        # the .pt2 was exported with a static batch of 2
        inputs = ["image:2,3,16,16"] if spec.suffix == ".pt2" else ["image:batch,3,16,16"]
        edgeai.export(str(spec), out_dir, inputs=inputs, **extra)
        got = load(out_dir).run({"image": x.numpy()})["output"]
        np.testing.assert_allclose(got, ref, atol=1e-4, err_msg=str(spec))


def test_pickled_module_needs_trust_flag(tmp_path):
    torch.save(models.cnn(), tmp_path / "whole.pt")
    with pytest.raises(ModelLoadError, match="--trust-pickle"):
        edgeai.export(str(tmp_path / "whole.pt"), tmp_path / "o", inputs=["image:batch,3,16,16"])
    a = _only(edgeai.export(str(tmp_path / "whole.pt"), tmp_path / "o", inputs=["image:batch,3,16,16"],
                            trust_pickle=True))
    assert a.parity["passed"]


def test_existing_onnx_is_reverified_and_input_file_untouched(tmp_path):
    first = edgeai.export(factory("lstm"), tmp_path / "a", inputs=["rows:batch,seq=4,6"])
    src = tmp_path / "a" / first.artifacts[0].file
    before = sha256_file(src)
    a = _only(edgeai.export(str(src), tmp_path / "b"))
    assert sha256_file(src) == before
    assert a.exporter == "existing ONNX file" and a.parity["passed"]
    assert "without graph optimizations" in a.parity["reference"]
    assert len(a.parity["checks"]) == 3  # batch and seq kept their names


def test_reexport_replaces_files_atomically_and_failed_export_keeps_old_output(tmp_path):
    edgeai.export(factory("cnn"), tmp_path, inputs=["image:batch,3,16,16"])
    good = (tmp_path / "manifest.json").read_text()
    with pytest.raises(ExportError):
        edgeai.export(factory("frozen_batch"), tmp_path, inputs=["x:batch,4"], export={"exporter": "torchscript"})
    assert (tmp_path / "manifest.json").read_text() == good
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".edgeai-staging")]


def test_import_edgeai_does_not_import_torch():
    code = "import sys, edgeai, edgeai.runtime; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False"


def test_bench_of_an_export_folder_uses_the_exported_dim_sizes(tmp_path):
    from edgeai.bench import bench
    edgeai.export(factory("lstm"), tmp_path, inputs=["rows:batch,seq=7,6"], summary=edgeai.recipe.SummaryConfig(bench=False))
    assert Manifest.read(tmp_path).source["example_dims"] == {"batch": 2, "seq": 7}
    report = bench([str(tmp_path)], runs=3, warmup=0, isolate=False)
    assert report.results[0].inputs[0]["shape"] == [1, 7, 6]
    report = bench([str(tmp_path)], runs=3, warmup=0, isolate=False, batch=4, dims={"seq": 11})
    assert report.results[0].inputs[0]["shape"] == [4, 11, 6]


def test_external_weights_are_part_of_the_artifact(tmp_path):
    a = _only(edgeai.export(factory("wide_mlp"), tmp_path, inputs=["x:batch,64"],
                            export={"exporter": "dynamo", "external_data": True},
                            summary=edgeai.recipe.SummaryConfig(bench=False)))
    assert a.extra_files == ["model.onnx.data"]
    assert a.size_bytes == sum((tmp_path / f).stat().st_size for f in [a.file, *a.extra_files])
    assert (tmp_path / "model.onnx").stat().st_size < 0.1 * a.size_bytes  # the weights live beside it
    x = np.random.default_rng(0).standard_normal((3, 64)).astype(np.float32)
    with torch.no_grad():
        ref = models.wide_mlp()(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(load(tmp_path).run({"x": x})["output"], ref, atol=1e-4)
    # re-exporting the folder's ONNX file carries its external data along
    b = _only(edgeai.export(str(tmp_path / "model.onnx"), tmp_path / "again", summary=edgeai.recipe.SummaryConfig(bench=False)))
    assert b.extra_files == ["model.onnx.data"] and b.parity["passed"]
