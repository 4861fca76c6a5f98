"""Verify an artifact: run it in its own runtime and compare with the reference on several shapes."""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Mapping

import numpy as np

from edgeai.errors import EdgeAIError, VerificationError
from edgeai.source import ModelSource
from edgeai.specs import SECOND_SHAPE_DELTA, TensorSpec, dim_sizes, non_finite, resize_along

log = logging.getLogger(__name__)

Runner = Callable[[Mapping[str, np.ndarray]], list[np.ndarray]]


@dataclass(frozen=True)
class Tolerance:
    """An output passes when max|a - ref| <= atol + rtol * max|ref| and cosine >= min_cosine."""

    atol: float = 1e-4
    rtol: float = 1e-3
    min_cosine: float = 0.9999


FP32_TOLERANCE = Tolerance()
FP16_TOLERANCE = Tolerance(atol=1e-2, rtol=1e-2, min_cosine=0.999)
# quantized artifacts are judged by their task metric; parity only guards against a broken graph
QUANTIZED_TOLERANCE = Tolerance(atol=float("inf"), rtol=0.0, min_cosine=0.9)


def feed_sets(source: ModelSource, frozen: set[str] = frozenset()) -> list[tuple[dict[str, int], dict[str, np.ndarray]]]:
    """The example feeds, then one set per dynamic dim resized to another size (values tiled).

    The other size stays within the model's own limit for that dim (`max_dims` in the source's
    provenance, e.g. a Transformer's position table): larger when it fits, else smaller.
    """
    examples = source.example_inputs
    sizes = dim_sizes(source.input_specs, examples)
    limits = dict(source.provenance.get("max_dims") or {})
    sets = [(sizes, dict(examples))]
    for dim, size in sizes.items():
        new = second_size(size, limits.get(dim))
        if dim in frozen or new is None:
            continue
        feeds = {}
        for spec in source.input_specs:
            arr = examples[spec.name]
            for axis, d in enumerate(spec.shape):
                if d == dim:
                    arr = resize_along(arr, axis, new)
            feeds[spec.name] = arr
        sets.append(({**sizes, dim: new}, feeds))
    return sets


def second_size(size: int, limit: int | None) -> int | None:
    """The size a dynamic dim is checked at besides `size`: size + delta, or size - delta when that
    would pass `limit`; None when no other size >= 2 fits (exporters specialise size-1 dims)."""
    if limit is None or size + SECOND_SHAPE_DELTA <= limit:
        return size + SECOND_SHAPE_DELTA
    smaller = max(2, min(size, limit) - SECOND_SHAPE_DELTA)
    return smaller if smaller != size else None


def torch_runner(module) -> Runner:
    import torch

    from edgeai.exporters import flatten_outputs

    def run(feeds):
        args = [torch.from_numpy(np.array(v, copy=True)) for v in feeds.values()]
        with torch.inference_mode():
            out = module(*args)
        return [t.detach().cpu().numpy() for t in flatten_outputs(out)]
    return run


def session_runner(session) -> Runner:
    names = [o.name for o in session.outputs]

    def run(feeds):
        out = session.run(feeds)
        return [out[n] for n in names]
    return run


@dataclass(frozen=True)
class ArtifactHandle:
    """A model file ready to be run on feeds in the PyTorch layout (NCHW), in or out of process."""

    path: Path
    format: str
    inputs: list[TensorSpec]     # as the artifact declares them (its own layout, e.g. NHWC)
    outputs: list[TensorSpec]
    run_many: Callable[[list[Mapping[str, np.ndarray]]], list[list[np.ndarray]]]
    isolated: bool = False       # runs in a child process: batch feed sets into one call


def to_artifact_layout(feeds: Mapping[str, np.ndarray], layout: Mapping | None) -> dict[str, np.ndarray]:
    """NCHW -> NHWC for the inputs an exporter made channels-last (layout["channels_last_inputs"])."""
    nhwc = set((layout or {}).get("channels_last_inputs", ()))
    return {k: (np.ascontiguousarray(v.transpose(0, 2, 3, 1)) if k in nhwc else v) for k, v in feeds.items()}


def open_artifact(path: Path, fmt: str, layout: Mapping | None = None, isolate: bool = False) -> ArtifactHandle:
    """Open `path` in its runtime, in a child process when `isolate` or the runtime is crash-prone.

    Isolation turns a runtime that crashes on a model (LiteRT aborts; onnxruntime has segfaulted
    optimizing FP16 graphs) into a RuntimeLoadError instead of killing this process.
    """
    from edgeai.runtime import get_runtime

    cls = get_runtime(fmt)
    isolate = isolate or cls.crash_prone
    nhwc_out = set((layout or {}).get("channels_last_outputs", ()))

    def outputs_of(result: Mapping[str, np.ndarray], specs: list[TensorSpec]) -> list[np.ndarray]:
        # NHWC -> NCHW for outputs the exporter made channels-last, to compare with PyTorch
        return [result[s.name].transpose(0, 3, 1, 2) if s.name in nhwc_out else result[s.name] for s in specs]

    if isolate:
        from edgeai.runtime.subproc import run_isolated_many
        inputs, outputs = cls.read_specs(path)

        def run_many(sets):
            results = run_isolated_many(path, [to_artifact_layout(f, layout) for f in sets], fmt=fmt)
            return [outputs_of(r, outputs) for r in results]
    else:
        session = cls(path)
        inputs, outputs = session.inputs, session.outputs

        def run_many(sets):
            return [outputs_of(session.run(to_artifact_layout(f, layout)), outputs) for f in sets]
    return ArtifactHandle(Path(path), fmt, inputs, outputs, run_many, isolate)


def reference_runner(source: ModelSource) -> tuple[Runner, str]:
    if source.module is not None:
        return torch_runner(source.module), "pytorch"
    from edgeai.runtime.onnx import OnnxSession
    return (session_runner(OnnxSession(source.onnx_path, optimization="none")),
            "onnxruntime without graph optimizations")


def compare(ref: list[np.ndarray], got: list[np.ndarray], names: list[str]) -> dict:
    """Per-output max abs error, error relative to max|ref|, and cosine similarity."""
    if len(ref) != len(got):
        raise VerificationError(f"artifact has {len(got)} outputs, reference has {len(ref)}")
    per = {}
    for name, r, g in zip(names, ref, got):
        r64, g64 = np.asarray(r, dtype=np.float64), np.asarray(g, dtype=np.float64)
        if r64.shape != g64.shape:
            raise VerificationError(f"output {name!r} has shape {g64.shape}, reference {r64.shape}")
        bad = non_finite(g64)
        if bad:  # the reference is finite (verify checks it first): the artifact broke
            per[name] = {"max_abs": float("inf"), "max_rel": float("inf"), "cosine": float("nan"), "ref_max": 0.0,
                         "non_finite": bad}
            continue
        err = float(np.max(np.abs(r64 - g64))) if r64.size else 0.0
        scale = float(np.max(np.abs(r64))) if r64.size else 0.0
        per[name] = {"max_abs": err, "max_rel": err / max(scale, 1e-12), "ref_max": scale,
                     "cosine": _cosine(r64, g64)}
    return per


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel(), b.ravel()
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if na == 0 and nb == 0:
        return 1.0
    return float(a @ b / max(na * nb, 1e-30))


def passes(errors: Mapping, tol: Tolerance) -> bool:
    """Every output within the error bound and the cosine floor (cosine is waived only where the
    outputs are all but zero, as it means nothing there)."""
    return all(e["max_abs"] <= tol.atol + tol.rtol * e["ref_max"] and
               (e["cosine"] >= tol.min_cosine or e["max_abs"] <= TINY or e["ref_max"] <= TINY)
               for e in errors.values())


TINY = 1e-6


@dataclass(frozen=True)
class Parity:
    passed: bool
    reference: str
    tolerance: Tolerance
    checks: list[dict]          # one per shape: {"dims": {...}, "outputs": {name: errors}}
    frozen_dims: list[str]      # dynamic dims the artifact fixed (checked only at the example size)

    @property
    def max_abs(self) -> float:
        return max((e["max_abs"] for c in self.checks for e in c["outputs"].values()), default=0.0)

    @property
    def max_rel(self) -> float:
        return max((e["max_rel"] for c in self.checks for e in c["outputs"].values()), default=0.0)

    @property
    def min_cosine(self) -> float:
        return min((e["cosine"] for c in self.checks for e in c["outputs"].values()), default=1.0)

    def to_dict(self) -> dict:
        return {"passed": self.passed, "reference": self.reference, "max_abs": self.max_abs,
                "max_rel": self.max_rel, "min_cosine": self.min_cosine,
                "tolerance": asdict(self.tolerance), "frozen_dims": self.frozen_dims,
                "checks": self.checks}

    def failure(self) -> str:
        for c in self.checks:
            for name, e in c["outputs"].items():
                if not passes({name: e}, self.tolerance):
                    dims = _dims_text(c["dims"]).replace("samples=", "eval samples ")  # "at eval samples 2-3, batch=2"
                    if e.get("non_finite"):
                        return f"output {name!r} at {dims}: the artifact outputs {e['non_finite']}, the reference none"
                    return (f"output {name!r} at {dims}: max abs error {e['max_abs']:.3g} "
                            f"(max |ref| {e['ref_max']:.3g}), cosine {e['cosine']:.6f}; tolerance "
                            f"atol {self.tolerance.atol:g} + rtol {self.tolerance.rtol:g}, "
                            f"cosine >= {self.tolerance.min_cosine:g}")
        return "passed"


def sample_sets(source: ModelSource, samples: Mapping[str, np.ndarray] | None) -> list[tuple[dict, dict]]:
    """Up to MAX_SAMPLE_BATCHES batches of real samples, each the size of the example batch:
    ({"samples": "2-3", dims...}, feeds). A branch on a batch's values is taken per batch, so small
    batches of real data reach the branches the examples did not."""
    if not samples or any(s.name not in samples for s in source.input_specs):
        return []
    feeds = {s.name: samples[s.name] for s in source.input_specs}
    step = max(1, len(next(iter(source.example_inputs.values()))))
    total = min(len(v) for v in feeds.values())
    sets = []
    for start in range(0, min(total, step * MAX_SAMPLE_BATCHES) - step + 1, step):
        chunk = {k: v[start:start + step] for k, v in feeds.items()}
        sets.append(({"samples": f"{start}-{start + step - 1}", **dim_sizes(source.input_specs, chunk)}, chunk))
    return sets


MAX_SAMPLE_BATCHES = 8    # batches of eval samples an FP32 artifact is also verified on


def verify(source: ModelSource, artifact: ArtifactHandle, tolerance: Tolerance = FP32_TOLERANCE,
           allow_frozen: bool = False, reference: tuple[Runner, str] | None = None,
           samples: Mapping[str, np.ndarray] | None = None) -> Parity:
    """Compare the artifact with the reference on the example shape, every other dynamic size and, when
    `samples` (eval data) are given, on batches of them (sample_sets).

    A dynamic dim the artifact fixed fails verification (the exporter froze it) unless
    `allow_frozen` (formats with static shapes, e.g. TFLite), where it is recorded.
    """
    ref_run, ref_name = reference or reference_runner(source)
    art_dims = {d for s in artifact.inputs for d in s.shape if isinstance(d, str)}
    frozen = sorted({d for s in source.input_specs for d in s.dynamic_dims} - art_dims)
    if frozen and not allow_frozen:
        fixed = {d: s for sp in artifact.inputs for d, s in zip(
            next((x.shape for x in source.input_specs if x.name == sp.name), ()), sp.shape) if d in frozen}
        raise VerificationError(f"the exporter froze dynamic dim(s) {fixed} (name -> fixed size): the artifact "
                                "would reject any other size")
    shapes, batches = feed_sets(source, set(frozen) if allow_frozen else set()), sample_sets(source, samples)
    sets = shapes + batches
    log.info("verify: %d input set(s) (%d shape(s), %d eval batch(es)) through the artifact and %s",
             len(sets), len(shapes), len(batches), ref_name)
    groups = [sets] if artifact.isolated else [[s] for s in sets]  # one child process for all sets
    results = [out for group in groups for out in _run_group(artifact, group)]
    names = [o.name for o in artifact.outputs]
    checks = [{"dims": dims, "outputs": compare(_finite_reference(ref_run(feeds), names, ref_name, dims, i == 0),
                                                got, names)}
              for i, ((dims, feeds), got) in enumerate(zip(sets, results))]
    ok = all(passes(c["outputs"], tolerance) for c in checks)
    return Parity(ok, ref_name, tolerance, checks, frozen)


def _finite_reference(outputs: list[np.ndarray], names: list[str], ref_name: str, dims: Mapping[str, int],
                      example: bool) -> list[np.ndarray]:
    """The reference outputs, or a VerificationError saying the model itself outputs NaN/Inf there
    (then no artifact can match it, and "differs from the reference" would blame the export)."""
    for name, out in zip(names, outputs):
        bad = non_finite(out)
        if bad:
            where = ("on the example inputs" if example else f"on eval samples {dims['samples']}" if "samples" in dims
                     else f"on the example inputs resized to {_dims_text(dims)}")
            model = "the model" if ref_name == "pytorch" else f"the model ({ref_name})"
            raise VerificationError(f"{model} outputs {bad} {where} (output {name!r}); check its weights "
                                    "and the example inputs")
    return outputs


def _run_group(artifact: ArtifactHandle, group: list) -> list[list[np.ndarray]]:
    where = _dims_text(group[0][0]) if len(group) == 1 else "the example shape and the other sizes"
    try:
        return artifact.run_many([feeds for _, feeds in group])
    except EdgeAIError as e:
        raise VerificationError(f"the artifact failed to run at {where}: {e}") from None
    except Exception as e:  # runtime errors: a frozen dim usually shows up here
        text = " ".join(str(e).split())[:300]
        raise VerificationError(f"the artifact failed to run at {where} ({type(e).__name__}: {text})") from None


def _dims_text(dims: Mapping[str, int]) -> str:
    return ", ".join(f"{k}={v}" for k, v in dims.items()) or "the example shape"


def check_onnx_file(path: Path) -> None:
    """onnx.checker on the file (external data included); VerificationError when it is invalid."""
    import onnx
    try:
        onnx.checker.check_model(str(path), full_check=False)
    except Exception as e:
        raise VerificationError(f"{path.name} fails the ONNX checker: {' '.join(str(e).split())[:300]}") from None
