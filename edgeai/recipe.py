"""Recipes: the whole job (model, inputs, data, steps, export, summary) as data, from YAML or CLI flags."""
from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Mapping

from edgeai.errors import ConfigError


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
    trust_pickle: bool = False
    dynamic_batch: bool = True
    format: str = "onnx"
    export: Mapping[str, Any] = field(default_factory=dict)        # exporter config fields
    steps: tuple[Mapping[str, Any], ...] = ()                       # model steps: [{"prune": {...}}, ...]
    quantize: tuple[Mapping[str, Any], ...] = ()                   # artifact steps: [{"int8-dynamic": {...}}]
    data: DataConfig = DataConfig()
    tolerance: Mapping[str, float] = field(default_factory=dict)   # atol/rtol/min_cosine for FP32 parity
    max_drop: float | None = None                                  # accuracy budget for quantization fallback
    metric: str | None = None                                      # user metric FILE.py:FUNC / module:FUNC
    summary: SummaryConfig = SummaryConfig()
    output: str | None = None

    def to_dict(self) -> dict:
        from dataclasses import asdict
        return asdict(self)


def _named_steps(value: Any, what: str) -> tuple[dict, ...]:
    """["fp16", {"int8-static": {...}}] -> ({"fp16": {}}, {"int8-static": {...}})."""
    if value is None:
        return ()
    if isinstance(value, (str, Mapping)):
        value = [value]
    out = []
    for item in value:
        if isinstance(item, str):
            out.append({item: {}})
        elif isinstance(item, Mapping) and len(item) == 1:
            (name, cfg), = item.items()
            if cfg is not None and not isinstance(cfg, Mapping):
                raise RecipeError(f"{what} {name!r}: options must be a mapping, got {cfg!r}")
            out.append({str(name): dict(cfg or {})})
        else:
            raise RecipeError(f"each {what} must be a name or a one-key mapping name: {{options}}, got {item!r}")
    return tuple(out)


def _sub(cls, value: Any, what: str):
    if value is None:
        return cls()
    if not isinstance(value, Mapping):
        raise RecipeError(f"recipe key {what!r} must be a mapping")
    known = {f.name for f in fields(cls)}
    unknown = set(value) - known
    if unknown:
        raise RecipeError(f"unknown key(s) {sorted(unknown)} under {what!r}; known: {', '.join(sorted(known))}")
    return cls(**value)


def recipe_from_dict(data: Mapping[str, Any], base_dir: Path | None = None) -> Recipe:
    known = {f.name for f in fields(Recipe)}
    unknown = set(data) - known
    if unknown:
        raise RecipeError(f"unknown recipe key(s) {sorted(unknown)}; known: {', '.join(sorted(known))}")
    if "model" not in data:
        raise RecipeError("recipe has no 'model' (a factory 'module:function' or a model file)")
    d = dict(data)
    inputs = d.get("inputs") or ()
    d["inputs"] = (inputs,) if isinstance(inputs, str) else tuple(inputs)
    d["steps"] = _named_steps(d.get("steps"), "step")
    d["quantize"] = _named_steps(d.get("quantize"), "quantization")
    d["data"] = _sub(DataConfig, d.get("data"), "data")
    d["summary"] = _sub(SummaryConfig, d.get("summary"), "summary")
    d["export"] = dict(d.get("export") or {})
    d["tolerance"] = dict(d.get("tolerance") or {})
    recipe = Recipe(**d)
    return _resolve_paths(recipe, base_dir) if base_dir else recipe


def _resolve_paths(recipe: Recipe, base: Path) -> Recipe:
    """Relative file paths in a recipe are relative to the recipe's folder."""
    def fix(p: str | None) -> str | None:
        if not p:
            return p
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
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise RecipeError(f"recipe {str(path)!r} is not valid YAML: {' '.join(str(e).split())[:200]}") from None
    if not isinstance(data, Mapping):
        raise RecipeError(f"recipe {str(path)!r} must be a YAML mapping with at least 'model'")
    recipe = recipe_from_dict(data, path.parent)
    return recipe if recipe.name else replace(recipe, name=path.stem)
