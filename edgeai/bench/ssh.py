"""`edgeai bench --device ssh://HOST`: copy artifacts to a board once (by sha256), time them there, bring back the report.

Transport is the system `ssh` and `scp`, not a Python ssh library: they read the user's
~/.ssh/config (aliases, ProxyJump, keys, agents, known_hosts) exactly as the user's own
`ssh HOST` does, and add no dependency to the device install. Every local command is an
argument list (no local shell). The remote side is a shell command line, so each of its
arguments is quoted with `shlex.quote` (POSIX sh quoting); code and job data travel on stdin,
never in the command line. Three connections per run: probe (what the device has), scp of the
files it lacks, and the agent (`python -m edgeai.bench.agent`) that measures and prints JSON.
"""
from __future__ import annotations

import contextlib
import json
import logging
import re
import shlex
import subprocess
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Iterator, Sequence

from edgeai.bench.devices import DeviceError, SshDevice
from edgeai.bench.results import SCHEMA as BENCH_SCHEMA
from edgeai.bench.results import BenchConfig, BenchReport
from edgeai.bench.targets import Target
from edgeai.errors import RuntimeLoadError
from edgeai.fsutil import sha256_file
from edgeai.manifest import MANIFEST_NAME
from edgeai.manifest import SCHEMA as MANIFEST_SCHEMA
from edgeai.manifest import Manifest

log = logging.getLogger(__name__)

SSH_OPTIONS = ("-o", "BatchMode=yes", "-o", "ConnectTimeout=15")  # never prompt: fail with a message
# Runs on the device with stdin as its source (stdlib only: it must also report a device without edgeai).
PROBE = r"""
import json, os, sys, tempfile
cache = os.path.expanduser(os.environ.get("EDGEAI_DEVICE_CACHE") or "~/.cache/edgeai/device")
blobs = os.path.join(cache, "blobs")
os.makedirs(blobs, exist_ok=True)
have = [s for s in sys.argv[1:] if os.path.isfile(os.path.join(blobs, s))]
out = {"cache": cache, "have": have, "python": sys.version.split()[0], "incoming": None}
if len(have) < len(sys.argv) - 1:
    out["incoming"] = tempfile.mkdtemp(prefix="incoming-", dir=cache)
try:
    import edgeai, edgeai.manifest, edgeai.bench.results, edgeai.bench.agent
    out.update(edgeai=edgeai.__version__, manifest_schema=edgeai.manifest.SCHEMA,
               bench_schema=edgeai.bench.results.SCHEMA)
except ImportError as e:
    out["edgeai_error"] = str(e)
print(json.dumps(out))
"""
SAFE_REMOTE_PATH = re.compile(r"^[A-Za-z0-9_./~+-]+$")


def remote_command(argv: Sequence[str]) -> str:
    """The shell command line ssh sends: each argument quoted, so no argument is ever parsed by the shell."""
    return " ".join(shlex.quote(str(a)) for a in argv)


def layered_config(ssh_config: str, folder: Path) -> Path:
    """An ssh config that reads `ssh_config` first, then the user's and the system's (first value wins),
    so --ssh-config adds to ~/.ssh/config instead of replacing it as a bare `ssh -F` would."""
    path = Path(folder) / "ssh_config"
    files = [Path(ssh_config).resolve(), Path("~/.ssh/config").expanduser(), Path("/etc/ssh/ssh_config")]
    path.write_text("".join(f'Include "{f}"\n' for f in files if f.is_file()))
    return path


def connection_options(device: SshDevice) -> list[str]:
    """Options ssh and scp share: -F the config file; user and port from the ssh:// URL."""
    opts = list(SSH_OPTIONS)
    if device.ssh_config:
        opts += ["-F", str(device.ssh_config)]
    if device.user:
        opts += ["-o", f"User={device.user}"]
    if device.port:
        opts += ["-o", f"Port={device.port}"]
    return opts


def ssh_argv(device: SshDevice, remote_argv: Sequence[str]) -> list[str]:
    return ["ssh", *connection_options(device), "--", device.host, remote_command(remote_argv)]


def run_remote(device: SshDevice, remote_argv: Sequence[str], stdin: str, what: str,
               timeout: float | None = None) -> str:
    """Run `remote_argv` on the device with `stdin`; its stdout, or a DeviceError saying what failed."""
    try:
        proc = subprocess.run(ssh_argv(device, remote_argv), input=stdin, capture_output=True, text=True,
                              timeout=timeout)
    except FileNotFoundError:
        raise DeviceError("the `ssh` client is not installed; install OpenSSH (apt-get install openssh-client)") from None
    except subprocess.TimeoutExpired:
        raise DeviceError(f"{device.name}: {what} did not finish within {timeout:.0f} s") from None
    if proc.returncode == 255:
        raise DeviceError(f"cannot connect to {device.name} over ssh: {_last_line(proc.stderr)}")
    if proc.returncode == 127:
        raise DeviceError(f"{device.name} has no {device.python!r}; pass --device-python with the path of "
                          "the device's Python that has edgeai installed")
    if proc.returncode != 0:
        raise DeviceError(f"{device.name}: {what} failed (exit {proc.returncode}): {_last_line(proc.stderr)}")
    return proc.stdout


def target_files(target: Target) -> list[tuple[str, Path]]:
    """(name on the device, local file) of everything a target needs: an artifact brings its manifest."""
    if target.kind == "file":
        return [(Path(target.path).name, Path(target.path))]
    if target.kind == "artifact":
        folder = Path(target.path)
        entry = Manifest.read(folder).get(target.artifact)
        names = [entry.file, *entry.extra_files, MANIFEST_NAME]
        for name in names:  # checked whatever --no-verify-digest says: a link would upload what it points to
            if (folder / name).is_symlink():
                raise RuntimeLoadError(f"{str(folder / name)!r} is a symbolic link; edgeai uploads only the "
                                       "regular files of an export folder, never what a link points to")
        return [(Path(n).name, folder / n) for n in names]
    raise DeviceError(f"{target.label!r} is a PyTorch model spec; a device runs exported artifacts: "
                      "export it first (edgeai export) and bench the export folder")


def probe(device: SshDevice, shas: Sequence[str]) -> dict:
    """What the device has: cache folder, blobs already there, edgeai version and schemas."""
    out = run_remote(device, [device.python, "-", *shas], PROBE, "probing", timeout=120)
    info = json.loads(out.strip().splitlines()[-1])
    if "edgeai_error" in info:
        raise DeviceError(f"{device.name}: {device.python} cannot import edgeai's device agent "
                          f"({info['edgeai_error']}); install it there: edgeai device setup {device.name}")
    return info


def check_schemas(device: SshDevice, info: dict, has_manifests: bool) -> None:
    """The device's edgeai must read these manifests and write this report schema."""
    version = info.get("edgeai", "?")
    if has_manifests and info.get("manifest_schema") != MANIFEST_SCHEMA:
        raise DeviceError(f"{device.name}: its edgeai {version} reads manifests {info.get('manifest_schema')!r}, "
                          f"these are {MANIFEST_SCHEMA!r}; install this edgeai version on the device")
    if info.get("bench_schema") != BENCH_SCHEMA:
        raise DeviceError(f"{device.name}: its edgeai {version} writes {info.get('bench_schema')!r} reports, "
                          f"this edgeai reads {BENCH_SCHEMA!r}; install this edgeai version on the device")


def upload(device: SshDevice, files: dict[str, Path], incoming: str) -> None:
    """scp each file to INCOMING/SHA256 on the device (the agent checks each hash before using it)."""
    if not SAFE_REMOTE_PATH.match(incoming):  # the device chose it; refuse anything a shell could read
        raise DeviceError(f"{device.name}: unexpected cache path {incoming!r}; set EDGEAI_DEVICE_CACHE there "
                          "to a plain path")
    for sha, local in files.items():
        log.info("upload %s (%d bytes) to %s", local, local.stat().st_size, device.name)
        argv = ["scp", "-q", *connection_options(device), "--", str(local), f"{device.host}:{incoming}/{sha}"]
        proc = subprocess.run(argv, capture_output=True, text=True)
        if proc.returncode != 0:
            raise DeviceError(f"copying {str(local)!r} to {device.name} failed: {_last_line(proc.stderr)}")


@contextlib.contextmanager
def configured(device: SshDevice) -> Iterator[SshDevice]:
    """`device` with its --ssh-config layered over the user's (layered_config), for as long as it is used."""
    if not device.ssh_config:
        yield device
        return
    with tempfile.TemporaryDirectory(prefix="edgeai-ssh-") as tmp:
        yield replace(device, ssh_config=str(layered_config(device.ssh_config, Path(tmp))))


def target_specs(targets: Sequence[Target], blobs: dict[str, Path]) -> list[dict]:
    """{"target", "files": [[name, sha256], ...]} per target, as the agents read them; adds each file to `blobs`."""
    specs = []
    for target in targets:
        files = []
        for name, local in target_files(target):
            sha = sha256_file(local)
            blobs[sha] = local
            files.append([name, sha])
        specs.append({"target": target.to_dict(), "files": files})
    return specs


def send(device: SshDevice, blobs: dict[str, Path], has_manifests: bool) -> dict:
    """Probe the device, check its schemas and copy the blobs it lacks; the job fields "cache" and "incoming"."""
    info = probe(device, list(blobs))
    check_schemas(device, info, has_manifests)
    missing = {sha: path for sha, path in blobs.items() if sha not in set(info["have"])}
    log.info("%s: %d of %d files already there", device.name, len(blobs) - len(missing), len(blobs))
    if missing:
        upload(device, missing, info["incoming"])
    return {"cache": info["cache"], "incoming": info["incoming"] if missing else None}


def bench_over_ssh(targets: Sequence[Target], config: BenchConfig, device: SshDevice) -> BenchReport:
    """Measure every target on the device; the report is the device's, labelled with local names."""
    with configured(device) as device:
        return _bench_over_ssh(targets, config, device)


def _bench_over_ssh(targets: Sequence[Target], config: BenchConfig, device: SshDevice) -> BenchReport:
    blobs: dict[str, Path] = {}
    specs = target_specs(targets, blobs)
    job = {**send(device, blobs, any(t.kind == "artifact" for t in targets)),
           "device": device.name, "config": config.to_dict(), "targets": specs}
    out = run_remote(device, [device.python, "-m", "edgeai.bench.agent"], json.dumps(job), "the benchmark")
    lines = out.strip().splitlines()
    try:
        return BenchReport.from_dict(json.loads(lines[-1]))
    except (IndexError, ValueError, KeyError, TypeError) as e:
        raise DeviceError(f"{device.name}: the device's benchmark printed no report ({e})") from None


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in (text or "").splitlines() if ln.strip()]
    return lines[-1][:300] if lines else "no message"
