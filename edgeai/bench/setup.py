"""`edgeai device setup ssh://HOST`: build this edgeai's wheel, copy it to a board, install it in a venv there, check it.

The board gets the plain install plus LiteRT (`edgeai[litert]`: numpy, onnxruntime, ai-edge-litert; no
torch), from its own package index, or, for a board without network, only from wheels the user
copies with it (`--wheels DIR`, e.g. made with `pip download --platform ... -d DIR`). The transport
is edgeai bench's (system ssh and scp, the user's ssh config, every remote argument quoted), and
the check is its version handshake: the venv's edgeai must be this version and speak these schemas.
"""
from __future__ import annotations

import argparse
import json
import logging
import shutil
import subprocess
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

from edgeai import __version__
from edgeai.bench.devices import DeviceError, SshDevice, parse_device
from edgeai.extras import checkout_root, installed_wheel

log = logging.getLogger(__name__)

DEFAULT_VENV = "~/.edgeai/venv"
INSTALL_TIMEOUT_S = 1800.0   # pip on a Raspberry Pi, from its index
# Runs on the device with stdin as its source: make (or reuse) the venv, say where it is.
MAKE_VENV = r"""
import json, os, sys, venv
folder = os.path.abspath(os.path.expanduser(sys.argv[1]))
python = os.path.join(folder, "bin", "python")
if not os.path.exists(python):
    venv.EnvBuilder(with_pip=True).create(folder)
wheels = os.path.join(folder, "wheels")
os.makedirs(wheels, exist_ok=True)
print(json.dumps({"venv": folder, "python": python, "wheels": wheels, "host_python": sys.version.split()[0]}))
"""


def add_parser(sub) -> None:
    p = sub.add_parser("device", help="get edgeai onto a device: edgeai device setup ssh://HOST",
                       description="Manage the edgeai install on a device.")
    actions = p.add_subparsers(dest="device_command", metavar="ACTION", required=True)
    s = actions.add_parser(
        "setup", help="build this edgeai's wheel, install it with LiteRT in a venv on an ssh device, check it",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  edgeai device setup ssh://pi@raspberrypi.local\n"
               "  edgeai device setup ssh://board --python /usr/bin/python3.11 --wheels wheels-aarch64/")
    s.add_argument("device", metavar="ssh://[USER@]HOST[:PORT]")
    s.add_argument("--python", default="python3", metavar="PATH",
                   help="the device's Python the venv is made with (default python3)")
    s.add_argument("--venv", default=DEFAULT_VENV, metavar="PATH",
                   help=f"where the venv goes on the device (default {DEFAULT_VENV})")
    s.add_argument("--wheels", metavar="DIR",
                   help="install only from the wheels in DIR (copied over; for a board without network)")
    s.add_argument("--ssh-config", metavar="FILE", help="ssh config file read before ~/.ssh/config")
    # --debug / -q after the action too (edgeai's build_parser adds them to `device`, one level up)
    s.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks and debug logs")
    s.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS, help="only print results and errors")
    s.set_defaults(func=cmd_setup)


def cmd_setup(args) -> int:
    if not args.device.startswith("ssh://"):
        raise DeviceError(f"edgeai device setup takes ssh://[USER@]HOST[:PORT], got {args.device!r}")
    device = parse_device(args.device, ssh_config=args.ssh_config, device_python=args.python)
    wheels = _wheel_files(args.wheels) if args.wheels else []
    python = setup(device, args.venv, wheels)
    print(f"edgeai {__version__} is installed on {device.name} in {python}")
    print(f"bench there: edgeai bench MODEL_DIR --device {device.name} --device-python {python}")
    return 0


def setup(device: SshDevice, venv: str, wheels: list[Path]) -> str:
    """Install this edgeai (and LiteRT) in `venv` on the device; the venv's python. `wheels`: the
    only packages pip may use there (offline); empty: the device's own index."""
    from edgeai.bench import ssh
    with tempfile.TemporaryDirectory(prefix="edgeai-setup-") as tmp:
        if device.ssh_config:
            device = replace(device, ssh_config=str(ssh.layered_config(device.ssh_config, Path(tmp))))
        wheel = build_wheel(Path(tmp))
        log.info("making the venv %s on %s", venv, device.name)
        out = ssh.run_remote(device, [device.python, "-", venv], MAKE_VENV, "making the venv", timeout=600)
        where = json.loads(out.strip().splitlines()[-1])
        if not ssh.SAFE_REMOTE_PATH.match(where["wheels"]):
            raise DeviceError(f"{device.name}: the venv path {where['venv']!r} has characters edgeai does not "
                              "pass to scp; choose a plain one with --venv")
        ssh.upload(device, {p.name: p for p in [wheel, *wheels]}, where["wheels"])
        remote_wheel = f"{where['wheels']}/{wheel.name}"
        pip = [where["python"], "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
        if wheels:
            pip += ["--no-index", "--find-links", where["wheels"]]
        log.info("installing %s[litert] on %s (%s)", wheel.name, device.name,
                 "from the copied wheels" if wheels else "from the device's package index")
        ssh.run_remote(device, [*pip, "--force-reinstall", "--no-deps", remote_wheel], "", "installing edgeai",
                       timeout=INSTALL_TIMEOUT_S)
        ssh.run_remote(device, [*pip, f"{remote_wheel}[litert]"], "", "installing edgeai's dependencies",
                       timeout=INSTALL_TIMEOUT_S)
        check(replace(device, python=where["python"]))
    return where["python"]


def check(device: SshDevice) -> dict:
    """edgeai bench's handshake with the device's edgeai: this version and these schemas."""
    from edgeai.bench import ssh
    info = ssh.probe(device, [])
    if info.get("edgeai") != __version__:
        raise DeviceError(f"{device.name}: {device.python} has edgeai {info.get('edgeai')}, not {__version__}")
    ssh.check_schemas(device, info, has_manifests=True)
    return info


def build_wheel(out: Path) -> Path:
    """This edgeai as a wheel in `out`: built from the checkout it runs from (a copy: the checkout gets
    no build/ or egg-info), or the wheel it was installed from."""
    root = checkout_root()
    if root is None:
        wheel = installed_wheel()
        if wheel is None:
            raise DeviceError("this edgeai was installed neither from a checkout nor from a wheel file it can "
                              "find; run edgeai device setup from a checkout (pip install -e .)")
        return Path(shutil.copy(wheel, out / wheel.name))
    src = out / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(root / name, src / name)
    shutil.copytree(root / "edgeai", src / "edgeai", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    log.info("building the edgeai %s wheel from %s", __version__, root)
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                           "--wheel-dir", str(out), str(src)], capture_output=True, text=True)
    wheels = sorted(out.glob("edgeai-*.whl"))
    if proc.returncode != 0 or not wheels:
        last = (proc.stderr.strip().splitlines() or ["no message"])[-1]
        raise DeviceError(f"building the edgeai wheel failed: {last[:300]}")
    return wheels[0]


def _wheel_files(folder: str) -> list[Path]:
    files = sorted(Path(folder).glob("*.whl"))
    if not Path(folder).is_dir() or not files:
        raise DeviceError(f"--wheels {folder!r} is not a folder of .whl files (make one with pip download "
                          "--only-binary=:all: --platform PLATFORM -d DIR numpy onnxruntime rich psutil ai-edge-litert)")
    return files
