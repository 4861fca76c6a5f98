"""Turn what the user named (files, export folders, FOLDER@NAME, model specs) into benchmark targets."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

from edgeai.errors import EdgeAIError, RuntimeLoadError
from edgeai.manifest import MANIFEST_NAME, Manifest
from edgeai.runtime import SUFFIX_FORMATS

# --runtime NAME -> the artifact format it runs ("auto" runs each format in its own runtime)
RUNTIME_FORMATS = {"onnxruntime": "onnx", "tflite": "tflite"}
_WHAT = ("a .onnx/.tflite file, an edgeai export folder (FOLDER or FOLDER@ARTIFACT), "
         "or with --runtime torch a model spec such as 'edgeai.zoo:digits_cnn'")


@dataclass(frozen=True)
class Target:
    """One thing to time, in the order the report lists it."""

    label: str                      # how tables and JSON name it
    kind: str                       # "file", "artifact" (of an export folder), "model_spec", "module"
    path: str                       # file, folder, or model spec text
    format: str                     # "onnx", "tflite", "torch"
    artifact: str | None = None     # artifact name within an export folder
    size_bytes: int | None = None   # file size, or the manifest's size_bytes (model + extra files)
    example_dims: dict = field(default_factory=dict)  # dynamic dim sizes the model was exported with

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping) -> "Target":
        return cls(**d)


def expand_targets(specs: Sequence[str | Path], runtime: str = "auto", *, verify_digest: bool = True) -> list[Target]:
    """Every target in order; an export folder yields each artifact of its manifest, in manifest order,
    its files checked against the manifest's sha256 unless `verify_digest` is False."""
    if not specs:
        raise RuntimeLoadError(f"nothing to benchmark; pass {_WHAT}")
    if runtime == "torch":
        return [_model_spec(str(s)) for s in specs]
    targets = [t for s in specs for t in _artifacts(str(s), verify_digest)]
    want = RUNTIME_FORMATS.get(runtime)
    for t in targets:
        if want and t.format != want:
            raise RuntimeLoadError(f"--runtime {runtime} runs {want} models, but {t.label!r} is {t.format}; "
                                   "use --runtime auto to run each model in its own runtime")
    return targets


def _artifacts(text: str, verify_digest: bool) -> list[Target]:
    folder, _, name = text.rpartition("@")
    if folder and Path(folder).is_dir():       # FOLDER@ARTIFACT
        path, names = Path(folder), [name]
    else:
        path, names = Path(text), None
    if path.is_dir():
        manifest = Manifest.read(path)
        entries = [manifest.get(n) for n in names] if names else manifest.artifacts
        if not entries:
            raise RuntimeLoadError(f"{str(path)!r}: {MANIFEST_NAME} lists no artifacts")
        for e in entries if verify_digest else []:
            e.verify_files(path)
        base = str(path).rstrip("/") or "/"
        dims = dict(manifest.source.get("example_dims", {}))
        return [Target(f"{base}@{e.name}", "artifact", str(path), e.format, e.name, e.size_bytes, dims)
                for e in entries]
    if not path.is_file():
        raise RuntimeLoadError(f"target {text!r} does not exist; pass {_WHAT}")
    fmt = SUFFIX_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise RuntimeLoadError(f"cannot benchmark {text!r}: its suffix is not one of {', '.join(SUFFIX_FORMATS)}; "
                               "for a PyTorch model pass --runtime torch")
    return [Target(text, "file", str(path), fmt, None, path.stat().st_size, _exported_dims(path))]


def _exported_dims(path: Path) -> dict:
    """The dynamic dim sizes a file was exported with, from the manifest of the folder holding it."""
    if not (path.parent / MANIFEST_NAME).is_file():
        return {}
    try:
        manifest = Manifest.read(path.parent)
    except EdgeAIError:  # a broken manifest beside a model file: the file still runs
        return {}
    if not any(e.file == path.name for e in manifest.artifacts):
        return {}
    return dict(manifest.source.get("example_dims", {}))


def _model_spec(text: str) -> Target:
    path = Path(text.rpartition("@")[0] or text)  # FOLDER@ARTIFACT names its folder
    if path.is_dir() or path.suffix.lower() in SUFFIX_FORMATS:
        raise RuntimeLoadError(f"--runtime torch benchmarks PyTorch model specs (e.g. 'edgeai.zoo:digits_cnn' "
                               f"or model.pt), but {text!r} is an exported artifact; use --runtime auto")
    return Target(text, "model_spec", text, "torch")
