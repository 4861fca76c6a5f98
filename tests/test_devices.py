"""Devices: the torch-free plain install runs run/bench; `bench --device ssh://` against a real sshd on 127.0.0.1."""
from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from devicekit import SSH_HOST, Sshd, device_venv
from test_bench import make_mlp, write_export_folder

from edgeai.bench import bench, ssh
from edgeai.bench.devices import DeviceError, SshDevice, parse_device


@pytest.fixture(scope="module")
def venv_python(tmp_path_factory) -> Path:
    """A venv with `pip install -c constraints.txt edgeai` (the plain install), shared by this module."""
    return device_venv(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    server = Sshd(tmp_path_factory.mktemp("sshd")).start()
    yield server
    server.stop()


def make_wide_mlp(path: Path) -> Path:
    """x[batch, 256] -> 1024 -> 1024 -> 10: 1.3 M MACs per sample."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    rng = np.random.default_rng(3)
    sizes = [256, 1024, 1024, 10]
    inits, nodes, prev = [], [], "x"
    for i, (a, b) in enumerate(zip(sizes, sizes[1:])):
        inits.append(numpy_helper.from_array((rng.standard_normal((a, b)) / np.sqrt(a)).astype(np.float32), f"w{i}"))
        nodes.append(helper.make_node("MatMul", [prev, f"w{i}"], [f"m{i}"]))
        prev = f"m{i}"
        if i < len(sizes) - 2:
            nodes.append(helper.make_node("Relu", [prev], [f"r{i}"]))
            prev = f"r{i}"
    nodes.append(helper.make_node("Identity", [prev], ["y"]))
    graph = helper.make_graph(nodes, "wide", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 256])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 10])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def run_edgeai(python: Path, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """The device venv's `edgeai` console script, with a clean environment (no checkout on the path)."""
    edgeai = python.parent / "edgeai"
    env = {"PATH": f"{python.parent}:/usr/bin:/bin", "OMP_NUM_THREADS": "1", "HOME": str(python.parent.parent)}
    return subprocess.run([str(edgeai), *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=300)


# ---- the plain install -------------------------------------------------------------------------

def test_plain_install_has_no_torch_and_runs_run_and_bench_on_an_onnx_folder(venv_python, tmp_path):
    import onnxruntime as ort
    probe = subprocess.run([str(venv_python), "-c", "import importlib.util as u, json; print(json.dumps("
                            "{m: u.find_spec(m) is not None for m in ('torch', 'onnx', 'onnxruntime', 'edgeai')}))"],
                           capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"}, cwd=tmp_path)
    assert json.loads(probe.stdout) == {"torch": False, "onnx": False, "onnxruntime": True, "edgeai": True}

    folder = write_export_folder(tmp_path / "export", (make_mlp(tmp_path / "a.onnx", 32),
                                                       make_mlp(tmp_path / "b.onnx", 64, seed=1)))
    x = np.random.default_rng(0).standard_normal((3, 16)).astype(np.float32)
    np.savez(tmp_path / "in.npz", x=x)
    proc = run_edgeai(venv_python, "run", f"{folder}@wide", "--input-data", str(tmp_path / "in.npz"),
                      "-o", str(tmp_path / "out.npz"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    expected = ort.InferenceSession(str(folder / "wide.onnx")).run(None, {"x": x})[0]
    with np.load(tmp_path / "out.npz") as out:
        np.testing.assert_allclose(out["y"], expected, rtol=1e-5, atol=1e-6)

    proc = run_edgeai(venv_python, "bench", str(folder), "--runs", "20", "--warmup", "2",
                      "--json", str(tmp_path / "bench.json"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    report = json.loads((tmp_path / "bench.json").read_text())
    assert [r["target"] for r in report["results"]] == [f"{folder}@fp32", f"{folder}@wide"]
    assert all(r["status"] == "ok" and r["timing"]["n"] == 20 for r in report["results"])
    assert report["env"]["versions"]["torch"] is None and report["env"]["device"] == "local"

    proc = run_edgeai(venv_python, "info", str(folder), cwd=tmp_path)
    assert proc.returncode == 0 and "wide" in proc.stdout, proc.stderr
    proc = run_edgeai(venv_python, "eval", str(folder), "--eval-data", str(tmp_path / "in.npz"),
                      "--json", str(tmp_path / "eval.json"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    evals = json.loads((tmp_path / "eval.json").read_text())["results"]
    assert [e["metric"] for e in evals] == ["cosine", "cosine"] and evals[0]["value"] == pytest.approx(1.0)


def test_export_in_a_device_install_names_the_extra_in_one_line(venv_python, tmp_path):
    model = make_mlp(tmp_path / "m.onnx", 8)
    proc = run_edgeai(venv_python, "export", str(model), "-o", str(tmp_path / "out"), cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1, proc.stderr
    wheel = next(venv_python.parent.parent.parent.glob("wheel/edgeai-*.whl"))  # devicekit built it there
    assert "'export' extra" in proc.stderr and f'pip install "{wheel}[export]"' in proc.stderr
    assert not (tmp_path / "out").exists()

    proc = run_edgeai(venv_python, "bench", "--runtime", "torch", "edgeai.zoo:digits_cnn", cwd=tmp_path)
    assert proc.returncode == 2 and f"{wheel}[export]" in proc.stderr and proc.stderr.count("\n") == 1


# ---- ssh devices -------------------------------------------------------------------------------

def test_remote_command_quotes_every_argument_so_the_remote_shell_parses_none():
    argv = ["/opt/py thon", "-m", "edgeai.bench.agent", "; rm -rf ~", "$(reboot)", "`id`", "a'b\"c", "*"]
    assert shlex.split(ssh.remote_command(argv)) == argv
    device = SshDevice("board", user="pi", port=2222, ssh_config="/tmp/cfg")
    assert ssh.ssh_argv(device, ["true"])[-3:] == ["--", "board", "true"]
    assert ["-o", "User=pi"] == ssh.connection_options(device)[6:8]


@pytest.mark.parametrize("text", ["ssh://-oProxyCommand=touch%20x", "ssh://host/path", "ssh://a b",
                                  "ssh://host:99999", "ssh://", "telnet://host", "adb:bad serial"])
def test_bad_device_strings_are_user_errors(text):
    with pytest.raises(DeviceError):
        parse_device(text, benchmark_binary=__file__ if text.startswith("adb") else None)


def test_ssh_config_is_read_before_the_users_config_not_instead(tmp_path, monkeypatch):
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "config").write_text("Host *\n  ServerAliveInterval 30\n")
    monkeypatch.setenv("HOME", str(home))
    mine = tmp_path / "my config"
    mine.write_text("Host board\n  HostName 10.0.0.7\n")
    lines = ssh.layered_config(str(mine), tmp_path).read_text().splitlines()
    assert lines[:2] == [f'Include "{mine}"', f'Include "{home / ".ssh" / "config"}"']


def test_parse_device_reads_user_and_port():
    device = parse_device("ssh://pi@raspberrypi.local:2222", device_python="/home/pi/venv/bin/python")
    assert device == SshDevice("raspberrypi.local", "pi", 2222, None, "/home/pi/venv/bin/python")
    assert device.name == "ssh://pi@raspberrypi.local:2222"


def test_a_device_that_reads_another_manifest_schema_is_told_so():
    device = SshDevice("board")
    info = {"edgeai": "0.0.1", "manifest_schema": "edgeai.manifest/0", "bench_schema": "edgeai.bench/1"}
    from edgeai.manifest import SCHEMA
    with pytest.raises(DeviceError, match=rf"reads manifests 'edgeai.manifest/0', these are '{SCHEMA}'"):
        ssh.check_schemas(device, info, has_manifests=True)
    ssh.check_schemas(device, info, has_manifests=False)  # a bare .onnx file needs no manifest


def test_ssh_bench_agrees_with_local_p50_and_uploads_each_file_once(venv_python, sshd, tmp_path, monkeypatch):
    model = make_wide_mlp(tmp_path / "wide.onnx")
    folder = write_export_folder(tmp_path / "export", (make_mlp(tmp_path / "a.onnx", 32),
                                                       make_mlp(tmp_path / "b.onnx", 64, seed=1)))
    uploads = []
    real_upload = ssh.upload
    monkeypatch.setattr(ssh, "upload", lambda d, files, inc: (uploads.append(sorted(files)), real_upload(d, files, inc)))
    device = parse_device(f"ssh://{SSH_HOST}", ssh_config=str(sshd.ssh_config), device_python=str(venv_python))
    opts = dict(warmup=20, runs=200, batch=32)  # about 0.5 ms a run: long enough to time stably

    local = bench([model], **opts)
    remote = bench([model, folder], device=device, **opts)
    assert len(uploads) == 1 and len(uploads[0]) == 4     # wide.onnx, fp32.onnx, wide.onnx of the folder, manifest
    again = bench([folder], device=device, warmup=1, runs=5)
    assert len(uploads) == 1                                # everything was already there: nothing sent

    assert [r.status for r in remote.results] == ["ok", "ok", "ok"]
    assert [r.target for r in remote.results] == [str(model), f"{folder}@fp32", f"{folder}@wide"]
    ratio = remote.results[0].timing.p50_ms / local.results[0].timing.p50_ms
    assert 0.75 <= ratio <= 1 / 0.75, (remote.results[0].timing, local.results[0].timing)
    # the same JSON schema, with the device's fingerprint and its name
    local_d, remote_d = local.to_dict(), remote.to_dict()
    assert set(local_d) == set(remote_d) and set(local_d["env"]) == set(remote_d["env"])
    assert set(local_d["results"][0]) == set(remote_d["results"][0])
    assert remote_d["env"]["device"] == remote_d["config"]["device"] == f"ssh://{SSH_HOST}"
    assert remote_d["env"]["python_executable"] == str(venv_python)
    assert remote_d["env"]["versions"]["torch"] is None
    assert again.results[1].timing.n == 5


def test_cli_ssh_device_writes_json_and_a_device_without_edgeai_is_one_line(venv_python, sshd, tmp_path):
    from edgeai.cli import main
    model = make_mlp(tmp_path / "m.onnx", 16)
    args = ["bench", str(model), "--device", f"ssh://{SSH_HOST}", "--ssh-config", str(sshd.ssh_config),
            "--runs", "10", "--warmup", "1"]
    assert main([*args, "--device-python", str(venv_python), "--json", str(tmp_path / "r.json")]) == 0
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["schema"] == "edgeai.bench/1" and report["results"][0]["timing"]["n"] == 10

    bare = tmp_path / "bare"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(bare)], check=True)
    proc = subprocess.run([sys.executable, "-m", "edgeai.cli", *args, "--device-python", str(bare / "bin" / "python")],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "cannot import edgeai's device agent" in proc.stderr, proc.stderr
    assert proc.stderr.count("\n") == 1


def test_unreachable_ssh_device_is_a_user_error(sshd, tmp_path):
    device = SshDevice("127.0.0.1", port=1, ssh_config=str(sshd.ssh_config))
    with pytest.raises(DeviceError, match="cannot connect to ssh://127.0.0.1:1 over ssh"):
        bench([make_mlp(tmp_path / "m.onnx", 8)], device=device, runs=1)


def test_agent_refuses_an_upload_whose_hash_does_not_match(tmp_path):
    from edgeai.bench.agent import store_incoming
    incoming, blobs = tmp_path / "incoming", tmp_path / "blobs"
    incoming.mkdir(), blobs.mkdir()
    (incoming / ("0" * 64)).write_bytes(b"not what was hashed")
    with pytest.raises(RuntimeError, match="arrived corrupt"):
        store_incoming(incoming, blobs)
    assert not any(blobs.iterdir())
