"""The export pipeline: load -> model steps -> export -> verify -> artifact steps -> evaluate -> manifest."""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, fields, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from edgeai.budget import quantization_budget, quantize_within_budget
from edgeai.errors import EdgeAIError, ExportError, MissingDependencyError, RuntimeLoadError, VerificationError
from edgeai.exporters import Exporter, ExportResult, get_exporter
from edgeai.exporters.decoder import export_decoder, is_decoder_task
from edgeai.fsutil import check_output_target, locked_staging, publish, sha256_file
from edgeai.manifest import MANIFEST_NAME, ArtifactEntry, Manifest
from edgeai.measure import RunData, bench_all, count_stage_macs, evaluate_all
from edgeai.outdir import check_input_kept, check_overwrites, input_files, removable_old_files
from edgeai.recipe import Recipe, RecipeError, load_recipe, make_config, validate
from edgeai.source import ModelSource, load_model
from edgeai.steps import VariantNotKept
from edgeai.verify import FP32_TOLERANCE, ArtifactHandle, Parity, Tolerance, check_onnx_file, open_artifact, verify

log = logging.getLogger(__name__)

Progress = Callable[[str], None]

# exporter details that say how to feed an artifact; quantized variants inherit them from FP32
LAYOUT_KEYS = ("channels_last_inputs", "channels_last_outputs", "input_layout", "static_shapes")


@dataclass(frozen=True)
class RunContext:
    """What every stage of one export shares; built once in `run`, never changed."""

    recipe: Recipe
    data: RunData
    exporter: Exporter
    export_config: Any             # the exporter's config, built from recipe.export
    stage: Path                    # the staging folder every file is written to before publishing
    progress: Progress
    deadline: float | None = None  # time.time() when the searches must have stopped (recipe.max_minutes)


@dataclass(frozen=True)
class Variant:
    """One quantized variant to make from the FP32 artifact."""

    name: str                      # "int8-dynamic", ...
    key: str                       # registry key, "onnx:int8-dynamic"
    step: Any                      # the registered ArtifactStep
    config: Any                    # its config
    dst: Path                      # where it is written in the staging folder


@dataclass(frozen=True)
class ExportOutcome:
    out_dir: Path
    manifest: Manifest

    @property
    def artifacts(self) -> list[ArtifactEntry]:
        return self.manifest.artifacts


def export(model: str | None = None, out_dir: str | Path | None = None, *,
           recipe: Recipe | str | Path | None = None, progress: Progress | None = None,
           **options: Any) -> ExportOutcome:
    """Export `model` (or run `recipe`) into `out_dir`; `options` are Recipe fields.

    >>> edgeai.export("edgeai.zoo:digits_cnn", "out/cnn", inputs=["image:batch,1,32,32"])
    """
    if isinstance(recipe, (str, Path)):
        recipe = load_recipe(recipe)
    if recipe is None:
        if model is None:
            raise RecipeError("nothing to export: pass a model or a recipe")
        recipe = Recipe(model=model)
    elif model is not None:
        options["model"] = model
    if options:
        known = {f.name for f in fields(Recipe)}
        bad = set(options) - known
        if bad:
            raise RecipeError(f"unknown export option(s) {sorted(bad)}; known: {', '.join(sorted(known))}")
        recipe = replace(recipe, **options)
    out = out_dir or recipe.output
    if not out:
        raise RecipeError("no output folder: pass -o OUTDIR (or 'output:' in the recipe)")
    return run(recipe, Path(out), progress or _timed_log())


def _timed_log():
    """Progress lines with the time since the export started: `[1:05] model step distill`."""
    start = time.monotonic()

    def progress(message: str) -> None:
        minutes, seconds = divmod(int(time.monotonic() - start), 60)
        log.info("[%d:%02d] %s", minutes, seconds, message)
    return progress


def run(recipe: Recipe, out_dir: Path, progress: Progress) -> ExportOutcome:
    validate(recipe)  # every checkable mistake fails here, before the model is loaded
    deadline = time.time() + 60 * recipe.max_minutes if recipe.max_minutes else None
    if is_decoder_task(recipe.task):  # a causal LM: one graph with a KV cache (edgeai/exporters/decoder.py)
        return export_decoder(recipe, out_dir, progress)
    check_output_target(out_dir)
    # the folder is locked before the model loads: of two exports into it, the first started wins
    with locked_staging(out_dir) as stage:
        progress(f"loading {recipe.model}")
        source = load_model(recipe.model, inputs=recipe.inputs, example_inputs=recipe.example_inputs,
                            arch=recipe.arch, trust_pickle=recipe.trust_pickle,
                            dynamic_batch=recipe.dynamic_batch, task=recipe.task)
        data = RunData(recipe.data, source.input_specs)
        source = _realistic_examples(source, recipe, data)
        exporter = get_exporter(recipe.format)
        config = make_config(exporter.config_cls, recipe.export, f"{recipe.format} export")
        if exporter.fixed_shapes(config) and source.example_dims.get("batch", 1) != 1:
            source = source.with_dims(batch=1)  # a fixed-shape model is deployed at batch 1
        protected = input_files(recipe.model, source.onnx_path)
        planned = _planned_names(recipe, exporter.suffix) + [MANIFEST_NAME]
        check_input_kept(out_dir, planned, protected)
        check_overwrites(out_dir, planned, full=False)
        original = source
        source, steps = _model_steps(source, recipe, data, progress, deadline)
        ctx = RunContext(recipe, data, exporter, config, stage, progress, deadline)
        entries = []
        if steps:  # the model before pruning/distillation: the baseline every stage is compared with
            entries.append(_export_verified(ctx, original, [], "original"))
        entry = _export_verified(ctx, source, steps)
        failed: list[dict] = []
        entries += [entry] + _artifact_steps(ctx, source, entry, failed)
        if source.module is not None:
            count_stage_macs(original, source, entries)
        if recipe.data.eval:
            evaluate_all(original, data, stage, entries, progress, recipe.metric)
        if recipe.summary.bench:
            bench_all(source, recipe, stage, entries, progress)
        manifest = Manifest(source=source.to_dict() | {"recipe": recipe.name or None},
                            artifacts=entries, versions=versions(), failed=failed,
                            created=datetime.now(timezone.utc).isoformat(timespec="seconds"))
        manifest.write(stage)
        files = [f for e in entries for f in e.files]
        check_input_kept(out_dir, files + [MANIFEST_NAME], protected)
        check_overwrites(out_dir, files + [MANIFEST_NAME], full=True)
        stale = removable_old_files(out_dir, set(files), protected)
        publish(stage, out_dir, files + [MANIFEST_NAME])
        for name in stale:
            (out_dir / name).unlink(missing_ok=True)
    progress(f"wrote {out_dir / MANIFEST_NAME}")
    return ExportOutcome(out_dir, manifest)


def _realistic_examples(source: ModelSource, recipe: Recipe, data: RunData) -> ModelSource:
    """Verify on real samples when the user gave data but no example inputs.

    Random N(0, 1) inputs can lie far outside what a quantized model was calibrated for, and
    then its parity error says nothing about the artifact; the user's data does not.
    """
    samples = None if recipe.example_inputs else (data.get("calibration") or data.get("eval"))
    if samples is None:
        return source
    from edgeai.data import split_labels, take
    feeds, _ = split_labels(samples)
    batch = source.example_dims.get("batch", 2)
    return replace(source, example_inputs=take(feeds, batch))


def _model_steps(source: ModelSource, recipe: Recipe, data: RunData, progress: Progress,
                 deadline: float | None = None) -> tuple[ModelSource, list[dict]]:
    """Torch-in, torch-out steps (prune, distill, ...) in recipe order; the original is the teacher."""
    if not recipe.steps:
        return source, []
    from edgeai.steps import StepContext, config_to_dict, get_model_step, step_extras_now

    if source.module is None:
        raise RecipeError("model steps (prune, distill, ...) need a PyTorch model, not an ONNX file")
    ctx = StepContext(train_data=data.get("train"), calibration=data.get("calibration"), eval_data=data.get("eval"),
                      teacher=source.module, input_specs=source.input_specs,
                      extra={**step_extras_now(), "metric": recipe.metric, "deadline": deadline})
    records = []
    module = source.module
    for index, item in enumerate(recipe.steps, 1):
        (name, opts), = item.items()
        step = get_model_step(name)
        config = make_config(step.config_cls, opts, f"step {name!r}")
        config, search = _latency_target(name, config, module, source, ctx, recipe, progress)
        progress(f"model step {index}/{len(recipe.steps)}: {name}")
        module, report = step.fn(module, source.torch_inputs(), config, ctx)
        if search:
            report.details["latency_search"] = search
            report.notes.extend(search["notes"])
        records.append({"type": f"model.{name}", "config": config_to_dict(config), "notes": report.notes,
                        "details": report.details})
    return replace(source, module=module.eval()), records


def _latency_target(name: str, config: Any, module: Any, source: ModelSource, ctx: Any, recipe: Recipe,
                    progress: Progress) -> tuple[Any, dict | None]:
    """A prune step's target_speedup / target_latency_ms, searched on the exported model (edgeai.latency_target)."""
    from edgeai import latency_target

    if name != "prune" or not latency_target.wants_latency(config):
        return config, None
    return latency_target.for_pipeline(config, module, source, ctx, recipe, progress)


def _artifact_steps(ctx: RunContext, source: ModelSource, fp32: ArtifactEntry,
                    failed: list[dict]) -> list[ArtifactEntry]:
    """File-in, file-out steps (quantization) on the FP32 artifact; each result verified on its own.

    A variant whose quantizer breaks, whose runtime crashes on it, or that computes something
    else is left out and reported in `failed`; the other variants are still written.
    """
    recipe, stage = ctx.recipe, ctx.stage
    if not recipe.quantize:
        return []
    from edgeai.steps import StepContext, canonical_scheme, get_artifact_step

    step_ctx = StepContext(calibration=ctx.data.get("calibration"), eval_data=ctx.data.get("eval"),
                           input_specs=source.input_specs,
                           extra={"channels_last_inputs": list(fp32.details.get("channels_last_inputs", [])),
                                  "deadline": ctx.deadline})
    budget = _LazyBudget(source, step_ctx, recipe.max_drop, recipe.metric)
    entries = []
    for item in recipe.quantize:
        (name, opts), = item.items()
        name = canonical_scheme(name)  # files keep the canonical name (int8-full -> int8-static)
        key = f"{recipe.format}:{name}"
        step = get_artifact_step(key)
        variant = Variant(name, key, step, make_config(step.config_cls, opts, f"quantization {name!r}"),
                          stage / f"model.{name}{(stage / fp32.file).suffix}")
        try:
            entries.append(_variant(ctx, variant, source, fp32, step_ctx, budget))
        except (VerificationError, RuntimeLoadError, _StepFailure, VariantNotKept) as e:
            log.warning("variant %s left out: %s", name, e)
            failed.append({"name": name, "step": key, "error": str(e).replace(f"{stage}/", "")})
            for p in stage.glob(f"{variant.dst.name}*"):
                p.unlink()
    return entries


class _LazyBudget:
    """The run's quantization budget, built (reference outputs computed) when a step first needs it."""

    def __init__(self, source: ModelSource, step_ctx: Any, max_drop: float | None, metric: str | None):
        self._args, self._budget = (source, step_ctx, max_drop, metric), None

    def get(self):
        if self._budget is None:
            self._budget = quantization_budget(*self._args)
        return self._budget


class _StepFailure(Exception):
    """A step's own code broke (not the user's input): the variant is left out, the export goes on."""


def _variant(ctx: RunContext, variant: Variant, source: ModelSource, fp32: ArtifactEntry, step_ctx: Any,
             budget: _LazyBudget) -> ArtifactEntry:
    """Quantize the FP32 artifact into `variant.dst` (INT8 within its budget) and verify it; raises when it
    cannot be kept."""
    from edgeai.steps import config_to_dict
    from edgeai.verify import FP16_TOLERANCE, QUANTIZED_TOLERANCE

    name, key, step, config, dst = variant.name, variant.key, variant.step, variant.config, variant.dst
    recipe, progress = ctx.recipe, ctx.progress
    src = ctx.stage / fp32.file
    try:
        if step.precision == "int8":
            progress(f"quantizing: {name} within budget: {budget.get().text}")
            report = quantize_within_budget(key, step, src, dst, config, step_ctx, budget.get())
        else:
            progress(f"quantizing: {name}")
            report = step.fn(src, dst, config, step_ctx)
    except (EdgeAIError, VariantNotKept):
        raise
    except Exception as e:  # a bug or limitation of the quantizer on this graph
        raise _StepFailure(f"the {key} step failed: {type(e).__name__}: {' '.join(str(e).split())[:300]}") from e
    layout = {k: fp32.details[k] for k in LAYOUT_KEYS if k in fp32.details}
    # a derived model is first run in a child process: runtimes have crashed on such graphs
    handle = open_artifact(dst, recipe.format, layout, isolate=True)
    tolerance = {"fp16": FP16_TOLERANCE, "fp32": _tolerance(recipe)}.get(step.precision, QUANTIZED_TOLERANCE)
    progress(f"verifying {dst.name} against {'PyTorch' if source.module is not None else 'ONNX'}")
    parity = verify(source, handle, tolerance, allow_frozen=bool(layout.get("static_shapes")))
    if not parity.passed:
        raise VerificationError(f"{name} artifact computes something else: {parity.failure()}")
    if recipe.format == "onnx":
        check_onnx_file(dst)
    result = ExportResult(exporter=fp32.exporter, files=[dst.name, *report.details.get("extra_files", [])],
                          details={**layout, **report.details})
    steps = fp32.steps + [{"type": report.step, "config": report.config or config_to_dict(config)}]
    return _entry(name, dst, recipe.format, step.precision or name, result, handle, parity, steps, list(report.notes))


def _export_verified(ctx: RunContext, source: ModelSource, steps: list[dict], name: str = "fp32") -> ArtifactEntry:
    """Export with each attempt the exporter offers until one verifies; the FP32 entry `name`."""
    recipe, exporter, stage, progress = ctx.recipe, ctx.exporter, ctx.stage, ctx.progress
    tolerance = _tolerance(recipe)
    samples = ctx.data.get("eval")  # loaded before the attempts: a data error is not an export failure
    failures = []
    if source.kind == "onnx":
        attempts = [None]
    else:
        attempts = exporter.attempts(ctx.export_config)
    for attempt in attempts:
        model_path = stage / (f"model{exporter.suffix}" if name == "fp32" else f"model.{name}{exporter.suffix}")
        try:
            if attempt is None:
                result = _copy_onnx(source.onnx_path, model_path)
            else:
                progress(f"exporting to {recipe.format} ({_attempt_name(attempt)})")
                result = exporter.fn(source.module, source.torch_inputs(), source.input_specs, model_path, attempt)
            if recipe.format == "onnx":
                check_onnx_file(model_path)
            progress(f"verifying {model_path.name} against {'PyTorch' if source.module is not None else 'ONNX'}")
            handle = open_artifact(model_path, recipe.format, result.details)
            parity = verify(source, handle, tolerance, allow_frozen=bool(result.details.get("static_shapes")),
                            samples=samples)
            if not parity.passed:
                raise VerificationError(f"exported model differs from the reference: {parity.failure()}")
        except MissingDependencyError:
            raise
        except EdgeAIError as e:
            failures.append(f"{_attempt_name(attempt)}: {e}")
            log.warning("%s", failures[-1])
            for p in stage.glob(f"{model_path.name}*"):  # this attempt's files (model + external data)
                p.unlink()
            continue
        step = {"type": f"export.{recipe.format}", "config": _config_dict(attempt)}
        notes = list(result.notes)
        if failures:
            notes.append("fell back after: " + " | ".join(failures))
        return _entry(name, model_path, recipe.format, "fp32", result, handle, parity, steps + [step], notes)
    if len(failures) == 1:
        raise ExportError(failures[0])
    raise ExportError("every export path failed: " + " | ".join(failures))


def _entry(name: str, model_path: Path, fmt: str, precision: str, result: ExportResult, handle: ArtifactHandle,
           parity: Parity, steps: list[dict], notes: list[str]) -> ArtifactEntry:
    files = [model_path.name] + [f for f in result.files if f != model_path.name]
    size = sum((model_path.parent / f).stat().st_size for f in files)
    digests = {f: sha256_file(model_path.parent / f) for f in files}
    return ArtifactEntry(name=name, file=files[0], format=fmt, precision=precision, sha256=digests[files[0]],
        digests=digests, size_bytes=size, inputs=[s.to_dict() for s in handle.inputs],
        outputs=[s.to_dict() for s in handle.outputs], exporter=result.exporter,
        extra_files=files[1:], parity=parity.to_dict(), steps=steps, notes=notes, details=result.details)


def _copy_onnx(src: Path, dst: Path) -> ExportResult:
    """Re-manifest an existing ONNX file: copy it (its external data into one file named by the copy)."""
    from edgeai.exporters.onnx import copy_model, op_histogram
    try:
        extra = copy_model(src, dst)
    except EdgeAIError:
        raise
    except Exception as e:
        raise VerificationError(f"{str(src)!r} is not a readable ONNX model: {' '.join(str(e).split())[:200]}") from None
    return ExportResult(exporter="existing ONNX file", files=[dst.name, *extra],
                        details={"op_histogram": op_histogram(dst)})


def _attempt_name(attempt: Any) -> str:
    if attempt is None:
        return "existing ONNX file"
    return str(getattr(attempt, "exporter", type(attempt).__name__))


def _config_dict(config: Any) -> dict:
    from edgeai.steps import config_to_dict
    return config_to_dict(config) if config is not None else {}


def _tolerance(recipe: Recipe) -> Tolerance:
    try:
        return replace(FP32_TOLERANCE, **recipe.tolerance)
    except TypeError:
        raise RecipeError(f"bad tolerance {dict(recipe.tolerance)}; known: atol, rtol, min_cosine") from None


def _planned_names(recipe: Recipe, suffix: str) -> list[str]:
    """The model files an export of `recipe` writes (external data files aside)."""
    variants = [name for item in recipe.quantize for name in item] + (["original"] if recipe.steps else [])
    return [f"model{suffix}"] + [f"model.{name}{suffix}" for name in variants]


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    import edgeai
    out = {"edgeai": edgeai.__version__}
    for pkg in ("torch", "onnx", "onnxruntime", "onnxscript", "numpy", "litert-torch", "ai-edge-litert",
                "ai-edge-quantizer"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            continue
    return out
