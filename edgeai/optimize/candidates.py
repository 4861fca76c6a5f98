"""What `edgeai optimize` tries: candidates (format, model steps, precision), grouped into build units, in search order."""
from __future__ import annotations

import platform
from dataclasses import dataclass
from typing import Mapping

PRECISIONS = {"fp32": "fp32", "fp16": "fp16", "int8-dynamic": "int8", "int8-static": "int8"}
# cheap, likely winners first: INT8 usually wins on CPU; FP16 only shrinks the file there
SCHEME_ORDER = ("int8-static", "int8-dynamic", "fp16")


@dataclass(frozen=True)
class Candidate:
    """One variant to build, verify, score and time: the model steps, then export to `format`, then `scheme`."""

    format: str                                  # "onnx" | "tflite"
    scheme: str                                  # one of SCHEMES
    steps: tuple[Mapping, ...] = ()              # model steps in recipe form: ({"prune": {...}}, {"distill": {}})

    @property
    def id(self) -> str:
        return "/".join([self.format, *([step_label(self.steps)] if self.steps else []), self.scheme])

    @property
    def precision(self) -> str:
        return PRECISIONS[self.scheme]

    def to_dict(self) -> dict:
        return {"format": self.format, "scheme": self.scheme, "steps": [dict(s) for s in self.steps]}


@dataclass(frozen=True)
class Unit:
    """Candidates built by one `edgeai.export` call: the FP32 export of (format, steps) and its quantized variants."""

    format: str
    steps: tuple[Mapping, ...]
    schemes: tuple[str, ...]                     # quantization schemes beside FP32, in search order

    @property
    def candidates(self) -> list[Candidate]:
        return [Candidate(self.format, s, self.steps) for s in ("fp32", *self.schemes)]


@dataclass(frozen=True)
class Skip:
    """A candidate the search will not try, and why (reported with status "skipped")."""

    candidate: Candidate
    reason: str


def step_label(steps: tuple[Mapping, ...]) -> str:
    """({"prune": {"ratio": 0.5}}, {"distill": {"max_minutes": 2}}) -> "prune0.5+distill2m"."""
    parts = []
    for step in steps:
        (name, opts), = step.items()
        opts = opts if isinstance(opts, Mapping) else {}
        if opts.get("ratio") is not None:
            parts.append(f"{name}{opts['ratio']:g}")
        elif name == "distill" and opts.get("max_minutes") is not None:   # the fidelity of a distillation
            parts.append(f"{name}{opts['max_minutes']:g}m")
        else:
            parts.append(name)
    return "+".join(parts)


def step_name(fmt: str, scheme: str) -> str:
    """The artifact step that makes `scheme` in `fmt` (TFLite calls calibrated full INT8 'int8-full')."""
    from edgeai.steps import ARTIFACT_STEPS
    ARTIFACT_STEPS.discover()
    if scheme == "int8-static" and f"{fmt}:int8-static" not in ARTIFACT_STEPS and f"{fmt}:int8-full" in ARTIFACT_STEPS:
        return "int8-full"
    return scheme


def fp16_cannot_win(cpu: Mapping) -> str | None:
    """Why FP16 cannot be faster on this CPU, or None when it might be.

    On x86 neither onnxruntime's CPU provider nor XNNPACK computes in FP16: weights are cast
    back to FP32, so FP16 only halves the file (measured 0.81-1.00x speed on this repo's models).
    Arm cores with FP16 arithmetic (asimdhp) have FP16 kernels.
    """
    flags = set(cpu.get("flags", ()))
    machine = str(cpu.get("machine", platform.machine())).lower()
    if machine in ("aarch64", "arm64") and "asimdhp" in flags:
        return None
    return (f"this CPU ({machine}, no asimdhp FP16 arithmetic) runs FP16 models by casting to FP32: "
            "never faster, only smaller (kept for --objective size)")


def base_plan(formats: tuple[str, ...], objective: str, cpu: Mapping,
              has_calibration: bool) -> tuple[list[Unit], list[Skip]]:
    """The unpruned units, one per format (the first format's FP32 is the baseline)."""
    units, skips = [], []
    fp16_reason = fp16_cannot_win(cpu) if objective != "size" else None
    for fmt in formats:
        schemes = []
        for scheme in SCHEME_ORDER:
            if scheme == "fp16" and fp16_reason:
                skips.append(Skip(Candidate(fmt, scheme), fp16_reason))
            elif scheme == "int8-static" and not has_calibration:
                skips.append(Skip(Candidate(fmt, scheme), "static INT8 needs --calibration data"))
            else:
                schemes.append(scheme)
        units.append(Unit(fmt, (), tuple(schemes)))
    return units, skips


def prune_steps(ratio: float, distill: Mapping | None) -> tuple[Mapping, ...]:
    """Prune by `ratio` of MACs (or as much as the model allows, when less), then distill with `distill`
    options (None: no distillation)."""
    steps: list[Mapping] = [{"prune": {"ratio": ratio, "up_to_limit": True}}]
    if distill is not None:
        steps.append({"distill": dict(distill)})
    return tuple(steps)


def prune_units(fmt: str, ratios: tuple[float, ...], distill: Mapping | None, schemes: tuple[str, ...]) -> list[Unit]:
    """Pruned units in the order of `ratios`; each quantized by `schemes`."""
    return [Unit(fmt, prune_steps(r, distill), schemes) for r in ratios]
