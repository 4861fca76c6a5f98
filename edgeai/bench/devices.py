"""Where a benchmark runs: this machine, an ssh host or an Android phone over adb (`parse_device`)."""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from edgeai.errors import EdgeAIError

LOCAL = "local"
# a host name, IPv4 or an ssh config alias; never starts with "-" (ssh would read an option)
_HOST = re.compile(r"^[A-Za-z0-9_.][A-Za-z0-9_.-]*$")
_SERIAL = re.compile(r"^[A-Za-z0-9_.:-]+$")


class DeviceError(EdgeAIError):
    """The benchmark device cannot be reached, set up or run on."""


@dataclass(frozen=True)
class SshDevice:
    """An ssh host; connection settings come from the user's ssh config (and `ssh_config`)."""

    host: str
    user: str | None = None
    port: int | None = None
    ssh_config: str | None = None     # extra `ssh -F FILE`
    python: str = "python3"           # the device's interpreter that has edgeai installed

    @property
    def name(self) -> str:
        user = f"{self.user}@" if self.user else ""
        port = f":{self.port}" if self.port else ""
        return f"ssh://{user}{self.host}{port}"


@dataclass(frozen=True)
class AdbDevice:
    """An Android device by adb serial, timed by TFLite's benchmark_model binary the user provides."""

    serial: str
    benchmark_binary: str

    @property
    def name(self) -> str:
        return f"adb:{self.serial}"


def parse_device(text: str | None, *, ssh_config: str | None = None, device_python: str | None = None,
                 benchmark_binary: str | None = None) -> SshDevice | AdbDevice | None:
    """`local`/None -> None (this machine); `ssh://[USER@]HOST[:PORT]`; `adb:SERIAL`."""
    if text in (None, "", LOCAL):
        if ssh_config or device_python or benchmark_binary:
            raise DeviceError("--ssh-config, --device-python and --benchmark-binary need --device "
                              "(ssh://HOST or adb:SERIAL)")
        return None
    if text.startswith("ssh://"):
        if benchmark_binary:
            raise DeviceError("--benchmark-binary is for --device adb:SERIAL; an ssh device runs edgeai")
        parts = urlsplit(text)
        try:
            port = parts.port
        except ValueError:
            raise DeviceError(f"bad port in --device {text!r}; expected ssh://[USER@]HOST[:PORT]") from None
        host = parts.hostname or ""
        if not _HOST.match(host) or parts.path not in ("", "/") or parts.password or parts.query:
            raise DeviceError(f"bad --device {text!r}; expected ssh://[USER@]HOST[:PORT], where HOST is a "
                              "host name, an address or a Host alias of your ssh config")
        if parts.username is not None and not _HOST.match(parts.username):
            raise DeviceError(f"bad user name in --device {text!r}")
        if ssh_config and not Path(ssh_config).is_file():
            raise DeviceError(f"--ssh-config {ssh_config!r} does not exist")
        return SshDevice(host, parts.username, port, ssh_config, device_python or "python3")
    if text.startswith("adb:"):
        serial = text[len("adb:"):]
        if not _SERIAL.match(serial):
            raise DeviceError(f"bad --device {text!r}; expected adb:SERIAL as `adb devices` lists it")
        if ssh_config or device_python:
            raise DeviceError("--ssh-config and --device-python are for ssh:// devices")
        if not benchmark_binary:
            raise DeviceError("--device adb:SERIAL needs --benchmark-binary PATH (TFLite's benchmark_model "
                              "built for the phone's ABI, e.g. android_aarch64_benchmark_model)")
        if not Path(benchmark_binary).is_file():
            raise DeviceError(f"--benchmark-binary {benchmark_binary!r} does not exist")
        return AdbDevice(serial, benchmark_binary)
    raise DeviceError(f"unknown --device {text!r}; expected local, ssh://HOST or adb:SERIAL")
