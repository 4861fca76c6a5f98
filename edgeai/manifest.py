"""The manifest that travels with every artifact folder: what each file is and how it was made (stdlib only)."""
from __future__ import annotations

import json
import logging
import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from edgeai import typed
from edgeai.errors import RuntimeLoadError
from edgeai.fsutil import atomic_write_text, sha256_file
from edgeai.specs import TensorSpec

log = logging.getLogger(__name__)

SCHEMA_NAME = "edgeai.manifest"
SCHEMA_VERSION = 2   # 2: a sha256 for every file (extra files too), file names checked on read
SCHEMA = f"{SCHEMA_NAME}/{SCHEMA_VERSION}"
MANIFEST_NAME = "manifest.json"
DIGEST_HINT = "re-export it, or pass --no-verify-digest (Python: verify_digest=False) to skip the check"
NO_VERIFY_HELP = ("do not check the sha256 of an export folder's files against its manifest "
                  "(default: check, and refuse a changed file)")


@dataclass
class ArtifactEntry:
    """One model file in an artifact folder, with everything needed to run and trust it."""

    name: str                      # "fp32", "int8-dynamic", ...
    file: str                      # relative to the folder
    format: str                    # "onnx", "tflite"
    precision: str                 # "fp32", "fp16", "int8", ...
    sha256: str
    size_bytes: int                # model file plus extra files
    inputs: list[dict]
    outputs: list[dict]
    exporter: str = ""
    extra_files: list[str] = field(default_factory=list)
    parity: dict[str, Any] = field(default_factory=dict)
    steps: list[dict] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)  # format-specific (op counts, layout, ...)
    digests: dict[str, str] = field(default_factory=dict)  # sha256 of `file` and each extra file (schema 2)

    @property
    def files(self) -> list[str]:
        """The model file, then its extra files (external data), as plain names inside the folder."""
        return [self.file, *self.extra_files]

    def check_inside(self, folder: str | Path) -> None:
        """Raise RuntimeLoadError when a file of this artifact is a link that leads out of `folder`."""
        base = Path(folder).resolve()
        for name in self.files:
            target = (Path(folder) / name).resolve()
            if target.parent != base:
                raise RuntimeLoadError(f"{str(Path(folder) / name)!r} links to {str(target)!r}, outside the "
                                       "export folder; edgeai only loads files inside it")

    def verify_files(self, folder: str | Path) -> None:
        """Raise RuntimeLoadError unless every file of this artifact has the sha256 the manifest records."""
        expected = {self.file: self.sha256, **self.digests}
        for name in self.files:
            path = Path(folder) / name
            if not path.is_file():
                raise RuntimeLoadError(f"{str(path)!r} is missing: {MANIFEST_NAME} lists it for artifact "
                                       f"{self.name!r}")
            if name in expected and sha256_file(path) != expected[name]:
                raise RuntimeLoadError(f"{str(path)!r} does not match the sha256 in {MANIFEST_NAME} "
                                       f"(changed after export); {DIGEST_HINT}")

    @property
    def input_specs(self) -> list[TensorSpec]:
        return [TensorSpec.from_dict(d) for d in self.inputs]

    @property
    def output_specs(self) -> list[TensorSpec]:
        return [TensorSpec.from_dict(d) for d in self.outputs]


@dataclass
class Manifest:
    source: dict[str, Any]
    artifacts: list[ArtifactEntry]
    versions: dict[str, str]
    created: str
    schema: str = SCHEMA
    failed: list[dict] = field(default_factory=list)  # variants that could not be made: {name, step, error}

    def get(self, name: str | None = None) -> ArtifactEntry:
        if not self.artifacts:
            raise RuntimeLoadError("manifest lists no artifacts")
        if name is None:
            return self.artifacts[0]
        for a in self.artifacts:
            if a.name == name:
                return a
        raise RuntimeLoadError(f"no artifact {name!r} in manifest; known: "
                               f"{', '.join(a.name for a in self.artifacts)}")

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=False) + "\n"

    def write(self, folder: str | Path) -> Path:
        path = Path(folder) / MANIFEST_NAME
        atomic_write_text(path, self.to_json())
        return path

    @classmethod
    def read(cls, folder: str | Path) -> "Manifest":
        """Read and check a manifest: schema, plain file names inside `folder`; unknown keys (from a
        newer edgeai) are ignored with a warning."""
        path = Path(folder) / MANIFEST_NAME
        try:
            data = typed.read_json(path)
            if not isinstance(data, dict):
                raise ValueError("not a JSON object")
            _check_schema(data.get("schema"), path)
            artifacts = data.pop("artifacts", None)
            if not isinstance(artifacts, list):
                raise typed.FieldError("artifacts", f"expected a list of artifacts, got {typed.shown(artifacts)}")
            arts = [_from_dict(ArtifactEntry, a, path, f"artifacts[{i}]") for i, a in enumerate(artifacts)]
            manifest = _from_dict(cls, {**data, "artifacts": arts}, path, "")
            _check_source(manifest.source)
        except FileNotFoundError:
            raise RuntimeLoadError(f"{str(folder)!r} has no {MANIFEST_NAME}; is it an edgeai output folder?") from None
        except OSError as e:
            raise RuntimeLoadError(f"{str(path)!r} cannot be read: {e.strerror or e}") from None
        except (ValueError, TypeError, KeyError, AttributeError) as e:
            raise RuntimeLoadError(f"{str(path)!r} is not a valid edgeai manifest ({e})") from None
        for a in manifest.artifacts:
            for name in a.files:
                if not is_plain_name(name):
                    raise RuntimeLoadError(f"{str(path)!r} names file {name!r} for artifact {a.name!r}; "
                                           "a manifest may only name files inside its folder (tampered?)")
        return manifest


def is_plain_name(name: Any) -> bool:
    """A file name with no folder part: not empty, not '.' or '..', no separator, not absolute."""
    return (isinstance(name, str) and name not in ("", ".", "..") and not re.search(r"[/\\\0]", name)
            and not re.match(r"^[A-Za-z]:", name))


def _check_schema(schema: Any, path: Path) -> None:
    name, _, version = str(schema).partition("/")
    if name != SCHEMA_NAME or not version.isdigit():
        raise ValueError(f"schema is {schema!r}, expected {SCHEMA!r}")
    if int(version) > SCHEMA_VERSION:
        log.warning("%s was written by a newer edgeai (schema %s); reading the fields schema %s knows",
                    path, schema, SCHEMA)


def _from_dict(cls: type, data: Any, path: Path, where: str):
    """`cls` from manifest data, every field type-checked (typed.FieldError names the field)."""
    if not isinstance(data, dict):
        raise typed.FieldError(where, f"expected a mapping, got {typed.shown(data)}")
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        log.warning("%s: ignoring keys this edgeai does not know: %s", path, ", ".join(map(str, unknown)))
    obj = typed.build(cls, data, where, strict=False)
    for key in ("inputs", "outputs") if cls is ArtifactEntry else ():
        _check_specs(getattr(obj, key), f"{where}.{key}")
    return obj


def _check_specs(specs: list, where: str) -> None:
    """Each input/output entry is a tensor spec: name, shape (ints and dim names) and dtype."""
    for i, d in enumerate(specs):
        typed.check_fields(TensorSpec, d, f"{where}[{i}]", strict=False)
        missing = [k for k in ("name", "shape") if k not in d]
        if missing:
            raise typed.FieldError(f"{where}[{i}]", f"has no {' or '.join(missing)}")


def _check_source(source: dict) -> None:
    """The keys of `source` that edgeai reads back (bench sizes dynamic dims from example_dims)."""
    if "example_dims" in source:
        typed.check(source["example_dims"], dict[str, int], "source.example_dims")
    if "inputs" in source:
        typed.check(source["inputs"], list, "source.inputs")
        _check_specs(source["inputs"], "source.inputs")
