"""Atomic file writes and hashing: an interrupted write never leaves a half-written file (stdlib only)."""
from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from edgeai.errors import OutputError


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write to a temp file in the same folder, fsync, then rename over `path`."""
    path = Path(path)
    ensure_writable_dir(path.parent)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; a published file gets the usual mode
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def ensure_writable_dir(path: str | Path) -> Path:
    """Create `path` if needed and check it is a writable directory, else raise OutputError."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except (OSError, PermissionError) as e:
        raise OutputError(f"cannot create output folder {str(path)!r}: {e.strerror or e}") from None
    if not path.is_dir():
        raise OutputError(f"output {str(path)!r} exists and is not a folder")
    if not os.access(path, os.W_OK | os.X_OK):
        raise OutputError(f"output folder {str(path)!r} is not writable; choose another with -o")
    return path


@contextlib.contextmanager
def staging_dir(final_dir: str | Path) -> Iterator[Path]:
    """A temp folder beside `final_dir`; removed on exit, whatever happens.

    Build every file in it, then `publish` them: nothing reaches `final_dir` unless the
    whole job succeeded.
    """
    final_dir = ensure_writable_dir(final_dir)
    tmp = Path(tempfile.mkdtemp(prefix=".edgeai-staging-", dir=final_dir))
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def publish(staged: Path, final_dir: Path, names: list[str]) -> None:
    """Move staged files into `final_dir` by rename (atomic per file); pass the manifest last."""
    for name in names:
        os.replace(staged / name, Path(final_dir) / name)
