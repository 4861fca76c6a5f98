"""The optimize cache: built candidates and their paired timings, keyed by (model digest, steps, config, versions).

Nothing in the cache is trusted: it is never reached through a link (every folder below the
cache root is checked, every file opened without following links, a planted link is refused
with an error naming it), and a cached candidate is used only while its files still have the
sha256 its manifest recorded (else it is rebuilt).
"""
from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import shutil
import stat
from pathlib import Path
from typing import Any, Mapping

from edgeai import typed
from edgeai.errors import EdgeAIError, OutputError
from edgeai.fsutil import atomic_write_text, check_real_dir, ensure_writable_dir, real_dirs
from edgeai.manifest import MANIFEST_NAME

log = logging.getLogger(__name__)

RESULT_NAME = "result.json"


def digest(*parts: Any) -> str:
    """A stable short hash of JSON-able parts (dict keys sorted)."""
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


class Cache:
    """Folders under `root`: candidates/KEY/ (an export folder + result.json), timings/KEY.json,
    device-scores/KEY.json (accuracy measured on a --device) and work/ (where builds run). `root` is the
    folder the user named (or OUTDIR/.cache, made by real_dirs).

    `read=False` (--no-cache) ignores what is stored and overwrites it; writes are always atomic.
    """

    def __init__(self, root: str | Path, read: bool = True):
        self.root = ensure_writable_dir(root)
        self.read = read

    def candidate_dir(self, key: str) -> Path:
        return self.root / "candidates" / key

    def work_dir(self) -> Path:
        """The folder builds run in (each unit in a folder of its own, removed when it ends)."""
        return real_dirs(self.root, "work")

    def teacher_dir(self) -> Path:
        """Distillation's teacher outputs (float16 .npy keyed by the teacher's weights and the data), shared by
        every pruned candidate distilled from the same model on the same data."""
        return real_dirs(self.root, "teacher")

    def get_built(self, key: str) -> dict | None:
        """The stored result of candidate `key` (with its folder present and intact), or None."""
        if not self.read:
            return None
        folder = self.candidate_dir(key)
        if not os.path.lexists(folder):
            return None
        check_real_dir(real_dirs(self.root, "candidates") / key)
        result = _read_json(folder / RESULT_NAME)
        if result is None:
            return None
        if result.get("folder"):
            problem = _damage(folder)
            if problem:
                log.warning("rebuilding %s: the cached candidate %s", result.get("id", key), problem)
                return None
            result["folder"] = str(folder)  # stored relative: a cache folder can be moved or shared
        return result

    def put_built(self, key: str, result: Mapping) -> None:
        folder = real_dirs(self.root, "candidates", key)
        result = dict(result)
        if result.get("folder"):
            assert Path(result["folder"]).resolve() == folder.resolve(), "a candidate is built in its cache folder"
            result["folder"] = "."
        atomic_write_text(folder / RESULT_NAME, json.dumps(result, indent=2))

    def clear_candidate(self, key: str) -> Path:
        """An empty folder for candidate `key` (a forced rebuild starts clean); a link there is refused."""
        folder = self.candidate_dir(key)
        real_dirs(self.root, "candidates")
        if os.path.lexists(folder):
            shutil.rmtree(check_real_dir(folder))  # rmtree never follows the links inside
        return real_dirs(self.root, "candidates", key)

    def get_timing(self, key: str) -> dict | None:
        if not self.read or not os.path.lexists(self.root / "timings"):
            return None
        return _read_json(real_dirs(self.root, "timings") / f"{key}.json")

    def put_timing(self, key: str, timing: Mapping) -> None:
        atomic_write_text(real_dirs(self.root, "timings") / f"{key}.json", json.dumps(dict(timing)))

    def device_score_path(self, key: str) -> Path:
        return self.root / "device-scores" / f"{key}.json"

    def get_device_score(self, key: str) -> dict | None:
        """A candidate's accuracy measured on a --device (edgeai.optimize.device_accuracy), or None."""
        if not self.read or not os.path.lexists(self.root / "device-scores"):
            return None
        return _read_json(real_dirs(self.root, "device-scores") / f"{key}.json")

    def put_device_score(self, key: str, score: Mapping) -> None:
        atomic_write_text(real_dirs(self.root, "device-scores") / f"{key}.json", json.dumps(dict(score)))


def _read_json(path: Path) -> dict | None:
    """The JSON object in `path`, None when it is missing or unreadable; a link there is refused."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        return None
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise OutputError(f"refusing {str(path)!r}: it is a symbolic link, not a file edgeai made (a link is "
                              "never followed in the cache); remove it and run again") from None
        return None
    try:
        with os.fdopen(fd, "rb") as f:
            data = json.loads(f.read())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _damage(folder: Path) -> str | None:
    """What is wrong with a cached export folder (a file missing, a link, a sha256 that changed), or None."""
    from edgeai.manifest import Manifest

    names = [MANIFEST_NAME]
    try:
        if not stat.S_ISREG(os.lstat(folder / MANIFEST_NAME).st_mode):
            return f"has a {MANIFEST_NAME} that is not a regular file"
        manifest = Manifest.read(folder)
        names += [n for entry in manifest.artifacts for n in entry.files]
        for name in names:
            if not stat.S_ISREG(os.lstat(folder / name).st_mode):
                return f"has {name}, which is not a regular file"
        for entry in manifest.artifacts:
            entry.verify_files(folder)
    except FileNotFoundError as e:
        return f"lacks {Path(e.filename).name}"
    except (OSError, EdgeAIError) as e:
        return f"is damaged or was changed after it was built ({e})"
    return None


class CacheError(EdgeAIError):
    """An entry of the optimize cache does not have the fields this edgeai writes (edited or foreign)."""


def cached_entry(cls: type, data: Any, path: Path):
    """`cls` built from a cache entry read from `path`, each field type-checked; CacheError naming the file."""
    try:
        return typed.build(cls, data)
    except typed.FieldError as e:
        raise CacheError(f"cache entry {str(path)!r} is not one this edgeai wrote ({e}); delete it, or pass "
                         "--no-cache to rebuild and re-time everything") from None
