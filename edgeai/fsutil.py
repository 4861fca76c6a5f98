"""Atomic file writes and hashing: an interrupted write never leaves a half-written file (stdlib only)."""
from __future__ import annotations

import contextlib
import errno
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
    _check_writable_dir(path)
    return path


def _check_writable_dir(path: Path) -> None:
    if not path.is_dir():
        raise OutputError(f"output {str(path)!r} exists and is not a folder")
    if not os.access(path, os.W_OK | os.X_OK):
        raise OutputError(f"output folder {str(path)!r} is not writable; choose another with -o")


STAGING_PREFIX = ".edgeai-staging-"


def check_output_target(path: str | Path) -> Path:
    """Check that `path` is, or can be made, a writable folder, creating nothing; else raise OutputError."""
    path = Path(path)
    if path.exists():
        if not path.is_dir():
            raise OutputError(f"output {str(path)!r} exists and is not a folder")
        existing = path
    else:
        existing = next((p for p in path.absolute().parents if p.exists()), None)
        if existing is None or not existing.is_dir():
            raise OutputError(f"cannot create output folder {str(path)!r}: {str(existing)!r} is not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        if existing == path:
            raise OutputError(f"output folder {str(path)!r} is not writable; choose another with -o")
        raise OutputError(f"cannot create output folder {str(path)!r}: {str(existing)!r} is not writable")
    if existing == path:  # fail before loading the model when another export holds the folder now
        with _locked(path):
            pass
    return path


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    """Hold an exclusive flock on `folder` (the lock goes with the descriptor); OutputError if taken."""
    import fcntl  # POSIX only: exports run on the workstation, the runtime may run anywhere

    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as e:
        raise OutputError(f"cannot open output folder {str(folder)!r}: {e.strerror or e}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise OutputError(f"another edgeai export is writing to {str(folder)!r}; wait for it to finish "
                              "or choose another folder with -o") from None
        yield
    finally:
        os.close(fd)


@contextlib.contextmanager
def locked_staging(final_dir: str | Path) -> Iterator[Path]:
    """Create `final_dir`, hold an exclusive lock on it, and yield a fresh staging folder inside it.

    Build every file in the staging folder, then `publish` them: nothing reaches `final_dir`
    unless the whole job succeeded. A second export into the same folder fails at once while
    this one holds the lock. Staging folders left by a killed export are removed (no live
    export can own them: it would hold the lock). If the job fails, the folders this call
    created (`final_dir` and any new parents) are removed again, and nothing else.
    """
    final_dir = Path(final_dir)
    created = _make_dirs(final_dir)
    try:
        with _locked(final_dir):
            for stale in final_dir.glob(f"{STAGING_PREFIX}*"):
                if stale.is_dir() and not stale.is_symlink():
                    shutil.rmtree(stale, ignore_errors=True)
            tmp = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=final_dir))
            try:
                yield tmp
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        _remove_created(created)
        raise


def _make_dirs(path: Path) -> list[Path]:
    """mkdir -p `path`; returns the folders it created, deepest first."""
    missing = []
    p = path
    while not p.exists() and p != p.parent:
        missing.append(p)
        p = p.parent
    created = []
    try:
        for d in reversed(missing):
            try:
                d.mkdir()
            except FileExistsError:  # made by someone else meanwhile: not ours to remove
                continue
            created.insert(0, d)
    except OSError as e:
        _remove_created(created)
        raise OutputError(f"cannot create output folder {str(path)!r}: {e.strerror or e}") from None
    _check_writable_dir(path)
    return created


def _remove_created(created: list[Path]) -> None:
    """Remove folders this process created (deepest first), each only if it is empty by then."""
    for d in created:
        with contextlib.suppress(OSError):
            d.rmdir()


def publish(staged: Path, final_dir: Path, names: list[str]) -> None:
    """Move staged files into `final_dir` by rename (atomic per file); pass the manifest last."""
    for name in names:
        os.replace(staged / name, Path(final_dir) / name)


# errno values that say the disk, not the user's path, is the problem: one-line errors, not tracebacks
DISK_ERRORS = {errno.ENOSPC: "no space left on the device", errno.EDQUOT: "disk quota exceeded",
               errno.EROFS: "the file system is read-only", errno.EFBIG: "the file is too large for the file system"}


def disk_error(path: str | Path | None, e: OSError) -> OutputError | None:
    """The OutputError for a write to `path` that failed because the disk is full (or similar), else None."""
    reason = DISK_ERRORS.get(e.errno)
    if reason is None:
        return None
    where = f"cannot write {str(path)!r}" if path else "cannot write the output"
    return OutputError(f"{where}: {reason} ({errno.errorcode[e.errno]}); free some space or write elsewhere "
                       "(nothing was replaced)")


@contextlib.contextmanager
def reporting_disk_errors(path: str | Path) -> Iterator[None]:
    """Turn a full disk (ENOSPC, EDQUOT, EROFS, EFBIG) while writing `path` into an OutputError naming it."""
    try:
        yield
    except OSError as e:
        error = disk_error(path, e)
        if error is None:
            raise
        raise error from None
