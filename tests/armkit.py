"""An aarch64 Python under qemu-user, without root changes: Debian arm64 packages unpacked into a sysroot.

`apt-get download` runs with a private state folder (no `dpkg --add-architecture`, nothing
installed); packages are unpacked with `dpkg -x`; wheels for manylinux aarch64 cp311 go into
SITE with `pip install --target --platform`. qemu-user 7.2 (Debian 12) passes the host's x86
/proc/cpuinfo through, and onnxruntime's cpuinfo crashes on it (SIGSEGV at import); qemu >= 8
emulates an arm /proc/cpuinfo, so when the qemu on PATH is older, qemu-user from
bookworm-backports is downloaded and unpacked the same way.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

SUITE = "bookworm"
# Debian 12's python3.11 (3.11.2) and what numpy/onnxruntime's extension modules link against
PACKAGES = ("libc6", "libgcc-s1", "libstdc++6", "zlib1g", "libexpat1", "libffi8", "libssl3", "libbz2-1.0",
            "liblzma5", "libcrypt1", "libuuid1", "libsqlite3-0", "libpython3.11-minimal",
            "libpython3.11-stdlib", "python3.11-minimal")


class Unavailable(Exception):
    """The sysroot cannot be made here (no apt-get, no network): the caller skips with this reason."""


def _apt(folder: Path, arch: str, source: str, *args: str) -> subprocess.CompletedProcess:
    (folder / "lists" / "partial").mkdir(parents=True, exist_ok=True)
    (folder / "cache" / "archives" / "partial").mkdir(parents=True, exist_ok=True)
    (folder / "sources.list").write_text(source + "\n")
    opts = [f"-o=APT::Architecture={arch}", f"-o=APT::Architectures::={arch}",
            f"-o=Dir::State::Lists={folder / 'lists'}", f"-o=Dir::Cache={folder / 'cache'}",
            f"-o=Dir::Etc::SourceList={folder / 'sources.list'}", "-o=Dir::Etc::SourceParts=/dev/null",
            "-o=Dir::State::status=/dev/null", "-o=APT::Sandbox::User=root"]
    return subprocess.run(["apt-get", "-q", *opts, *args], cwd=folder, capture_output=True, text=True, timeout=600)


def _download(folder: Path, arch: str, source: str, packages: tuple[str, ...]) -> list[Path]:
    if shutil.which("apt-get") is None or shutil.which("dpkg") is None:
        raise Unavailable("apt-get and dpkg are needed to build an arm64 sysroot (Debian/Ubuntu)")
    for args in (("update",), ("download", *packages)):
        proc = _apt(folder, arch, source, *args)
        if proc.returncode != 0:
            raise Unavailable(f"apt-get {args[0]} for {arch} failed: {proc.stderr.strip()[-300:]}")
    return sorted(folder.glob("*.deb"))


def qemu_version(binary: str) -> tuple[int, int]:
    out = subprocess.run([binary, "--version"], capture_output=True, text=True).stdout
    m = re.search(r"version (\d+)\.(\d+)", out)
    return (int(m.group(1)), int(m.group(2))) if m else (0, 0)


def find_qemu(cache: Path) -> str:
    """A qemu-aarch64 >= 8: from PATH, else unpacked from bookworm-backports into `cache`."""
    for name in ("qemu-aarch64-static", "qemu-aarch64"):
        found = shutil.which(name)
        if found and qemu_version(found) >= (8, 0):
            return found
    kept = cache / "qemu-aarch64"
    if not kept.exists():  # keep the one static binary, not the package's other 30 targets
        work = cache / "qemu-debs"
        debs = _download(work, "amd64", f"deb http://deb.debian.org/debian {SUITE}-backports main", ("qemu-user",))
        subprocess.run(["dpkg", "-x", str(debs[0]), str(work / "x")], check=True)
        os.replace(work / "x" / "usr" / "bin" / "qemu-aarch64", kept)
        shutil.rmtree(work)
    return str(kept)


def build(cache: Path, requirements: list[str], constraints: Path) -> tuple[list[str], Path]:
    """(command prefix that runs aarch64 python3.11, site-packages folder with the wheels). Cached in `cache`."""
    if sys.platform != "linux":
        raise Unavailable("qemu-user runs on Linux only")
    root, site = cache / "sysroot", cache / "site"
    if not (root / "usr" / "bin" / "python3.11").exists():
        tmp = cache / "sysroot.partial"
        shutil.rmtree(tmp, ignore_errors=True)
        debs = _download(cache / "debs", "arm64", f"deb [arch=arm64] http://deb.debian.org/debian {SUITE} main",
                         PACKAGES)
        for deb in debs:
            subprocess.run(["dpkg", "-x", str(deb), str(tmp)], check=True)
        tmp.rename(root)
        shutil.rmtree(cache / "debs")
    if not (site / ".complete").exists():
        shutil.rmtree(site, ignore_errors=True)
        proc = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--target", str(site),
                               "--platform", "manylinux_2_28_aarch64", "--python-version", "3.11",
                               "--implementation", "cp", "--only-binary=:all:", "-c", str(constraints),
                               *requirements], capture_output=True, text=True, timeout=600)
        if proc.returncode != 0:
            raise Unavailable(f"pip could not fetch aarch64 wheels: {proc.stderr.strip()[-300:]}")
        (site / ".complete").write_text("")
    return [find_qemu(cache), "-L", str(root), str(root / "usr" / "bin" / "python3.11")], site
