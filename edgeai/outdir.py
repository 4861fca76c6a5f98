"""What an export may replace or remove in OUTDIR: only files an earlier export wrote, never its input model."""
from __future__ import annotations

import logging
from pathlib import Path

from edgeai.errors import EdgeAIError, OutputError
from edgeai.fsutil import sha256_file
from edgeai.manifest import MANIFEST_NAME, Manifest

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
