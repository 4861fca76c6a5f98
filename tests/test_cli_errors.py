"""Every user mistake gives a one-line error, exit code 2, no traceback and no partial output."""
import numpy as np
import pytest

from conftest import MODELS, factory
from edgeai.fsutil import sha256_file


def _one_line_error(code, err, *needles):
    assert code == 2, err
    lines = [l for l in err.strip().splitlines() if l.startswith("edgeai: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    for n in needles:
        assert n in lines[0], lines[0]


def _no_output(folder):
    assert not folder.exists() or not [p for p in folder.iterdir()], list(folder.iterdir())


@pytest.mark.parametrize("args, needles", [
    (["missing.onnx"], ["does not exist"]),
    (["nope/model.pt"], ["does not exist"]),
    (["just_a_word"], ["cannot tell what model"]),
    ([factory("cnn"), "--input", "image"], ["bad --input", "NAME:DIM"]),
    ([factory("cnn"), "--input", "image:batch,3,x-1"], ["neither a positive integer nor a name"]),
    ([factory("cnn"), "--input", "image:batch,7,16,16"], ["fails on the example inputs", "check the --input"]),
    ([factory("cnn"), "--input", "wrong:batch,3,16,16"], ["do not match forward()"]),
    ([factory("raises"), "--input", "x:1"], ["raised RuntimeError", "weights server unreachable"]),
    ([factory("not_a_module"), "--input", "x:1"], ["not a torch.nn.Module"]),
    ([f"{MODELS}:missing_fn", "--input", "x:1"], ["has no callable 'missing_fn'"]),
])
def test_bad_model_or_inputs(cli, tmp_path, args, needles):
    code, _, err = cli("export", *args, "-o", tmp_path / "out")
    _one_line_error(code, err, *needles)
    _no_output(tmp_path / "out")


def test_not_a_model_file_and_truncated_onnx(cli, tmp_path):
    (tmp_path / "notes.pt").write_text("hello, I am not a model")
    code, _, err = cli("export", tmp_path / "notes.pt", "--input", "x:1", "-o", tmp_path / "o1")
    _one_line_error(code, err, "not a PyTorch model file")
    code, _, _ = cli("export", factory("lstm"), "--input", "rows:batch,seq=4,6", "-o", tmp_path / "good")
    assert code == 0
    data = (tmp_path / "good" / "model.onnx").read_bytes()
    (tmp_path / "cut.onnx").write_bytes(data[: len(data) // 2])
    before = sha256_file(tmp_path / "cut.onnx")
    code, _, err = cli("export", tmp_path / "cut.onnx", "-o", tmp_path / "o2")
    _one_line_error(code, err)
    assert "onnx" in err.lower() and sha256_file(tmp_path / "cut.onnx") == before
    _no_output(tmp_path / "o2")


def test_unwritable_output(cli, tmp_path):
    (tmp_path / "file").write_text("x")
    code, _, err = cli("export", factory("cnn"), "--input", "image:batch,3,16,16", "-o", tmp_path / "file" / "sub")
    _one_line_error(code, err, "cannot create output folder")


def test_state_dict_without_arch_and_pickle_without_trust(cli, tmp_path):
    import torch
    import models
    torch.save(models.cnn().state_dict(), tmp_path / "sd.pt")
    code, _, err = cli("export", tmp_path / "sd.pt", "--input", "image:batch,3,16,16", "-o", tmp_path / "o")
    _one_line_error(code, err, "--arch")
    code, _, err = cli("export", tmp_path / "sd.pt", "--arch", factory("lstm"), "--input", "image:batch,3,16,16",
                       "-o", tmp_path / "o")
    _one_line_error(code, err, "do not fit --arch")
    torch.save(models.cnn(), tmp_path / "whole.pt")
    before = sha256_file(tmp_path / "whole.pt")
    code, _, err = cli("export", tmp_path / "whole.pt", "--input", "image:batch,3,16,16", "-o", tmp_path / "o")
    _one_line_error(code, err, "--trust-pickle")
    assert sha256_file(tmp_path / "whole.pt") == before
    _no_output(tmp_path / "o")


def test_run_command_writes_outputs_and_rejects_bad_feeds(cli, tmp_path):
    code, _, err = cli("export", factory("cnn"), "--input", "image:batch,3,16,16", "-o", tmp_path / "m")
    assert code == 0, err
    x = np.random.default_rng(0).standard_normal((4, 3, 16, 16)).astype(np.float32)
    np.savez(tmp_path / "in.npz", image=x)
    code, out, err = cli("run", tmp_path / "m", "--input-data", tmp_path / "in.npz", "-o", tmp_path / "out.npz")
    assert code == 0, err
    with np.load(tmp_path / "out.npz") as z:
        assert z["output"].shape == (4, 5)
    np.savez(tmp_path / "bad.npz", image=x[:, :2])
    code, _, err = cli("run", tmp_path / "m", "--input-data", tmp_path / "bad.npz", "-o", tmp_path / "o2.npz")
    _one_line_error(code, err, "has shape 4x2x16x16", "model wants batchx3x16x16")
    np.savez(tmp_path / "wrongname.npz", img=x)
    code, _, err = cli("run", tmp_path / "m", "--input-data", tmp_path / "wrongname.npz", "-o", tmp_path / "o3.npz")
    _one_line_error(code, err, "model wants ['image']")
    (tmp_path / "junk.npz").write_text("junk")
    code, _, err = cli("run", tmp_path / "m", "--input-data", tmp_path / "junk.npz", "-o", tmp_path / "o4.npz")
    _one_line_error(code, err, "not a readable .npz")
    assert not (tmp_path / "o2.npz").exists()


def test_debug_flag_shows_traceback_and_still_exits_2(cli, tmp_path):
    code, _, err = cli("--debug", "export", "missing.onnx", "-o", tmp_path / "o")
    assert code == 2 and "Traceback" in err and "ModelLoadError" in err
    assert err.strip().splitlines()[-1].startswith("edgeai: error: model file 'missing.onnx' does not exist")


def test_unavailable_provider_is_a_clear_error(cli, tmp_path):
    import onnxruntime
    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this machine has CUDA: the error case cannot happen")
    code, _, _ = cli("export", factory("cnn"), "--input", "image:batch,3,16,16", "-o", tmp_path / "m", "--no-bench")
    assert code == 0
    np.savez(tmp_path / "in.npz", image=np.zeros((1, 3, 16, 16), np.float32))
    code, _, err = cli("run", tmp_path / "m", "--input-data", tmp_path / "in.npz", "-o", tmp_path / "o.npz",
                       "--provider", "cuda")
    _one_line_error(code, err, "provider 'cuda' is not available", "onnxruntime-gpu")
