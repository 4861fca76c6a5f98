"""Builds on a Ray cluster whose nodes are other machines: a job's input files travel as bytes through the object
store, the built candidates come back as bytes, and the driver writes them into the folders it owns."""
from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import os
import re
import shutil
import stat
import tempfile
from dataclasses import fields
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Iterator, Mapping

from edgeai.errors import OutputError
from edgeai.fsutil import atomic_write_bytes, check_real_dir, real_dirs, remove_unlocked
from edgeai.manifest import MANIFEST_NAME
from edgeai.optimize.builder import build_unit, new_unit_dir
from edgeai.optimize.search import Built
from edgeai.recipe import spec_parts

# the recipe's entries that may name a file or folder on the driver (a module:function or hub id stays as it is),
# and a distill step's own metric (steps/N/distill/metric)
FILE_SLOTS = ("model", "arch", "example_inputs", "metric", "data/eval", "data/calibration", "data/train")
_STEP_METRIC = re.compile(r"^steps/\d+/distill/metric$")
_BUILT_FIELDS = {f.name for f in fields(Built)}


@contextlib.contextmanager
def staged_code() -> Iterator[Path]:
    """A temporary folder holding a copy of this edgeai package, for Ray's runtime_env working_dir: every node
    imports the driver's edgeai from it, and Ray then adds none of the driver's own folders to the nodes' path."""
    import edgeai

    with tempfile.TemporaryDirectory(prefix="edgeai-ray-code-") as tmp:
        shutil.copytree(Path(edgeai.__file__).resolve().parent, Path(tmp, "edgeai"),
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        yield Path(tmp)


def safe_parts(rel: Any) -> tuple[str, ...]:
    """The parts of `rel`, a relative POSIX path that stays inside the folder it is written to; anything else
    (absolute, `..`, empty, a backslash or NUL) is refused with OutputError: the other side may be buggy or hostile."""
    if not isinstance(rel, str) or not rel or "\\" in rel or "\0" in rel:
        raise OutputError(f"refusing the shipped file name {rel!r}: not a plain relative path")
    path = PurePosixPath(rel)
    if path.is_absolute() or any(p in ("", ".", "..") for p in rel.split("/")):
        raise OutputError(f"refusing the shipped file name {rel!r}: it would be written outside its folder")
    return path.parts


def _digest(blob: bytes) -> str:
    return hashlib.sha256(blob).hexdigest()


def _slots(recipe: Mapping) -> list[str]:
    steps = recipe.get("steps") or []
    return [*FILE_SLOTS, *(f"steps/{i}/distill/metric" for i, step in enumerate(steps)
                           if isinstance(step, Mapping) and isinstance(step.get("distill"), Mapping))]


def _get(recipe: Any, slot: str):
    for key in slot.split("/"):
        if isinstance(recipe, list) and key.isdigit() and int(key) < len(recipe):
            recipe = recipe[int(key)]
        else:
            recipe = recipe.get(key) if isinstance(recipe, Mapping) else None
    return recipe


def _set(recipe: Any, slot: str, value: str) -> None:
    *parents, last = slot.split("/")
    for key in parents:
        recipe = recipe[int(key)] if isinstance(recipe, list) else recipe[key]
    recipe[last] = value


def local_target(spec: Any) -> tuple[Path, str, str] | None:
    """(the file or folder `spec` names on this machine, the text before it, the text after it), or None when
    it names none: `file.py:func` -> (file.py, '', ':func'), `hf:FOLDER` -> (FOLDER, 'hf:', '')."""
    if not isinstance(spec, str) or not spec:
        return None
    prefix, path, suffix = spec_parts(spec)
    path = Path(path).expanduser()
    return (path, prefix, suffix) if path.exists() else None


def _tree(path: Path, data: bool = False) -> dict[str, Path]:
    """{name relative to path's parent: file} of what loading `path` reads: a file (an ONNX model with its
    external data), the .npy files of a `data` folder, or every file below another folder (an hf: model;
    links to files are read, links to folders are not walked)."""
    if path.is_file():
        files = {path.name: path}
        if path.suffix.lower() == ".onnx":
            from edgeai.exporters.onnx import external_files
            for name in external_files(path):
                safe_parts(name)  # data outside the model's folder is not shipped (export refuses it too)
                files[name] = path.parent / name
        return files
    found = path.glob("*.npy") if data else path.rglob("*")
    return {PurePosixPath(path.name, f.relative_to(path).as_posix()).as_posix(): f for f in sorted(found) if f.is_file()}


class Shipper:
    """The driver's side: each input file put in the object store once (by sha256) however many jobs name it,
    and each job's returned artifacts checked and written into the candidate folders this machine owns."""

    def __init__(self, put: Callable[[bytes], Any]):
        self._put = put
        self._refs: dict[str, Any] = {}                  # sha256 -> object ref
        self._known: dict[tuple, str] = {}               # (path, size, mtime) -> sha256, so a file is read once

    def _ref(self, file: Path) -> tuple[str, Any]:
        st = file.stat()
        key = (str(file.resolve()), st.st_size, st.st_mtime_ns)
        sha = self._known.get(key)
        if sha is None or sha not in self._refs:
            blob = file.read_bytes()
            sha = self._known[key] = _digest(blob)
            self._refs.setdefault(sha, self._put(blob))
        return sha, self._refs[sha]

    def ship(self, job: Mapping[str, Any]) -> tuple[dict, dict[str, str]]:
        """(the job with no path of this machine in it, {slot: the text it named the file by here})."""
        recipe = copy.deepcopy(dict(job["recipe"]))
        files, originals = {}, {}
        for slot in _slots(recipe):
            found = local_target(_get(recipe, slot))
            if found is None:
                continue
            path, prefix, suffix = found
            path = Path(os.path.abspath(path))   # "." or "a/.." named by what they are; links are not followed
            entries = {rel: self._ref(f) for rel, f in _tree(path, data=slot.startswith("data/")).items()}
            tree = _digest(json.dumps(sorted((rel, sha) for rel, (sha, _) in entries.items())).encode())
            files[slot] = {"root": path.name, "prefix": prefix, "suffix": suffix, "tree": tree,
                           "entries": {rel: list(v) for rel, v in entries.items()}}
            spec = _get(recipe, slot)
            originals[slot] = spec[len(prefix):len(spec) - len(suffix)]
            _set(recipe, slot, f"{prefix}shipped:{slot}{suffix}")
        shipped = {"recipe": recipe, "files": files, "ids": dict(job["ids"]), "deadline": job.get("deadline"),
                   "after_distill_s": job.get("after_distill_s", 0.0), "reference": job.get("reference", False)}
        return shipped, originals

    def land(self, out: Any, job: Mapping[str, Any], originals: Mapping[str, str]) -> dict[str, dict]:
        """The unit's results with every built candidate's files written into its folder in job["dests"];
        a candidate whose result or files are refused (a name outside its folder, a sha256 that does not
        match, anything malformed) fails, transient (not cached), and its folder is left empty."""
        shipped = out.get("paths") if isinstance(out, Mapping) else None
        paths = {local: originals[slot] for local, slot in (shipped if isinstance(shipped, Mapping) else {}).items()
                 if isinstance(local, str) and slot in originals}
        returned = out.get("results") if isinstance(out, Mapping) else None
        results = {}
        for cid in job["ids"].values():
            dest = Path(job["dests"][cid])
            try:
                results[cid] = _land_one((returned or {}).get(cid), cid, dest, paths)
            except (OutputError, OSError, AttributeError, TypeError, ValueError, RecursionError) as e:
                shutil.rmtree(dest, ignore_errors=True)
                dest.mkdir()
                results[cid] = {"id": cid, "error": f"its built files were refused: {e}", "transient": True}
        return results


def _land_one(result: Any, cid: str, dest: Path, paths: Mapping[str, str]) -> dict:
    if not isinstance(result, Mapping):
        return {"id": cid, "error": "the Ray task returned no result for it", "transient": True}
    files = result.get("files")
    result = {**_restore({k: v for k, v in result.items() if k in _BUILT_FIELDS}, paths), "id": cid}
    if result.get("error"):
        return {**result, "folder": None}
    if files is None:
        return {"id": cid, "error": "the Ray task returned no files for it", "transient": True}
    write_artifacts(files, dest, paths)
    return {**result, "folder": str(dest)}


def write_artifacts(files: list, dest: Path, paths: Mapping[str, str] | None = None) -> None:
    """Write [(relative name, sha256, bytes)] into `dest`, an empty real folder, manifest last. Every name and
    hash is checked before anything is written; no link is followed (real_dirs, atomic_write_bytes)."""
    check_real_dir(dest)
    checked, seen = [], set()
    for rel, sha, blob in files:
        parts = safe_parts(rel)
        if rel in seen:
            raise OutputError(f"the file {rel!r} came twice")
        if not isinstance(blob, bytes) or _digest(blob) != sha:
            raise OutputError(f"the file {rel!r} does not match its sha256 (damaged on the way)")
        seen.add(rel)
        if rel == MANIFEST_NAME and paths:  # the manifest names the inputs as this machine does
            blob = json.dumps(_restore(json.loads(blob), paths), indent=2).encode()
        checked.append((parts, blob))
    for parts, blob in sorted(checked, key=lambda c: c[0] == (MANIFEST_NAME,)):
        atomic_write_bytes(real_dirs(dest, *parts[:-1]) / parts[-1], blob)


def _restore(value: Any, paths: Mapping[str, str]) -> Any:
    """`value` with each worker path in its strings written as the driver named it."""
    if isinstance(value, str):
        for local in sorted(paths, key=len, reverse=True):
            value = value.replace(local, paths[local])
        return value
    if isinstance(value, Mapping):
        return {k: _restore(v, paths) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_restore(v, paths) for v in value]
    return value


# ---------------------------------------------------------------------------- the worker's side

def unpack(shipped: Mapping[str, Any], folder: Path, get: Callable[[list], list]) -> tuple[dict, dict[str, str]]:
    """(the job build_unit runs, its files written below `folder`; {worker path: slot} to name them back)."""
    recipe = copy.deepcopy(dict(shipped["recipe"]))
    paths, written = {}, set()
    for slot, f in shipped["files"].items():
        if slot not in FILE_SLOTS and not _STEP_METRIC.match(str(slot)):
            raise OutputError(f"the job ships an unknown entry {slot!r}")
        base = real_dirs(folder, "inputs", str(f["tree"])[:16])
        if f["tree"] not in written:
            entries = list(f["entries"].items())
            for (rel, (sha, _)), blob in zip(entries, get([ref for _, (_, ref) in entries])):
                parts = safe_parts(rel)
                if _digest(blob) != sha:
                    raise OutputError(f"the shipped file {rel!r} does not match its sha256 (damaged on the way)")
                atomic_write_bytes(real_dirs(base, *parts[:-1]) / parts[-1], blob)
            written.add(f["tree"])
        local = base / safe_parts(f["root"])[0]
        _set(recipe, slot, f"{f['prefix']}{local}{f['suffix']}")
        paths[str(local)] = slot
    dests = {cid: str(real_dirs(folder, "out", str(i))) for i, cid in enumerate(shipped["ids"].values())}
    job = {"recipe": recipe, "ids": dict(shipped["ids"]), "dests": dests, "work": str(folder / "build"),
           "deadline": shipped.get("deadline"), "after_distill_s": shipped.get("after_distill_s", 0.0),
           "reference": shipped.get("reference", False)}
    return job, paths


def read_artifacts(folder: Path) -> list[list]:
    """[[relative name, sha256, bytes]] of every file below a built candidate's folder (no link is followed)."""
    out = []
    for top, dirs, names in os.walk(folder):
        for name in sorted(names):
            path = Path(top, name)
            if not stat.S_ISREG(os.lstat(path).st_mode):
                raise OutputError(f"{str(path)!r} is not a regular file; a build writes only files")
            blob = path.read_bytes()
            out.append([path.relative_to(folder).as_posix(), _digest(blob), blob])
    return out


def build_shipped(shipped: Mapping[str, Any], get: Callable[[list], list] | None = None) -> dict:
    """The Ray task: unpack the job into a unit folder of this node's own, build it, return
    {"results": {candidate id: Built fields and "files"}, "paths": {worker path: slot}}. The folder is removed
    whatever happens; one left by a task killed outright (a forced cancel) goes with the node's next build."""
    if get is None:
        import ray
        get = ray.get
    root = real_dirs(tempfile.gettempdir(), "edgeai-ray-units")
    remove_unlocked(root.glob("unit-*"))
    folder = lock = None
    try:
        folder, lock = new_unit_dir(root)
        try:
            job, paths = unpack(shipped, folder, get)
        except (OutputError, OSError) as e:  # this node's disk, or a damaged transfer: not the candidate's
            return {"results": {cid: {"id": cid, "error": f"cannot unpack the job on this node: {e}", "transient": True}
                                for cid in shipped["ids"].values()}, "paths": {}}
        results = build_unit(job)
        for result in results.values():
            if result.get("folder"):
                result["files"] = read_artifacts(Path(result["folder"]))
        return {"results": results, "paths": paths}
    finally:
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)
            os.close(lock)


def restore_environ(before: dict[str, str]) -> None:
    """Undo what `ray.init` wrote into os.environ (its auth mode, a breakpoint hook), so later processes this
    one starts (a user's script goes on) do not inherit a finished Ray session's settings."""
    for key in [k for k in os.environ if k not in before]:
        del os.environ[key]
    os.environ.update(before)
