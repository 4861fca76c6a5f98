"""Security promises: model files never run code without --trust-pickle, nothing outside OUTDIR is touched,
tampered artifacts are caught, concurrent exports cannot interleave."""
import io
import json
import os
import zipfile

import pytest

from conftest import factory

CNN_INPUT = "image:batch,3,16,16"


def _one_line_error(code, err, *needles):
    assert code == 2, err
    lines = [line for line in err.strip().splitlines() if line.startswith("edgeai: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


# ---------------------------------------------------------------------------- crafted model files

class _Payload:
    """Unpickling this creates `marker`: what an attacker's __reduce__ would do instead."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('pwned')",))


def _pickled_payload(marker) -> bytes:
    import torch
    buf = io.BytesIO()
    torch.save(_Payload(marker), buf)
    return buf.getvalue()


@pytest.fixture(scope="module")
def good_pt2(tmp_path_factory):
    import torch

    import models
    path = tmp_path_factory.mktemp("pt2") / "cnn.pt2"
    ep = torch.export.export(models.cnn(), (torch.randn(2, 3, 16, 16),),
                             dynamic_shapes={"image": {0: torch.export.Dim("batch")}})
    torch.export.save(ep, str(path))
    return path


def _craft(src, dst, patch):
    """Copy the zip archive `src` to `dst`, passing each record through patch(relative name, bytes)."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            rel = info.filename.split("/", 1)[1]
            zout.writestr(info, patch(rel, zin.read(info.filename)))
    return dst


def _pickled_sample_inputs(marker):
    return lambda rel, data: _pickled_payload(marker) if rel.startswith("data/sample_inputs/") else data


def _pickled_weight(marker):
    def patch(rel, data):  # torch.save writes tensor subclasses this way: weight_0 becomes a pickle
        if rel == "data/weights/model_weights_config.json":
            config = json.loads(data)
            for meta in config["config"].values():
                meta["use_pickle"] = meta["use_pickle"] or meta["path_name"] == "weight_0"
            return json.dumps(config).encode()
        return _pickled_payload(marker) if rel == "data/weights/weight_0" else data
    return patch


def _guard_code(marker):
    def patch(rel, data):
        if rel == "models/model.json":
            program = json.loads(data)
            program["guards_code"] = [f"open({str(marker)!r}, 'w').write('pwned') > 0"]
            return json.dumps(program).encode()
        return data
    return patch


def _sympy_expression(marker):
    def patch(rel, data):
        if rel == "models/model.json":
            text = data.decode()
            assert "positive=True" in text
            return text.replace("positive=True", f"positive=open({str(marker)!r}, 'w').write('x') > 0", 1).encode()
        return data
    return patch


def _operator_target(marker):
    def patch(rel, data):
        if rel == "models/model.json":
            text = data.decode()
            assert '"torch.ops.aten.relu.default"' in text
            return text.replace('"torch.ops.aten.relu.default"', '"torch.serialization.os.system"', 1).encode()
        return data
    return patch


CRAFTS = [_pickled_sample_inputs, _pickled_weight, _guard_code, _sympy_expression]


@pytest.mark.parametrize("craft", CRAFTS)
def test_crafted_pt2_runs_no_code_without_trust_pickle(cli, tmp_path, good_pt2, craft):
    marker = tmp_path / "marker"
    evil = _craft(good_pt2, tmp_path / "evil.pt2", craft(marker))
    code, _, err = cli("export", evil, "--input", CNN_INPUT, "-o", tmp_path / "out")
    line = _one_line_error(code, err, "--trust-pickle", "can run arbitrary code")
    assert not marker.exists(), line
    assert not (tmp_path / "out").exists()


def test_pt2_calling_a_python_function_is_refused(cli, tmp_path, good_pt2):
    evil = _craft(good_pt2, tmp_path / "evil.pt2", _operator_target(tmp_path / "marker"))
    code, _, err = cli("export", evil, "--input", CNN_INPUT, "-o", tmp_path / "out")
    _one_line_error(code, err, "torch.serialization.os.system", "not a PyTorch operator", "--trust-pickle")


@pytest.mark.parametrize("craft", CRAFTS)
def test_crafted_pt2_payload_is_real(tmp_path, good_pt2, craft):
    """Each crafted archive does run its payload when torch loads and calls it: the refusal is what stops it."""
    import torch
    marker = tmp_path / "marker"
    evil = _craft(good_pt2, tmp_path / "evil.pt2", craft(marker))
    try:
        torch.export.load(str(evil)).module()(torch.randn(2, 3, 16, 16))
    except Exception:
        pass
    assert marker.exists()


def test_normal_pt2_loads_without_trust_pickle(cli, tmp_path, good_pt2):
    code, _, err = cli("export", good_pt2, "--input", CNN_INPUT, "-o", tmp_path / "out", "--no-bench")
    assert code == 0, err
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["source"]["kind"] == "exported_program"
    assert manifest["artifacts"][0]["parity"]["passed"] is True


def test_normal_pt2_with_shape_guards_loads_without_trust_pickle(tmp_path):
    """torch writes guard code ("L['rows'].size()[1] == 7") when it specialises a dim: plain guards load."""
    import torch

    import models
    from edgeai.source import load_model
    auto = torch.export.Dim.AUTO
    ep = torch.export.export(models.lstm(), (torch.randn(2, 7, 6),), dynamic_shapes={"rows": {0: auto, 1: auto}})
    assert ep._guards_code  # the case under test: a .pt2 that carries guard code
    torch.export.save(ep, str(tmp_path / "lstm.pt2"))
    source = load_model(str(tmp_path / "lstm.pt2"), inputs=["rows:batch,7,6"])
    assert source.kind == "exported_program"
    with torch.inference_mode():
        out = source.module(torch.ones(3, 7, 6))
    assert out.shape[0] == 3


@pytest.mark.parametrize("content, needle", [
    ("random", "not a PyTorch model file"),
    ("onnx", "is an ONNX model"),
    ("empty", "is empty"),
    ("zip", "is a zip archive, but not one"),
])
def test_non_pickle_file_is_told_what_it_is_not_to_trust_pickle(cli, tmp_path, content, needle):
    path = tmp_path / "model.pt"
    if content == "random":
        path.write_bytes(os.urandom(4096))
    elif content == "onnx":
        code, _, err = cli("export", factory("cnn"), "--input", CNN_INPUT, "-o", tmp_path / "src", "--no-bench")
        assert code == 0, err
        path.write_bytes((tmp_path / "src" / "model.onnx").read_bytes())
    elif content == "empty":
        path.write_bytes(b"")
    else:
        with zipfile.ZipFile(path, "w") as z:
            z.writestr("readme.txt", "hello")
    code, _, err = cli("export", path, "--input", CNN_INPUT, "-o", tmp_path / "out")
    line = _one_line_error(code, err, needle)
    assert "--trust-pickle" not in line


# ---------------------------------------------------------------------------- OUTDIR: what may be removed

@pytest.fixture(scope="module")
def quantized_export(tmp_path_factory):
    """An export folder with FP32 and INT8-dynamic artifacts (made once; tests copy it)."""
    out = tmp_path_factory.mktemp("export") / "out"
    from edgeai.cli import main
    assert main(["export", factory("cnn"), "--input", CNN_INPUT, "-o", str(out), "--no-bench",
                 "--quantize", "int8-dynamic", "-q"]) == 0
    return out


def _copy_export(src, dst):
    import shutil
    return shutil.copytree(src, dst)


def _tamper_manifest(folder, change):
    path = folder / "manifest.json"
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


@pytest.mark.parametrize("name", ["../victim.txt", "ABSOLUTE"])
def test_reexport_never_deletes_what_a_tampered_manifest_names_outside_outdir(cli, tmp_path, quantized_export,
                                                                             name):
    out = _copy_export(quantized_export, tmp_path / "out")
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    name = str(victim) if name == "ABSOLUTE" else name

    def point_at_victim(data):
        data["artifacts"][1]["file"] = name
    _tamper_manifest(out, point_at_victim)
    code, _, err = cli("export", factory("cnn"), "--input", CNN_INPUT, "-o", out, "--no-bench")
    assert code == 0, err
    assert victim.read_text() == "keep me"
    assert json.loads((out / "manifest.json").read_text())["artifacts"][0]["file"] == "model.onnx"


def test_reexport_removes_only_files_the_previous_export_wrote(cli, tmp_path, quantized_export):
    out = _copy_export(quantized_export, tmp_path / "out")
    (out / "notes.txt").write_text("mine")
    code, _, err = cli("export", factory("cnn"), "--input", CNN_INPUT, "-o", out, "--no-bench")
    assert code == 0, err
    # the old INT8 file was edgeai's, unchanged: removed; a file the user put there: kept
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "model.onnx", "notes.txt"]

    out2 = _copy_export(quantized_export, tmp_path / "out2")
    with open(out2 / "model.int8-dynamic.onnx", "ab") as f:  # changed since: no longer edgeai's file
        f.write(b"\0")
    code, _, err = cli("export", factory("cnn"), "--input", CNN_INPUT, "-o", out2, "--no-bench")
    assert code == 0, err
    assert (out2 / "model.int8-dynamic.onnx").is_file()


def test_export_never_deletes_or_overwrites_its_input_model(cli, tmp_path, quantized_export):
    from edgeai.fsutil import sha256_file
    out = _copy_export(quantized_export, tmp_path / "out")
    model = out / "model.int8-dynamic.onnx"
    before = sha256_file(model)
    code, _, err = cli("export", model, "-o", out, "--no-bench")
    assert code == 0, err
    assert sha256_file(model) == before
    code, _, err = cli("export", out / "model.onnx", "-o", out, "--no-bench")
    _one_line_error(code, err, "would overwrite its input model", "model.onnx")
    assert (out / "model.onnx").is_file() and (out / "model.int8-dynamic.onnx").is_file()


# ---------------------------------------------------------------------------- tampering is detected

def test_manifest_naming_a_file_outside_the_folder_is_rejected_on_read(tmp_path, quantized_export):
    from edgeai import runtime
    from edgeai.errors import RuntimeLoadError
    from edgeai.manifest import Manifest
    for bad in ["../model.onnx", "/etc/passwd", "sub/model.onnx", "..", ""]:
        out = _copy_export(quantized_export, tmp_path / f"out{len(list(tmp_path.iterdir()))}")
        _tamper_manifest(out, lambda data: data["artifacts"][0].update(file=bad))
        with pytest.raises(RuntimeLoadError, match="may only name files inside its folder"):
            Manifest.read(out)
        with pytest.raises(RuntimeLoadError, match="may only name files inside its folder"):
            runtime.load(out)


def _change_one_weight(path):
    """A valid ONNX model with one weight changed: what a tampered artifact looks like."""
    import numpy as np
    import onnx
    from onnx import numpy_helper
    model = onnx.load(str(path))
    init = model.graph.initializer[0]
    w = numpy_helper.to_array(init).copy()
    w.flat[0] += 1.0
    init.CopyFrom(numpy_helper.from_array(w.astype(np.float32), init.name))
    onnx.save(model, str(path))


def test_changed_artifact_is_refused_by_run_eval_info_bench_and_runtime_load(cli, tmp_path, quantized_export):
    import numpy as np

    from edgeai import runtime
    from edgeai.errors import RuntimeLoadError
    out = _copy_export(quantized_export, tmp_path / "out")
    _change_one_weight(out / "model.onnx")
    np.savez(tmp_path / "x.npz", image=np.random.rand(2, 3, 16, 16).astype(np.float32))
    for args in (["run", out, "--input-data", tmp_path / "x.npz", "-o", tmp_path / "y.npz"],
                 ["eval", out, "--eval-data", tmp_path / "x.npz"],
                 ["info", out],
                 ["bench", out, "--runs", "3", "--warmup", "0", "--no-isolate"]):
        code, _, err = cli(*args)
        _one_line_error(code, err, "model.onnx", "does not match the sha256", "--no-verify-digest")
    with pytest.raises(RuntimeLoadError, match="does not match the sha256"):
        runtime.load(out)
    assert runtime.load(out, artifact="int8-dynamic").inputs[0].name == "image"  # its files are intact
    session = runtime.load(out, verify_digest=False)
    assert session.run({"image": np.zeros((1, 3, 16, 16), np.float32)})
    code, _, err = cli("run", out, "--input-data", tmp_path / "x.npz", "-o", tmp_path / "y.npz", "--no-verify-digest")
    assert code == 0, err
    assert np.load(tmp_path / "y.npz")[session.outputs[0].name].shape[0] == 2


def test_manifest_lists_a_digest_for_every_file_and_ignores_unknown_keys(tmp_path, quantized_export, caplog,
                                                                          monkeypatch):
    import logging

    from edgeai.fsutil import sha256_file
    from edgeai.manifest import Manifest
    out = _copy_export(quantized_export, tmp_path / "out")
    data = json.loads((out / "manifest.json").read_text())
    assert data["schema"] == "edgeai.manifest/2"
    for a in data["artifacts"]:
        assert a["digests"] == {f: sha256_file(out / f) for f in [a["file"], *a["extra_files"]]}

    def newer(d):
        d["schema"] = "edgeai.manifest/9"
        d["signature"] = "abc"
        d["artifacts"][0]["compiled_for"] = "npu"
    _tamper_manifest(out, newer)
    monkeypatch.setattr(logging.getLogger("edgeai"), "propagate", True)  # the CLI turns it off
    with caplog.at_level("WARNING"):
        m = Manifest.read(out)
    assert [a.name for a in m.artifacts] == ["fp32", "int8-dynamic"]
    assert "newer edgeai" in caplog.text and "signature" in caplog.text and "compiled_for" in caplog.text


def test_external_data_files_are_digested_and_checked(tmp_path):
    """An artifact with external data: the .data file has its own digest, and changing it is caught."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from edgeai import runtime
    from edgeai.errors import RuntimeLoadError
    w = numpy_helper.from_array(np.ones((64, 64), np.float32), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 64])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)
    src = tmp_path / "src"
    src.mkdir()
    onnx.save(model, str(src / "big.onnx"), save_as_external_data=True, location="big.onnx.data",
              size_threshold=0)
    import edgeai
    from edgeai.recipe import SummaryConfig
    outcome = edgeai.export(str(src / "big.onnx"), tmp_path / "out", summary=SummaryConfig(bench=False))
    entry = outcome.artifacts[0]
    assert entry.extra_files and set(entry.digests) == {entry.file, *entry.extra_files}
    data_file = tmp_path / "out" / entry.extra_files[0]
    raw = bytearray(data_file.read_bytes())
    raw[0] ^= 1
    data_file.write_bytes(bytes(raw))
    with pytest.raises(RuntimeLoadError, match=f"{entry.extra_files[0]}.*does not match the sha256"):
        runtime.load(tmp_path / "out")


# ---------------------------------------------------------------------------- OUTDIR: lock, staging, failure

_HOLDER = """
import sys, time
from pathlib import Path
from edgeai.fsutil import locked_staging
with locked_staging(Path(sys.argv[1])) as stage:
    (stage / "model.onnx").write_text("half-written")
    print(stage, flush=True)
    time.sleep(120)
"""


def test_second_export_into_a_locked_folder_fails_clearly_and_stale_staging_is_cleaned(cli, tmp_path):
    """Process A holds OUTDIR (as an export does while it writes); export B into it fails at once.
    A is then killed: its staging folder is stale, and the next export removes it."""
    import signal
    import subprocess
    import sys
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(out)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        staging = holder.stdout.readline().strip()
        assert staging and os.path.isdir(staging), staging
        code, _, err = cli("export", factory("cnn"), "--input", CNN_INPUT, "-o", out, "--no-bench")
        _one_line_error(code, err, "another edgeai export is writing to", "out")
        from edgeai.errors import OutputError
        from edgeai.fsutil import locked_staging
        with pytest.raises(OutputError, match="another edgeai export"):  # also when taken after the first check
            with locked_staging(out):
                pass
        assert os.path.isdir(staging)  # a live export's staging folder is never touched
        assert not (out / "manifest.json").exists()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert os.path.isdir(staging)  # SIGKILL: nothing cleaned up
    code, _, err = cli("export", factory("cnn"), "--input", CNN_INPUT, "-o", out, "--no-bench")
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "model.onnx"]


def test_failed_export_removes_the_folders_it_created_and_nothing_else(cli, tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "keep.txt").write_text("x")
    out = tmp_path / "a" / "b" / "c" / "out"
    code, _, err = cli("export", factory("frozen_batch"), "--input", "x:batch,4", "--exporter", "torchscript",
                       "-o", out)
    _one_line_error(code, err, "batch=5")
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a", "keep.txt"]
    # an existing OUTDIR is kept (it is not ours to remove), with nothing added to it
    out = tmp_path / "a"
    code, _, err = cli("export", factory("frozen_batch"), "--input", "x:batch,4", "--exporter", "torchscript",
                       "-o", out)
    assert code == 2
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a", "keep.txt"]


def test_export_that_fails_before_writing_creates_no_folder(cli, tmp_path):
    out = tmp_path / "new" / "out"
    code, _, err = cli("export", factory("cnn"), "--input", "image:batch,7,16,16", "-o", out)
    _one_line_error(code, err, "fails on the example inputs")
    assert not (tmp_path / "new").exists()


@pytest.mark.slow  # two full export processes: ~30 s on a shared 2-core machine
def test_two_concurrent_exports_never_leave_a_manifest_naming_a_missing_file(tmp_path):
    """Two real export processes into one folder: each succeeds or stops with the lock error,
    and the folder always ends with a manifest whose files exist with their digests."""
    import subprocess
    import sys

    from edgeai.fsutil import sha256_file
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    cmd = [sys.executable, "-m", "edgeai.cli", "export", factory("cnn"), "--input", CNN_INPUT, "-o", str(out),
           "--no-bench", "-q"]
    procs = [subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env=env) for _ in range(2)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    assert any(code == 0 for code, _ in results), results
    for code, err in results:
        assert code == 0 or (code == 2 and "another edgeai export is writing to" in err), err
    manifest = json.loads((out / "manifest.json").read_text())
    for a in manifest["artifacts"]:
        assert all(sha256_file(out / f) == d for f, d in a["digests"].items())
    assert not [p for p in out.iterdir() if p.name.startswith(".edgeai-staging-")]


def test_artifact_file_linking_out_of_the_folder_is_refused_even_without_digest_check(tmp_path, quantized_export):
    from edgeai import runtime
    from edgeai.errors import RuntimeLoadError
    out = _copy_export(quantized_export, tmp_path / "out")
    outside = tmp_path / "elsewhere.onnx"
    (out / "model.onnx").rename(outside)
    (out / "model.onnx").symlink_to(outside)
    with pytest.raises(RuntimeLoadError, match="outside the export folder"):
        runtime.load(out, verify_digest=False)


def test_digest_check_on_the_device_needs_no_torch(tmp_path, quantized_export):
    import subprocess
    import sys
    out = _copy_export(quantized_export, tmp_path / "out")
    code = ("import sys, numpy as np; from edgeai import runtime; "
            f"s = runtime.load({str(out)!r}, artifact='int8-dynamic'); "
            "y = s.run({'image': np.zeros((1, 3, 16, 16), np.float32)}); "
            "print(list(y), 'torch' in sys.modules)")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split()[-1] == "False", res.stdout


def test_schema_1_manifest_still_loads_and_its_model_digest_is_checked(tmp_path, quantized_export):
    from edgeai import runtime
    from edgeai.errors import RuntimeLoadError
    out = _copy_export(quantized_export, tmp_path / "out")

    def older(data):
        data["schema"] = "edgeai.manifest/1"
        for a in data["artifacts"]:
            del a["digests"]
    _tamper_manifest(out, older)
    assert runtime.load(out).inputs[0].name == "image"
    _change_one_weight(out / "model.onnx")
    with pytest.raises(RuntimeLoadError, match="does not match the sha256"):
        runtime.load(out)
