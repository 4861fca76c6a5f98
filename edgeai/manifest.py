"""The manifest that travels with every artifact folder: what each file is and how it was made (stdlib only)."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from edgeai.errors import RuntimeLoadError
from edgeai.fsutil import atomic_write_text
from edgeai.specs import TensorSpec

SCHEMA = "edgeai.manifest/1"
MANIFEST_NAME = "manifest.json"


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
        path = Path(folder) / MANIFEST_NAME
        try:
            data = json.loads(path.read_text())
            if data.get("schema") != SCHEMA:
                raise ValueError(f"schema is {data.get('schema')!r}, expected {SCHEMA!r}")
            arts = [ArtifactEntry(**a) for a in data.pop("artifacts")]
            return cls(artifacts=arts, **data)
        except FileNotFoundError:
            raise RuntimeLoadError(f"{str(folder)!r} has no {MANIFEST_NAME}; is it an edgeai output folder?") from None
        except (ValueError, TypeError, KeyError) as e:
            raise RuntimeLoadError(f"{str(path)!r} is not a valid edgeai manifest ({e})") from None
