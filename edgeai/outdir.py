"""What an export may replace or remove in OUTDIR: only files an earlier export wrote, never its input model."""
from __future__ import annotations

import json
import logging
import os
import stat
from pathlib import Path

from edgeai.errors import EdgeAIError, OutputError
from edgeai.fsutil import sha256_file
from edgeai.manifest import MANIFEST_NAME, SCHEMA_NAME, Manifest, is_plain_name

log = logging.getLogger(__name__)


def input_files(model: str, onnx_path: Path | None) -> set[Path]:
    """The input model's files on disk (with an ONNX model's external data), as absolute paths both
    as named and with symlinks resolved; empty for a factory."""
    path = onnx_path or Path(model)
    if not path.is_file():
        return set()
    files = [path]
    if onnx_path is not None:
        try:
            from edgeai.exporters.onnx import external_files
            files += [path.parent / name for name in external_files(path)]
        except Exception:  # an unreadable ONNX file fails later, with its own message
            pass
    return {p.parent.resolve() / p.name for p in files} | {p.resolve() for p in files}


def check_input_kept(out_dir: Path, names: list[str], protected: set[Path]) -> None:
    """Refuse to write `names` into `out_dir` when one of them is the input model (or its data)."""
    base = out_dir.resolve()
    for name in names:
        if base / name in protected:
            raise OutputError(f"the export would overwrite its input model {str(out_dir / name)!r}; "
                              "choose another folder with -o")


def check_overwrites(out_dir: Path, names: list[str], full: bool = True) -> None:
    """Refuse (OutputError) to replace a file in `out_dir` that edgeai did not write.

    A name may be replaced when nothing is there, or a regular file the folder's manifest lists
    with the sha256 it still has (`full=False`: listed; the early check before any work); the
    manifest itself when it is an edgeai manifest. A link, a folder, a user's own model.onnx or
    an unrelated manifest.json there stops the export before anything is written.
    """
    recorded = _recorded_digests(out_dir)
    for name in names:
        path = out_dir / name
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            continue
        except OSError as e:
            raise OutputError(f"cannot inspect {str(path)!r}: {e.strerror or e}") from None
        if not stat.S_ISREG(st.st_mode):
            why = "it is a symbolic link" if stat.S_ISLNK(st.st_mode) else "it is not a regular file"
        elif name == MANIFEST_NAME:
            why = None if _is_edgeai_manifest(path) else "it is not an edgeai manifest"
        elif name not in recorded:
            why = f"edgeai did not write it ({MANIFEST_NAME} there does not list it)"
        elif full and sha256_file(path) not in recorded[name]:
            why = f"it changed since edgeai wrote it (its sha256 is not the one {MANIFEST_NAME} records)"
        else:
            why = None
        if why:
            raise OutputError(f"refusing to overwrite {str(path)!r}: {why}; move it away or choose another "
                              "folder with -o")


def check_replaceable(folder: Path) -> None:
    """Refuse (OutputError) to replace `folder` as a whole (optimize's best/ and baseline/) unless edgeai
    wrote all of it: absent, or a folder (not a link) holding an edgeai manifest and only files that
    manifest lists with the sha256 they still have."""
    try:
        st = os.lstat(folder)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(st.st_mode):
        what = "a symbolic link" if stat.S_ISLNK(st.st_mode) else "not a folder"
        raise OutputError(f"refusing to replace {str(folder)!r}: it is {what}; move it away or choose another "
                          "folder with -o")
    recorded = _recorded_digests(folder)
    for child in sorted(folder.iterdir()):
        if child.name == MANIFEST_NAME and not child.is_symlink() and _is_edgeai_manifest(child):
            continue
        if (child.is_symlink() or not child.is_file() or child.name not in recorded
                or sha256_file(child) not in recorded[child.name]):
            raise OutputError(f"refusing to replace {str(folder)!r}: edgeai did not write {str(child)!r} (or it "
                              "changed since); move it away or choose another folder with -o")


def _recorded_digests(out_dir: Path) -> dict[str, set[str]]:
    """{file name: sha256s} the folder's manifest records, read leniently: a manifest that fails the
    strict read (a tampered entry) still vouches for the files whose digests it records."""
    try:
        data = json.loads((out_dir / MANIFEST_NAME).read_text())
        artifacts = data.get("artifacts") if isinstance(data, dict) else None
    except (OSError, ValueError):
        return {}
    out: dict[str, set[str]] = {}
    for a in artifacts if isinstance(artifacts, list) else []:
        if not isinstance(a, dict):
            continue
        digests = a.get("digests") if isinstance(a.get("digests"), dict) else {}
        pairs = [(a.get("file"), a.get("sha256")), *digests.items()]
        for name, sha in pairs:
            if is_plain_name(name) and isinstance(sha, str):
                out.setdefault(name, set()).add(sha)
    return out


def _is_edgeai_manifest(path: Path) -> bool:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and str(data.get("schema", "")).partition("/")[0] == SCHEMA_NAME


def removable_old_files(out_dir: Path, keep: set[str], protected: set[Path]) -> list[str]:
    """Files of the folder's previous export that this export does not write again.

    Only names the old manifest lists as plain names (Manifest.read refuses others), only regular
    files (not symlinks) whose content still has the digest that manifest recorded, never the
    input model. When in doubt a file is kept.
    """
    if not (out_dir / MANIFEST_NAME).is_file():
        return []
    try:
        old = Manifest.read(out_dir)
    except EdgeAIError as e:
        log.warning("not removing files of the previous export: %s", e)
        return []
    base = out_dir.resolve()
    stale = []
    for entry in old.artifacts:
        digests = {entry.file: entry.sha256, **entry.digests}
        for name in entry.files:
            path = out_dir / name
            if name in keep or base / name in protected or path.is_symlink() or not path.is_file():
                continue
            if name not in digests or sha256_file(path) != digests[name]:
                log.warning("keeping %s: it is not the file the previous export wrote", path)
                continue
            stale.append(name)
    return stale
