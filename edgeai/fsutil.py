"""Atomic file writes and hashing: an interrupted write never leaves a half-written file, and no write
follows a link or replaces a device (stdlib only)."""
from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import shutil
import stat
import tempfile
from pathlib import Path
from typing import Iterable, Iterator

from edgeai.errors import OutputError


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write to a temp file in the same folder, fsync, then rename over `path`.

    Only an absent path or a regular file is replaced: a link, folder, device or FIFO there is
    refused (OutputError), so a rename never swaps out something that is not a file edgeai writes.
    """
    path = Path(path)
    ensure_writable_dir(path.parent)
    _check_replaceable(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; a published file gets the usual mode
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(e, OSError):
            raise disk_error(path, e) or OutputError(f"cannot write {str(path)!r}: {e.strerror or e}") from None
        raise


def write_output(path: str | Path, data: bytes) -> None:
    """Write a file the user named (run -o, bench --json, eval --json, data text -o).

    A regular file (or nothing) is replaced atomically; a character device or FIFO (`-o /dev/null`)
    is opened and written, never replaced; a link, folder, block device or socket is refused.
    """
    path = Path(path)
    st = _lstat(path)
    if st is None or stat.S_ISREG(st.st_mode):
        atomic_write_bytes(path, data)
        return
    check_output_file(path)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_NOFOLLOW | os.O_NOCTTY)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
    except OSError as e:
        raise disk_error(path, e) or OutputError(f"cannot write {str(path)!r}: {e.strerror or e}") from None


def check_output_file(path: str | Path) -> Path:
    """Raise OutputError unless `path` can take a file the user named: absent, a regular file, a
    character device or a FIFO (see write_output); checked before any work so a bad -o fails at once."""
    path = Path(path)
    st = _lstat(path)
    if st is not None and not (stat.S_ISREG(st.st_mode) or stat.S_ISCHR(st.st_mode) or stat.S_ISFIFO(st.st_mode)):
        hint = "give a file name such as out.npz" if stat.S_ISDIR(st.st_mode) else "name a regular file"
        raise OutputError(f"output {str(path)!r} is {_kind(st)}; edgeai writes only regular files, devices "
                          f"and FIFOs there, never through a link: {hint}")
    return path


def _check_replaceable(path: Path) -> None:
    st = _lstat(path)
    if st is not None and not stat.S_ISREG(st.st_mode):
        raise OutputError(f"refusing to replace {str(path)!r}: it is {_kind(st)}, not a file edgeai writes; "
                          "remove it or choose another output")


def _lstat(path: Path) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise OutputError(f"cannot inspect {str(path)!r}: {e.strerror or e}") from None


def _kind(st: os.stat_result) -> str:
    mode = st.st_mode
    for test, name in ((stat.S_ISLNK, "a symbolic link"), (stat.S_ISDIR, "a folder"), (stat.S_ISREG, "a file"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a regular file"


def real_dirs(base: str | Path, *parts: str) -> Path:
    """`base/parts...`, each part made if missing. A part that is a link (or anything but a folder) is
    refused with OutputError naming it: nothing below `base` is ever reached through a link. `base`
    itself is the folder the user named and may be one."""
    path = Path(base)
    for part in parts:
        path = path / part
        try:
            os.mkdir(path)
        except FileExistsError:
            check_real_dir(path)
        except OSError as e:
            raise OutputError(f"cannot create folder {str(path)!r}: {e.strerror or e}") from None
    return path


def check_real_dir(path: str | Path) -> Path:
    """`path` if it is a folder and not a link, else OutputError naming it."""
    st = _lstat(Path(path))
    if st is None or not stat.S_ISDIR(st.st_mode):
        what = "missing" if st is None else _kind(st)
        raise OutputError(f"refusing {str(path)!r}: it is {what}, not a folder edgeai made (a link is never "
                          "followed here); remove it and run again")
    return Path(path)


def copy_new_file(src: str | Path, dst: str | Path) -> None:
    """Copy `src` to `dst`, which must not exist yet: created with O_EXCL | O_NOFOLLOW, so a link or file
    planted at `dst` is refused (OutputError), never written through."""
    try:
        fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o666)
    except OSError as e:
        raise OutputError(f"refusing to write {str(dst)!r}: {e.strerror or e} (something was put there while "
                          "edgeai was writing)") from None
    with os.fdopen(fd, "wb") as out, open(src, "rb") as inp:
        shutil.copyfileobj(inp, out, 1 << 20)


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
    fd = hold_lock(folder, busy=f"another edgeai export is writing to {str(folder)!r}; wait for it to finish "
                                "or choose another folder with -o")
    try:
        yield
    finally:
        os.close(fd)


def hold_lock(folder: Path, busy: str | None = None) -> int:
    """Take an exclusive flock on `folder`, held until the returned descriptor is closed (or the process
    dies); OutputError (`busy`) if another process holds it."""
    import fcntl  # POSIX only: exports run on the workstation, the runtime may run anywhere

    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as e:
        raise OutputError(f"cannot open output folder {str(folder)!r}: {e.strerror or e}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise OutputError(busy or f"{str(folder)!r} is in use by another edgeai process") from None
    return fd


def remove_unlocked(folders: Iterable[Path]) -> None:
    """Remove each folder (not a link) that no live process holds a hold_lock on: left by a killed one."""
    for folder in folders:
        if folder.is_symlink() or not folder.is_dir():
            continue
        try:
            fd = hold_lock(folder)
        except OutputError:
            continue
        try:
            shutil.rmtree(folder, ignore_errors=True)
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
    """Move staged files into `final_dir` by rename (atomic per file); pass the manifest last.

    Every name is checked first (each once, each a regular file in `staged`), so a bad list fails
    before the folder is touched.
    """
    for name in names:
        st = _lstat(staged / name)
        if names.count(name) != 1 or st is None or not stat.S_ISREG(st.st_mode):
            what = "names it twice" if names.count(name) != 1 else "did not stage it as a file"
            raise OutputError(f"cannot publish {name!r} into {str(final_dir)!r}: the export {what}")
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
