"""Recipes: the whole job (model, inputs, data, steps, export, summary) as data, from YAML or CLI flags."""
from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Mapping

from edgeai import typed
from edgeai.argtypes import MAX_THREADS
from edgeai.errors import ConfigError
from edgeai.typed import shown


class RecipeError(ConfigError):
    """A recipe file is missing, not YAML, or has unknown or mistyped keys."""


@dataclass(frozen=True)
class DataConfig:
    eval: str | None = None          # .npz (inputs + optional labels) or module:callable
    calibration: str | None = None   # .npz, folder of .npy, or module:callable
    train: str | None = None         # for distillation


@dataclass(frozen=True)
class SummaryConfig:
    bench: bool = True               # time every variant for the summary table
    threads: int = 1
    min_seconds: float = 1.0
    warmup: int = 10


@dataclass(frozen=True)
class Recipe:
    model: str
    name: str = ""
    inputs: tuple[str, ...] = ()
    example_inputs: str | None = None
    arch: str | None = None
    task: str | None = None                                         # hf: models: feature-extraction, ...
    trust_pickle: bool = False
    dynamic_batch: bool = True
    format: str = "onnx"
    export: Mapping[str, Any] = field(default_factory=dict)        # exporter config fields
    steps: tuple[Mapping[str, Any], ...] = ()                       # model steps: [{"prune": {...}}, ...]
    quantize: tuple[Mapping[str, Any], ...] = ()                   # artifact steps: [{"int8-dynamic": {...}}]
    data: DataConfig = DataConfig()
    tolerance: Mapping[str, float] = field(default_factory=dict)   # atol/rtol/min_cosine for FP32 parity
    max_drop: float | None = None                                  # accuracy budget for quantization fallback
    max_minutes: float | None = None                               # a wall for the searches (distill, fallback)
    metric: str | None = None                                      # user metric FILE.py:FUNC / module:FUNC
    summary: SummaryConfig = SummaryConfig()
    output: str | None = None

    def to_dict(self) -> dict:
        from dataclasses import asdict
        return asdict(self)


def _named_steps(value: Any, what: str, field_name: str) -> tuple[dict, ...]:
    """["fp16", {"int8-static": {...}}] -> ({"fp16": {}}, {"int8-static": {...}})."""
    if value is None:
        return ()
    if isinstance(value, (str, Mapping)):
        value = [value]
    if not isinstance(value, (list, tuple)):
        raise RecipeError(f"recipe field {field_name!r}: expected a list of {what} names or {{name: options}} "
                          f"mappings, got {shown(value)}")
    out = []
    for item in value:
        if isinstance(item, str):
            out.append({item: {}})
        elif isinstance(item, Mapping) and len(item) == 1:
            (name, cfg), = item.items()
            if cfg is not None and not isinstance(cfg, Mapping):
                raise RecipeError(f"{what} {name!r}: options must be a mapping, got {shown(cfg)}")
            out.append({str(name): dict(cfg or {})})
        else:
            raise RecipeError(f"each {what} must be a name or a one-key mapping name: {{options}}, got {shown(item)}")
    return tuple(out)


def recipe_from_dict(data: Mapping[str, Any], base_dir: Path | None = None) -> Recipe:
    """A Recipe from YAML data: every value checked against the field's type (RecipeError naming it)."""
    known = {f.name for f in fields(Recipe)}
    unknown = set(data) - known
    if unknown:
        raise RecipeError(f"unknown recipe key(s) {sorted(map(str, unknown))}; known: {', '.join(sorted(known))}")
    if "model" not in data:
        raise RecipeError("recipe has no 'model' (a factory 'module:function' or a model file)")
    d = dict(data)
    if isinstance(d.get("inputs"), str):  # one input may be written without a list
        d["inputs"] = [d["inputs"]]
    d["steps"] = _named_steps(d.get("steps"), "step", "steps")
    d["quantize"] = _named_steps(d.get("quantize"), "quantization", "quantize")
    for key in ("inputs", "data", "summary", "export", "tolerance"):  # an empty YAML key means the default
        if key in d and d[key] is None:
            del d[key]
    try:
        recipe = typed.build(Recipe, d)
    except typed.FieldError as e:
        raise RecipeError(f"recipe field {e.path!r}: {e.message}" if e.path else str(e)) from None
    return _resolve_paths(recipe, base_dir) if base_dir else recipe


def spec_parts(spec: str) -> tuple[str, str, str]:
    """A model/data/metric spec as (prefix, the path it may name, suffix): `file.py:func` -> ('', 'file.py',
    ':func'), `hf:FOLDER` -> ('hf:', 'FOLDER', ''), `data.npz` -> ('', 'data.npz', '')."""
    prefix = "hf:" if spec.startswith("hf:") else ""
    body = spec[len(prefix):]
    target, sep, func = body.rpartition(":")
    return (prefix, target, f":{func}") if sep and target.endswith(".py") else (prefix, body, "")


def _resolve_paths(recipe: Recipe, base: Path) -> Recipe:
    """Relative file paths in a recipe are relative to the recipe's folder."""
    def fix(p: str | None) -> str | None:
        if not p:
            return p
        if p.startswith("hf:"):  # a Hugging Face folder (a hub id is left as it is)
            return "hf:" + fix(p[3:])
        target, sep, func = p.rpartition(":")
        if sep and not target.endswith(".py") and func.isidentifier() and len(target) > 1:
            return p  # package.module:callable
        file = target if sep and target.endswith(".py") else p
        candidate = base / file
        if not Path(file).is_absolute() and candidate.exists():
            return str(candidate) + (f":{func}" if sep and target.endswith(".py") else "")
        return p
    data = replace(recipe.data, eval=fix(recipe.data.eval), calibration=fix(recipe.data.calibration),
                   train=fix(recipe.data.train))
    return replace(recipe, model=fix(recipe.model), arch=fix(recipe.arch),
                   example_inputs=fix(recipe.example_inputs), metric=fix(recipe.metric), data=data)


def load_recipe(path: str | Path) -> Recipe:
    import yaml
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"recipe {str(path)!r} does not exist")
    try:
        data = yaml.safe_load(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as e:
        raise RecipeError(f"recipe {str(path)!r} is not UTF-8 text (byte {e.object[e.start]:#04x} at offset "
                          f"{e.start}); save it as UTF-8") from None
    except RecursionError:
        raise RecipeError(f"recipe {str(path)!r} is nested too deeply to be a recipe") from None
    except yaml.YAMLError as e:
        raise RecipeError(f"recipe {str(path)!r} is not valid YAML: {' '.join(str(e).split())[:200]}") from None
    if not isinstance(data, Mapping):
        raise RecipeError(f"recipe {str(path)!r} must be a YAML mapping with at least 'model'")
    recipe = recipe_from_dict(data, path.parent)
    return recipe if recipe.name else replace(recipe, name=path.stem)


# ---------------------------------------------------------------- validation, before any work

MAX_DROP_LIMIT = 100.0   # the metric's whole range: top-1 is in points (0-100), cosine in [-1, 1]
TOLERANCE_KEYS = ("atol", "rtol", "min_cosine")


def validate(recipe: Recipe) -> None:
    """Check every value that can be checked without the model, so a mistake fails in a second.

    Format, exporter options, model steps and quantization schemes (looked up in the registries,
    so every registered name counts), each with its options; calibration data for the schemes
    that calibrate; tolerances, max_drop, summary timing, input specs and data paths.
    Raises ConfigError (or the config's own EdgeAIError) naming the bad value and the known ones.
    """
    from edgeai.exporters import get_exporter
    from edgeai.steps import ARTIFACT_STEPS, canonical_scheme, get_model_step

    try:  # a Recipe built in Python skips recipe_from_dict: check its types here
        typed.check_instance(recipe)
    except typed.FieldError as e:
        raise RecipeError(f"recipe field {e.path!r}: {e.message}") from None
    exporter = get_exporter(recipe.format)
    make_config(exporter.config_cls, recipe.export, f"{recipe.format} export")
    for item in recipe.steps:
        (name, opts), = item.items()
        make_config(get_model_step(name).config_cls, opts, f"step {name!r}")
    seen = set()
    for item in recipe.quantize:
        (name, opts), = item.items()
        name = canonical_scheme(name)  # int8-full is int8-static, in every format
        if name in seen:
            raise RecipeError(f"quantization {name!r} is asked twice (int8-full is another name for int8-static); "
                              "name each scheme once")
        seen.add(name)
        key = f"{recipe.format}:{name}"
        if key not in ARTIFACT_STEPS:
            ARTIFACT_STEPS.discover()
        if key not in ARTIFACT_STEPS:
            known = [n.partition(":")[2] for n in ARTIFACT_STEPS.names() if n.startswith(f"{recipe.format}:")]
            raise RecipeError(f"no quantization scheme {name!r} for format {recipe.format}; known for "
                              f"{recipe.format}: {', '.join(known) or '(none)'}")
        config_cls = ARTIFACT_STEPS.get(key).config_cls
        make_config(config_cls, opts, f"quantization {name!r}")
        if getattr(config_cls, "needs_calibration", False) and not recipe.data.calibration:
            raise RecipeError(f"quantization {name!r} calibrates activation ranges on typical inputs: pass "
                              "--calibration DATA (data.calibration in a recipe)")
    _check_tolerance(recipe.tolerance)
    _check_max_drop(recipe)
    if recipe.max_minutes is not None and not (math.isfinite(recipe.max_minutes) and recipe.max_minutes > 0):
        raise RecipeError(f"max_minutes must be a finite number of minutes > 0, got {recipe.max_minutes!r}")
    _check_summary(recipe.summary)
    if recipe.inputs:
        from edgeai.specs import parse_input_spec
        for text in recipe.inputs:
            parse_input_spec(text)
    from edgeai.data import check_source_exists
    for kind, what in (("eval", "evaluation data"), ("calibration", "calibration data"), ("train", "training data")):
        source = getattr(recipe.data, kind)
        if source:
            check_source_exists(source, what)


def make_config(config_cls: type, opts: Mapping[str, Any], what: str):
    """`config_cls(**opts)` with every option checked against its type, or a RecipeError naming it."""
    known = ", ".join(f.name for f in fields(config_cls))
    if not isinstance(opts, Mapping):
        raise RecipeError(f"{what}: options must be a mapping, got {shown(opts)}")
    try:
        return typed.build(config_cls, opts)
    except typed.FieldError as e:
        if not e.path:  # an unknown option
            raise RecipeError(f"bad options {dict(opts)} for {what}; known: {known}") from None
        raise RecipeError(f"{what} option {e.path!r}: {e.message}") from None
    except TypeError:  # a required option is missing
        raise RecipeError(f"bad options {dict(opts)} for {what}; known: {known}") from None


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_tolerance(tol: Mapping[str, Any]) -> None:
    unknown = sorted(set(tol) - set(TOLERANCE_KEYS))
    if unknown:
        raise RecipeError(f"unknown tolerance key(s) {unknown}; known: {', '.join(TOLERANCE_KEYS)}")
    for key, value in tol.items():
        low, high = (-1.0, 1.0) if key == "min_cosine" else (0.0, math.inf)
        if not _number(value) or not low <= value <= high:
            raise RecipeError(f"tolerance {key} must be a finite number in [{low:g}, {high:g}], got {value!r}")


def _check_max_drop(recipe: Recipe) -> None:
    drop = recipe.max_drop
    if drop is None:
        return
    if not _number(drop) or not 0 <= drop <= MAX_DROP_LIMIT:
        raise RecipeError(f"max_drop must be a finite number from 0 to {MAX_DROP_LIMIT:g} (points of top-1, or "
                          f"cosine: 0.01 means >= 0.99), got {drop!r}")
    if not recipe.quantize:
        raise RecipeError("max_drop is the accuracy budget of quantization: add --quantize (quantize: in a recipe)")
    if not recipe.data.eval:
        raise RecipeError("max_drop needs evaluation data to measure the drop: pass --eval-data DATA "
                          "(data.eval in a recipe)")


def _check_summary(summary: SummaryConfig) -> None:  # the types were checked by typed.check_instance
    if not 1 <= summary.threads <= MAX_THREADS:
        raise RecipeError(f"threads (--threads, summary.threads) must be an integer >= 1, got {summary.threads!r} "
                          f"(at most {MAX_THREADS})")
    if summary.warmup < 0:
        raise RecipeError(f"summary.warmup must be an integer >= 0, got {summary.warmup!r}")
    if not _number(summary.min_seconds) or summary.min_seconds <= 0:
        raise RecipeError(f"summary.min_seconds must be a number > 0, got {summary.min_seconds!r}")
