"""The optimize cache: built candidates and their paired timings, keyed by (model digest, steps, config, versions)."""
from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path
from typing import Any, Mapping

from edgeai import typed
from edgeai.errors import EdgeAIError
from edgeai.fsutil import atomic_write_text, ensure_writable_dir

log = logging.getLogger(__name__)

RESULT_NAME = "result.json"


def digest(*parts: Any) -> str:
    """A stable short hash of JSON-able parts (dict keys sorted)."""
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


class Cache:
    """Folders under `root`: candidates/KEY/ (an export folder + result.json) and timings/KEY.json.

    `read=False` (--no-cache) ignores what is stored and overwrites it; writes are always atomic.
    """

    def __init__(self, root: str | Path, read: bool = True):
        self.root = ensure_writable_dir(root)
        self.read = read

    def candidate_dir(self, key: str) -> Path:
        return self.root / "candidates" / key

    def get_built(self, key: str) -> dict | None:
        """The stored result of candidate `key` (with its folder present), or None."""
        if not self.read:
            return None
        folder = self.candidate_dir(key)
        try:
            result = json.loads((folder / RESULT_NAME).read_text())
        except (OSError, ValueError):
            return None
        if result.get("folder"):
            if not (folder / "manifest.json").is_file():
                return None  # a failed build has no folder; a built one must still be whole
            result["folder"] = str(folder)  # stored relative: a cache folder can be moved or shared
        return result

    def put_built(self, key: str, result: Mapping) -> None:
        folder = self.candidate_dir(key)
        result = dict(result)
        if result.get("folder"):
            assert Path(result["folder"]).resolve() == folder.resolve(), "a candidate is built in its cache folder"
            result["folder"] = "."
        atomic_write_text(ensure_writable_dir(folder) / RESULT_NAME, json.dumps(result, indent=2))

    def clear_candidate(self, key: str) -> Path:
        """An empty folder for candidate `key` (a forced rebuild starts clean)."""
        folder = self.candidate_dir(key)
        shutil.rmtree(folder, ignore_errors=True)
        return ensure_writable_dir(folder)

    def get_timing(self, key: str) -> dict | None:
        if not self.read:
            return None
        try:
            return json.loads((self.root / "timings" / f"{key}.json").read_text())
        except (OSError, ValueError):
            return None

    def put_timing(self, key: str, timing: Mapping) -> None:
        atomic_write_text(ensure_writable_dir(self.root / "timings") / f"{key}.json", json.dumps(dict(timing)))


class CacheError(EdgeAIError):
    """An entry of the optimize cache does not have the fields this edgeai writes (edited or foreign)."""


def cached_entry(cls: type, data: Any, path: Path):
    """`cls` built from a cache entry read from `path`, each field type-checked; CacheError naming the file."""
    try:
        return typed.build(cls, data)
    except typed.FieldError as e:
        raise CacheError(f"cache entry {str(path)!r} is not one this edgeai wrote ({e}); delete it, or pass "
                         "--no-cache to rebuild and re-time everything") from None
