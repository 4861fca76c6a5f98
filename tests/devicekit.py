"""Test helpers for devices: a torch-free "device" venv with the plain install, and a real sshd on 127.0.0.1."""
from __future__ import annotations

import functools
import getpass
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
CONSTRAINTS = REPO / "constraints.txt"
SSH_HOST = "edgeai-test-device"


@functools.cache
def device_venv(root: Path) -> Path:
    """A fresh venv with `pip install -c constraints.txt edgeai` (no extras); its python. Once per session.

    The venv is made without its own pip (ensurepip costs ~8 s) and filled by this pip with
    `--python`; wheels come from pip's cache after the first run.
    """
    venv = root / "device-venv"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # a checkout on the path is not an install
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    src, wheels = root / "src", root / "wheel"  # build from a copy: an in-tree build leaves egg-info behind
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    shutil.copytree(REPO / "edgeai", src / "edgeai", ignore=shutil.ignore_patterns("__pycache__"))
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                           "-w", str(wheels), str(src)], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    wheel = next(wheels.glob("edgeai-*.whl"))
    proc = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q",
                           "-c", str(CONSTRAINTS), str(wheel)], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return python


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _install_hint() -> str:
    return "openssh-server is not installed and could not be installed (apt-get install -y openssh-server)"


def find_sshd() -> str:
    """Path of sshd, installing openssh-server with apt-get when possible; skips the test otherwise."""
    sshd = shutil.which("sshd") or ("/usr/sbin/sshd" if Path("/usr/sbin/sshd").exists() else None)
    if sshd is None and os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        for args in (["update", "-qq"], ["install", "-y", "-qq", "openssh-server"]):
            subprocess.run(["apt-get", *args], env=env, capture_output=True, timeout=300)
        sshd = "/usr/sbin/sshd" if Path("/usr/sbin/sshd").exists() else None
    if sshd is None or shutil.which("ssh") is None or shutil.which("scp") is None:
        pytest.skip(_install_hint())
    return sshd


class Sshd:
    """sshd on 127.0.0.1:PORT accepting one key for the current user; `ssh_config` names it SSH_HOST."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.cache = folder / "device-cache"
        self.port = _free_port()
        self.ssh_config = folder / "ssh_config"
        self.log = folder / "sshd.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> "Sshd":
        sshd, f = find_sshd(), self.folder
        for key in ("host_key", "id_ed25519"):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(f / key)], check=True)
        shutil.copy(f / "id_ed25519.pub", f / "authorized_keys")
        host_pub = (f / "host_key.pub").read_text().split()
        (f / "known_hosts").write_text(f"[127.0.0.1]:{self.port} {host_pub[0]} {host_pub[1]}\n")
        (f / "sshd_config").write_text("\n".join([
            f"Port {self.port}", "ListenAddress 127.0.0.1", f"HostKey {f / 'host_key'}",
            f"PidFile {f / 'sshd.pid'}", f"AuthorizedKeysFile {f / 'authorized_keys'}",
            "PasswordAuthentication no", "KbdInteractiveAuthentication no", "UsePAM no",
            "StrictModes no", "PermitRootLogin prohibit-password", "AcceptEnv EDGEAI_DEVICE_CACHE",
            "Subsystem sftp internal-sftp", ""]))
        (self.ssh_config).write_text("\n".join([
            f"Host {SSH_HOST}", "  HostName 127.0.0.1", f"  Port {self.port}", f"  User {getpass.getuser()}",
            f"  IdentityFile {f / 'id_ed25519'}", "  IdentitiesOnly yes",
            f"  UserKnownHostsFile {f / 'known_hosts'}", "  StrictHostKeyChecking yes",
            f"  SetEnv EDGEAI_DEVICE_CACHE={self.cache}", "  LogLevel ERROR", ""]))
        Path("/run/sshd").mkdir(exist_ok=True) if os.geteuid() == 0 else None  # privilege separation dir
        self.proc = subprocess.Popen([sshd, "-D", "-e", "-f", str(f / "sshd_config")],
                                     stdout=subprocess.DEVNULL, stderr=open(self.log, "wb"))
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"sshd exited: {self.log.read_text()[-1000:]}")
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return self
            time.sleep(0.05)
        pytest.fail("sshd did not listen within 10 s")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
