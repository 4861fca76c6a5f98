"""Nothing outside OUTDIR is written, replaced or sent: cache links, output files, ssh uploads, external data,
overwrites; signals and races (issue 16, sections 2 and 5)."""
from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from test_bench import make_mlp

import edgeai
from edgeai.fsutil import sha256_file

SRC = Path(edgeai.__file__).resolve().parent.parent   # the checkout under test: subprocesses import it
FAST_OPTIMIZE = ["--max-drop", "1", "--rounds", "1", "--min-seconds", "0.05", "--prune-ratios", ""]


def _one_line_error(code, err, *needles):
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, err
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def _snapshot(folder: Path) -> dict:
    """Every entry under `folder` with its kind and bytes: what 'untouched' is compared with."""
    out = {}
    for p in sorted(folder.rglob("*")):
        out[str(p.relative_to(folder))] = "dir" if p.is_dir() else p.read_bytes()
    return out


@pytest.fixture(scope="module")
def mlp(tmp_path_factory):
    """A tiny ONNX MLP (x[batch,16] -> y[batch,4]) and evaluation data: optimize builds it in seconds."""
    folder = tmp_path_factory.mktemp("mlp")
    make_mlp(folder / "m.onnx", 8)
    np.savez(folder / "e.npz", x=np.random.default_rng(0).standard_normal((16, 16)).astype(np.float32))
    return folder


@pytest.fixture(scope="module")
def optimized(mlp, tmp_path_factory):
    """One optimize run of the MLP (its cache filled); tests copy it."""
    from edgeai.cli import main
    out = tmp_path_factory.mktemp("opt") / "out"
    assert main(["optimize", str(mlp / "m.onnx"), "--eval-data", str(mlp / "e.npz"), "-o", str(out),
                 *FAST_OPTIMIZE, "-q"]) == 0
    return out


def _candidates(out: Path) -> dict[str, Path]:
    """{candidate id: its cache folder}."""
    return {json.loads((d / "result.json").read_text())["id"]: d for d in (out / ".cache" / "candidates").iterdir()}


# ---------------------------------------------------------------------------- the optimize cache

@pytest.mark.parametrize("no_cache", [False, True], ids=["cache", "no-cache"])
def test_link_planted_in_the_optimize_cache_is_refused_and_its_target_untouched(cli, mlp, optimized, tmp_path,
                                                                                no_cache):
    out = shutil.copytree(optimized, tmp_path / "out", symlinks=True)
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "model.onnx").write_bytes(b"the victim's own model")
    before = _snapshot(victim)
    keys = [d.name for d in (out / ".cache" / "candidates").iterdir()]
    for key in keys:
        shutil.rmtree(out / ".cache" / "candidates" / key)
        (out / ".cache" / "candidates" / key).symlink_to(victim, target_is_directory=True)
    code, _, err = cli("optimize", mlp / "m.onnx", "--eval-data", mlp / "e.npz", "-o", out, *FAST_OPTIMIZE, "-q",
                       *(["--no-cache"] if no_cache else []))
    line = _one_line_error(code, err, "is a symbolic link", str(out / ".cache" / "candidates"))
    assert any(key in line for key in keys)
    assert _snapshot(victim) == before


def test_link_planted_as_the_cache_folder_is_refused(cli, mlp, tmp_path):
    out, victim = tmp_path / "out", tmp_path / "victim"
    out.mkdir()
    victim.mkdir()
    (out / ".cache").symlink_to(victim, target_is_directory=True)
    code, _, err = cli("optimize", mlp / "m.onnx", "--eval-data", mlp / "e.npz", "-o", out, *FAST_OPTIMIZE, "-q")
    _one_line_error(code, err, str(out / ".cache"), "symbolic link")
    assert list(victim.iterdir()) == []


def test_changed_cached_models_are_rebuilt_not_timed_or_published(cli, mlp, optimized, tmp_path):
    """One cached model swapped for another model's bytes, one replaced by a link to it: both rebuilt."""
    from edgeai.manifest import Manifest

    out = shutil.copytree(optimized, tmp_path / "out", symlinks=True)
    genuine = sha256_file(optimized / "baseline" / "model.onnx")
    other = make_mlp(tmp_path / "other.onnx", 8, seed=1)          # same inputs and outputs, other weights
    before = other.read_bytes()
    folders = _candidates(out)
    swapped, linked = folders["onnx/fp32"], folders["onnx/int8-dynamic"]
    shutil.copyfile(other, swapped / "model.onnx")
    linked_file = linked / Manifest.read(linked).artifacts[0].file
    linked_file.unlink()
    linked_file.symlink_to(other)
    code, _, err = cli("optimize", mlp / "m.onnx", "--eval-data", mlp / "e.npz", "-o", out, *FAST_OPTIMIZE, "-q")
    assert code == 0, err
    assert sha256_file(out / "baseline" / "model.onnx") == genuine
    report = json.loads((out / "report.json").read_text())
    if report["chosen"] == "onnx/fp32":
        assert sha256_file(out / "best" / "model.onnx") == genuine
    assert other.read_bytes() == before
    assert sha256_file(swapped / "model.onnx") == genuine            # rebuilt in the cache too
    assert not linked_file.is_symlink()
    Manifest.read(linked).artifacts[0].verify_files(linked)


# ---------------------------------------------------------------------------- SIGTERM and the OUTDIR lock

def _env() -> dict:
    return {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}


def _wait_for(predicate, seconds: float, what: str):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        found = predicate()
        if found:
            return found
        time.sleep(0.02)
    pytest.fail(f"{what} did not happen within {seconds} s")


@pytest.mark.parametrize("to", ["group", "main"])
def test_sigterm_to_optimize_leaves_no_staging_and_prints_one_line(mlp, tmp_path, to):
    """SIGTERM to the whole process group (the workers get it too) or to the main process only."""
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "edgeai.cli", "optimize", str(mlp / "m.onnx"), "--eval-data",
                             str(mlp / "e.npz"), "-o", str(out), *FAST_OPTIMIZE, "-q"], env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        _wait_for(lambda: list((out / ".cache" / "work").glob("unit-*/export/.edgeai-staging-*")), 120,
                  "a build in a worker")
        (os.killpg if to == "group" else os.kill)(proc.pid, signal.SIGTERM)
        _, err = proc.communicate(timeout=120)   # stderr closes when every process of the group is gone
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 128 + signal.SIGTERM, err
    # one line saying so (no resource_tracker warning, no traceback): the shell's, or optimize's own when the
    # signal came before the FP32 baseline existed ("stopped by SIGTERM ...; nothing was written")
    assert len(err.strip().splitlines()) == 1 and "SIGTERM" in err, err
    assert list((out / ".cache" / "work").iterdir()) == []
    assert not list(out.rglob(".edgeai-staging-*"))


def test_unit_folders_of_a_killed_optimize_are_removed_by_the_next_one_not_those_in_use(cli, mlp, optimized,
                                                                                        tmp_path):
    from edgeai.fsutil import hold_lock

    out = shutil.copytree(optimized, tmp_path / "out", symlinks=True)
    work = out / ".cache" / "work"
    stale, busy = work / "unit-killed", work / "unit-busy"
    for unit in (stale, busy):
        (unit / "export" / ".edgeai-staging-x").mkdir(parents=True)
        (unit / "export" / ".edgeai-staging-x" / "model.onnx").write_bytes(b"half written")
    lock = hold_lock(busy)   # a unit another optimize sharing this cache is building right now
    try:
        code, _, err = cli("optimize", mlp / "m.onnx", "--eval-data", mlp / "e.npz", "-o", out, *FAST_OPTIMIZE,
                           "-q")
    finally:
        os.close(lock)
    assert code == 0, err
    assert sorted(p.name for p in work.iterdir()) == ["unit-busy"]


_SLOW_LOADER = """
import time
from pathlib import Path
import torch

def slow():
    Path(__file__).with_name("loading").touch()
    time.sleep(3)
    torch.manual_seed(0)
    return torch.nn.Linear(4, 2).eval()

def fast():
    torch.manual_seed(1)
    return torch.nn.Linear(4, 2).eval()
"""


def test_first_started_of_two_exports_into_one_folder_wins(cli, tmp_path):
    (tmp_path / "models.py").write_text(_SLOW_LOADER)
    out = tmp_path / "out"
    first = subprocess.Popen([sys.executable, "-m", "edgeai.cli", "export", f"{tmp_path / 'models.py'}:slow",
                              "--input", "input:batch,4", "--exporter", "torchscript", "-o", str(out), "--no-bench",
                              "-q"], env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(lambda: (tmp_path / "loading").exists(), 120, "the first export loading its model")
        code, _, err = cli("export", f"{tmp_path / 'models.py'}:fast", "--input", "input:batch,4", "-o", out,
                           "--exporter", "torchscript", "--no-bench", "-q")
        _one_line_error(code, err, "another edgeai export is writing to")
        _, first_err = first.communicate(timeout=300)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 0, first_err
    import torch
    torch.manual_seed(0)
    expected = torch.nn.Linear(4, 2).weight.detach().numpy()
    import onnx
    from onnx import numpy_helper
    weights = [numpy_helper.to_array(t) for t in onnx.load(str(out / "model.onnx")).graph.initializer]
    assert any(w.shape == expected.shape and np.allclose(w, expected) for w in weights)   # the first one's model


# ---------------------------------------------------------------------------- files the user names

def _reader(fifo: Path) -> int:
    """A reader on `fifo` that does not block (so a writer may open it); read it after the write."""
    return os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)


def _read_all(fd: int) -> bytes:
    chunks = []
    while True:
        try:
            chunk = os.read(fd, 1 << 16)
        except BlockingIOError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(fd)
    return b"".join(chunks)


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    pytest.importorskip("transformers")
    import hf_tiny
    return hf_tiny.wordpiece_vocab(tmp_path_factory.mktemp("tok") / "tok", ["the", "cat", "sat"])


def _command(kind: str, mlp: Path, tmp_path: Path, target: Path, request) -> list:
    x = tmp_path / "x.npz"
    np.savez(x, x=np.ones((2, 16), np.float32))
    if kind == "run -o":
        return ["run", mlp / "m.onnx", "--input-data", x, "-o", target]
    if kind == "bench --json":
        return ["bench", mlp / "m.onnx", "--runs", "3", "--warmup", "1", "--no-isolate", "--json", target]
    if kind == "eval --json":
        return ["eval", mlp / "m.onnx", "--eval-data", x, "--reference", mlp / "m.onnx", "--json", target]
    tok = request.getfixturevalue("tokenizer_dir")
    (tmp_path / "s.txt").write_text("the cat sat\n")
    return ["data", "text", tmp_path / "s.txt", "--tokenizer", f"hf:{tok}", "-o", target]


OUTPUT_COMMANDS = ["run -o", "bench --json", "eval --json", "data text -o"]


@pytest.mark.parametrize("kind", OUTPUT_COMMANDS)
def test_output_file_that_is_a_fifo_or_device_is_written_into_never_replaced(cli, mlp, tmp_path, kind, request,
                                                                             monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    fd = _reader(fifo)
    code, _, err = cli(*_command(kind, mlp, tmp_path, fifo, request))
    data = _read_all(fd)
    assert code == 0, err
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    assert len(data) > 0 and (data.startswith(b"PK") or json.loads(data))   # an .npz (zip) or the JSON

    null = tmp_path / "null"
    try:
        os.mknod(null, stat.S_IFCHR | 0o666, os.makedev(1, 3))   # /dev/null's numbers: the real one stays untouched
    except (PermissionError, OSError):
        return  # no CAP_MKNOD here: the FIFO above made the point
    code, _, err = cli(*_command(kind, mlp, tmp_path, null, request))
    assert code == 0, err
    st = os.lstat(null)
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(1, 3)


@pytest.mark.parametrize("kind", OUTPUT_COMMANDS)
def test_symlinked_output_file_is_refused_and_its_target_untouched(cli, mlp, tmp_path, kind, request, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    link = tmp_path / "out.file"
    link.symlink_to(victim)
    code, _, err = cli(*_command(kind, mlp, tmp_path, link, request))
    _one_line_error(code, err, str(link), "symbolic link")
    assert victim.read_text() == "keep me" and link.is_symlink()


def test_atomic_writes_refuse_to_replace_anything_but_a_regular_file(tmp_path):
    from edgeai.errors import OutputError
    from edgeai.fsutil import atomic_write_text, publish

    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(OutputError, match="it is a FIFO"):
        atomic_write_text(fifo, "x")
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    stage, final = tmp_path / "stage", tmp_path / "final"
    stage.mkdir()
    final.mkdir()
    (stage / "a").write_text("a")
    with pytest.raises(OutputError, match="names it twice"):
        publish(stage, final, ["a", "a"])
    with pytest.raises(OutputError, match="did not stage it"):
        publish(stage, final, ["a", "missing"])
    assert list(final.iterdir()) == []   # checked before anything moved


# ---------------------------------------------------------------------------- bench --device ssh://

def test_ssh_bench_refuses_a_symlinked_model_file_even_without_digest_check(cli, mlp, tmp_path):
    from devicekit import SSH_HOST, Sshd
    from test_bench import write_export_folder

    sshd = Sshd(tmp_path / "sshd")
    (tmp_path / "sshd").mkdir()
    sshd.start()
    try:
        folder = write_export_folder(tmp_path / "export", (mlp / "m.onnx", make_mlp(tmp_path / "b.onnx", 8, 1)))
        secret = tmp_path / "secret.onnx"
        secret.write_bytes(b"a local secret the device must never see")
        (folder / "fp32.onnx").unlink()
        (folder / "fp32.onnx").symlink_to(secret)
        python = tmp_path / "device-python"   # the device's python: this one, with this checkout
        python.write_text(f"#!/bin/sh\nPYTHONPATH={SRC} exec {sys.executable} \"$@\"\n")
        python.chmod(0o755)
        code, _, err = cli("bench", f"{folder}@fp32", "--device", f"ssh://{SSH_HOST}", "--ssh-config",
                           sshd.ssh_config, "--device-python", python, "--no-verify-digest", "--runs", "3")
    finally:
        sshd.stop()
    _one_line_error(code, err, str(folder / "fp32.onnx"), "symbolic link")
    sent = [p for p in sshd.cache.rglob("*") if p.is_file()] if sshd.cache.exists() else []
    assert all(p.read_bytes() != secret.read_bytes() for p in sent)


# ---------------------------------------------------------------------------- export: external data, overwrites

def _external_model(folder: Path, location: str) -> Path:
    """in.onnx (x[batch,64] @ w) keeping w in external data at `location`, relative to `folder`."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    w = numpy_helper.from_array((np.arange(64 * 64, dtype=np.float32).reshape(64, 64) / 4096), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 64])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)
    (folder / location).parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(folder / "in.onnx"), save_as_external_data=True, location=location, size_threshold=0)
    return folder / "in.onnx"


@pytest.mark.parametrize("location", ["./w.bin", "data/w.bin", "manifest.json"])
def test_external_data_names_are_normalized_on_export_and_run_reads_the_folder(cli, tmp_path, location):
    import onnxruntime as ort
    src = _external_model(tmp_path / "src", location)
    out = tmp_path / "out"
    code, _, err = cli("export", src, "-o", out, "--no-bench", "-q")
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "model.onnx", "model.onnx.data"]
    x = np.random.default_rng(0).standard_normal((3, 64)).astype(np.float32)
    np.savez(tmp_path / "x.npz", x=x)
    code, _, err = cli("run", out, "--input-data", tmp_path / "x.npz", "-o", tmp_path / "y.npz")
    assert code == 0, err
    expected = ort.InferenceSession(str(src)).run(None, {"x": x})[0]
    np.testing.assert_allclose(np.load(tmp_path / "y.npz")["y"], expected, rtol=1e-6)


def test_export_into_the_models_own_folder_keeps_its_external_data(cli, tmp_path):
    folder = tmp_path / "src"
    src = _external_model(folder, "manifest.json")
    before = _snapshot(folder)
    code, _, err = cli("export", src, "-o", folder, "--no-bench", "-q")
    _one_line_error(code, err, "would overwrite its input model", "manifest.json")
    assert _snapshot(folder) == before


def _own_files(folder: Path) -> dict:
    folder.mkdir()
    (folder / "model.onnx").write_bytes(b"my own model, not edgeai's")
    return _snapshot(folder)


def test_export_refuses_to_overwrite_a_model_onnx_edgeai_did_not_write(cli, mlp, tmp_path):
    out = tmp_path / "out"
    before = _own_files(out)
    code, _, err = cli("export", mlp / "m.onnx", "-o", out, "--no-bench", "-q")
    _one_line_error(code, err, f"refusing to overwrite {str(out / 'model.onnx')!r}", "edgeai did not write it")
    assert _snapshot(out) == before

    (out / "model.onnx").unlink()
    (out / "manifest.json").write_text('{"name": "my web app", "icons": []}')
    before = _snapshot(out)
    code, _, err = cli("export", mlp / "m.onnx", "-o", out, "--no-bench", "-q")
    _one_line_error(code, err, "manifest.json", "not an edgeai manifest")
    assert _snapshot(out) == before


def test_reexport_over_its_own_files_works_but_not_over_a_changed_one(cli, mlp, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for _ in range(2):   # -o . : the current folder, the same rules
        code, _, err = cli("export", mlp / "m.onnx", "-o", ".", "--no-bench", "-q")
        assert code == 0, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["manifest.json", "model.onnx"]
    with open(tmp_path / "model.onnx", "ab") as f:
        f.write(b"\0")
    before = _snapshot(tmp_path)
    code, _, err = cli("export", mlp / "m.onnx", "-o", ".", "--no-bench", "-q")
    _one_line_error(code, err, "model.onnx", "changed since edgeai wrote it")
    assert _snapshot(tmp_path) == before


@pytest.mark.parametrize("what", ["user file", "link"])
def test_optimize_refuses_to_replace_a_best_folder_edgeai_did_not_write(cli, mlp, optimized, tmp_path, what):
    out = shutil.copytree(optimized, tmp_path / "out", symlinks=True)
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "notes.txt").write_text("mine")
    if what == "user file":
        (out / "best" / "notes.txt").write_text("mine")
    else:
        shutil.rmtree(out / "best")
        (out / "best").symlink_to(victim, target_is_directory=True)
    before = _snapshot(out / "best")
    code, _, err = cli("optimize", mlp / "m.onnx", "--eval-data", mlp / "e.npz", "-o", out, *FAST_OPTIMIZE, "-q")
    _one_line_error(code, err, f"refusing to replace {str(out / 'best')!r}")
    assert _snapshot(out / "best") == before and _snapshot(victim) == {"notes.txt": b"mine"}
