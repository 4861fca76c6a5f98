"""Compression step registries: model steps (torch in, torch out) and artifact steps (file in, file out).

Each step is a frozen dataclass config plus one registered handler, in one file of this package.
- MODEL_STEPS["prune"] = ModelStep(config_cls, fn) with fn(module, example_inputs, config, ctx) -> (module, StepReport)
- ARTIFACT_STEPS["onnx:int8-static"] = ArtifactStep(config_cls, fn) with fn(src_path, dst_path, config, ctx) -> StepReport
`ctx` is a StepContext: the data a step may need (calibration feeds, eval data, teacher, ...).
"""
from __future__ import annotations

import contextlib
import contextvars
import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable

from edgeai.registry import Registry


@dataclass
class StepReport:
    """What a step did, for the manifest and the summary table."""

    step: str                                         # registry key, e.g. "onnx:int8-dynamic"
    config: dict[str, Any]                            # config_to_dict(config)
    notes: list[str] = field(default_factory=list)    # things the user must read (e.g. "LSTM left in FP32")
    details: dict[str, Any] = field(default_factory=dict)  # numbers: ops quantized, sparsity per layer, ...


@dataclass
class StepContext:
    """Data steps may need; every field is optional and a step that needs a missing one raises DataError."""

    calibration: Any = None           # {input name: np.ndarray (N, ...)}, or anything edgeai.data.load_feeds takes
    eval_data: dict | None = None     # {input name: array, optionally "labels": array}
    train_data: dict | None = None
    teacher: Any = None               # torch.nn.Module for distillation
    input_specs: list | None = None   # list[TensorSpec]
    extra: dict[str, Any] = field(default_factory=dict)


_STEP_EXTRAS: contextvars.ContextVar[dict] = contextvars.ContextVar("edgeai_step_extras", default={})


@contextlib.contextmanager
def step_extras(**extras: Any):
    """Extra StepContext.extra for the model steps of the exports run inside (e.g. optimize's `teacher_cache`,
    the folder where distillation keeps teacher outputs for the next candidate); None values are left out."""
    token = _STEP_EXTRAS.set({**_STEP_EXTRAS.get(), **{k: v for k, v in extras.items() if v is not None}})
    try:
        yield
    finally:
        _STEP_EXTRAS.reset(token)


def step_extras_now() -> dict[str, Any]:
    """What the innermost `step_extras` set ({} outside one)."""
    return dict(_STEP_EXTRAS.get())


@dataclass(frozen=True)
class ModelStep:
    config_cls: type
    fn: Callable[..., Any]


@dataclass(frozen=True)
class ArtifactStep:
    config_cls: type
    fn: Callable[..., StepReport]
    precision: str = ""   # precision of the artifact it produces ("fp16", "int8")


class VariantNotKept(Exception):
    """An artifact step chose not to keep its variant (e.g. a fusion that is not faster); the
    pipeline leaves the variant out and records the reason, like a failed variant."""


MODEL_STEPS: Registry[ModelStep] = Registry("model step", package=__name__)
ARTIFACT_STEPS: Registry[ArtifactStep] = Registry("artifact step", package=__name__)


def config_to_dict(config: Any) -> dict[str, Any]:
    """A config dataclass as plain JSON-able data, tagged with its type."""
    data = dataclasses.asdict(config)
    return {"type": type(config).__name__, **{k: list(v) if isinstance(v, tuple) else v for k, v in data.items()}}


def get_model_step(name: str) -> ModelStep:
    return MODEL_STEPS.get(name)


# Scheme names mean the same in every format; an alias is looked up (and files named) as its canonical name.
SCHEME_ALIASES = {"int8-full": "int8-static"}


def canonical_scheme(name: str) -> str:
    """'int8-full' -> 'int8-static'; other names unchanged."""
    return SCHEME_ALIASES.get(name, name)


def get_artifact_step(name: str) -> ArtifactStep:
    """ARTIFACT_STEPS["<format>:<scheme>"], the scheme's alias resolved."""
    fmt, sep, scheme = name.rpartition(":")
    return ARTIFACT_STEPS.get(f"{fmt}{sep}{canonical_scheme(scheme)}")
