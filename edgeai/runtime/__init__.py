"""On-device runtime: `load(path)` -> Session with `.inputs`, `.outputs`, `.run(feeds)`.

Imports numpy and, when a model is loaded, the one runtime that runs it; never torch.
"""
from __future__ import annotations

from pathlib import Path

from edgeai.errors import RuntimeLoadError
from edgeai.manifest import MANIFEST_NAME, Manifest
from edgeai.runtime.base import RUNTIMES, Session


SUFFIX_FORMATS = {".onnx": "onnx", ".tflite": "tflite"}

__all__ = ["RUNTIMES", "Session", "get_runtime", "load", "resolve"]


def resolve(path: str | Path, artifact: str | None = None, *, verify_digest: bool = True) -> tuple[Path, str]:
    """Map a model file or an edgeai output folder (+ artifact name) to (file, format).

    From a folder, the artifact's files must have the sha256 its manifest records, unless
    `verify_digest` is False.
    """
    path = Path(path)
    if path.is_dir():
        if not (path / MANIFEST_NAME).is_file():
            raise RuntimeLoadError(f"{str(path)!r} is a folder without {MANIFEST_NAME}; pass a model file "
                                   "or an edgeai export folder")
        entry = Manifest.read(path).get(artifact)
        entry.check_inside(path)
        if verify_digest:
            entry.verify_files(path)
        return path / entry.file, entry.format
    if not path.exists():
        raise RuntimeLoadError(f"model {str(path)!r} does not exist")
    fmt = SUFFIX_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise RuntimeLoadError(f"cannot tell the format of {str(path)!r} from its suffix; known: "
                               f"{', '.join(SUFFIX_FORMATS)}")
    return path, fmt


def load(path: str | Path, *, artifact: str | None = None, provider: str = "cpu",
         threads: int | None = None, verify_digest: bool = True, **options) -> Session:
    """Load a .onnx/.tflite file, or one artifact of an edgeai output folder (first by default,
    its files checked against the manifest's sha256 unless `verify_digest` is False). A decoder export
    (manifest kind causal-lm) gives a DecoderSession: `run` as any session, plus `generate`/`stream`."""
    file, fmt = resolve(path, artifact, verify_digest=verify_digest)
    if Path(path).is_dir():  # a causal LM export: a session that also generates (edgeai/runtime/generate.py)
        from edgeai.runtime.generate import DecoderSession, decoder_details
        decoder = decoder_details(Path(path), artifact)
        if decoder is not None:
            return DecoderSession(file, decoder, path, provider=provider, threads=threads, **options)
    if "kv_cache" in options:
        raise RuntimeLoadError(f"{str(path)!r} holds no causal LM (its manifest has no decoder), so it has no "
                               "KV cache; export one with --task text-generation")
    return get_runtime(fmt)(file, provider=provider, threads=threads, **options)


def get_runtime(fmt: str) -> type[Session]:
    """Runtime modules (one file each) register on import and import their runtime lazily."""
    return RUNTIMES.get(fmt)
