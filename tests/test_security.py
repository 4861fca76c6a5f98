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
