"""`edgeai optimize --device ssh://HOST`: builds here, every candidate timed on the device by the remote bench."""
from __future__ import annotations

import json

import numpy as np
import pytest

from devicekit import SSH_HOST
from test_devices import make_wide_mlp, sshd, venv_python  # noqa: F401  (module fixtures: the device venv, sshd)

from edgeai.bench import runner, ssh
from edgeai.fsutil import sha256_file
from edgeai.manifest import Manifest
from edgeai.optimize.builder import target_options


def test_optimize_times_every_candidate_on_the_ssh_device_and_records_its_fingerprint(
        venv_python, sshd, tmp_path, monkeypatch, cli):  # noqa: F811
    model = make_wide_mlp(tmp_path / "wide.onnx")
    np.savez(tmp_path / "eval.npz", x=np.random.default_rng(0).standard_normal((32, 256)).astype(np.float32))
    uploads: list[str] = []
    real_upload = ssh.upload
    monkeypatch.setattr(ssh, "upload", lambda d, files, inc: (uploads.extend(files), real_upload(d, files, inc)))

    def no_local_timing(*args, **kwargs):
        raise AssertionError("a candidate was timed on the host")
    monkeypatch.setattr(runner, "measure_targets", no_local_timing)   # the device's agent has its own copy

    out = tmp_path / "opt"
    code, stdout, err = cli("optimize", model, "--eval-data", tmp_path / "eval.npz", "--max-drop", "0.05",
                            "--rounds", "2", "--min-seconds", "0.1", "--prune-ratios", "", "-o", out, "-q",
                            "--device", f"ssh://{SSH_HOST}", "--ssh-config", sshd.ssh_config,
                            "--device-python", venv_python)
    assert code == 0, err
    report = json.loads((out / "report.json").read_text())
    device = report["env"]["device"]
    # the fingerprint is the device's: its interpreter (the torch-free device venv), not this one
    assert device["device"] == f"ssh://{SSH_HOST}" and device["python_executable"] == str(venv_python)
    assert device["versions"]["torch"] is None and report["env"]["cpu"] == device["cpu"]
    assert report["config"]["device"] == f"ssh://{SSH_HOST}"
    assert f"Timed on ssh://{SSH_HOST}" in (out / "report.md").read_text()

    rows = {c["id"]: c for c in report["candidates"]}
    timed = [c for c in rows.values() if c["rounds"]]
    assert {"onnx/fp32", "onnx/int8-dynamic"} <= {c["id"] for c in timed} | {report["baseline"]["id"]}
    assert all(len(c["rounds"]["p50_ms"]) == 2 and min(c["rounds"]["p50_ms"]) > 0 for c in timed)
    assert report["baseline"]["p50_ms"] > 0
    # every artifact timed went to the device once, by sha256, and is in its blob store
    assert len(uploads) == len(set(uploads))
    best = Manifest.read(out / "best")
    best_sha = sha256_file(out / "best" / best.artifacts[0].file)
    assert best_sha in uploads and (sshd.cache / "blobs" / best_sha).is_file()
    assert best.artifacts[0].name == rows[report["chosen"]]["scheme"]
    # built here, for the device: INT8's reduce_range follows the device's CPU flags, written into the recipe
    built = [Manifest.read(m.parent) for m in (out / ".cache" / "candidates").glob("*/manifest.json")]
    dyn = next(m.artifacts[0] for m in built if m.artifacts[0].name == "int8-dynamic")
    expected = target_options(device["cpu"])["reduce_range"]
    assert dyn.details["reduce_range"] == expected
    assert dyn.details["reduce_range_reason"] == f"reduce_range={expected} set in the config"


@pytest.mark.parametrize("args, message", [
    (["--device", "adb:SERIAL"], "--device must be ssh://HOST"),
    (["--device", "ssh://-oProxyCommand=x"], "bad --device"),
    (["--ssh-config", "cfg"], "need --device"),
])
def test_bad_device_options_exit_2_with_one_line_before_any_build(cli, tmp_path, args, message):
    model = make_wide_mlp(tmp_path / "wide.onnx")
    np.savez(tmp_path / "eval.npz", x=np.zeros((4, 256), np.float32))
    code, _, err = cli("optimize", model, "--eval-data", tmp_path / "eval.npz", "--max-drop", "1",
                       "-o", tmp_path / "o", *args)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "o").exists()


def test_unreachable_device_fails_before_any_build(tmp_path, sshd):  # noqa: F811
    import edgeai
    from edgeai.bench.devices import DeviceError

    model = make_wide_mlp(tmp_path / "wide.onnx")
    np.savez(tmp_path / "eval.npz", x=np.zeros((4, 256), np.float32))
    with pytest.raises(DeviceError, match="cannot connect to ssh://127.0.0.1:1 over ssh"):
        edgeai.optimize(str(model), tmp_path / "o", eval_data=str(tmp_path / "eval.npz"), max_drop=1.0,
                        device="ssh://127.0.0.1:1", ssh_config=str(sshd.ssh_config))
    assert not (tmp_path / "o" / ".cache" / "candidates").exists()
