"""`edgeai.export` and `edgeai.optimize` as users call them: a model spec or an nn.Module object, one set of keywords.

Both take `eval_data`, `calibration` and `train_data` (a path, a folder or `module:function`), `format`,
`inputs` (specs, a list or one string) or `example_inputs` (an .npz path or {name: array}),
and export takes `quantize=["int8-dynamic", ...]`. A value of the wrong type is a ConfigError
naming the keyword, never an AttributeError from deep inside.

A module object is the user's own and trusted. `export` uses it in this process (a deep copy:
steps never change the caller's module). `optimize` builds candidates in worker processes, so the
object is saved to the optimize cache (CACHE/models/SHA.pt, pickled with cloudpickle so that a class
defined in the user's script travels by value) and loaded there with trust_pickle: that file is
code, as trusted as the script that wrote it; keep the cache folder as private as the script.
"""
from __future__ import annotations

import copy
import hashlib
import io
import itertools
import sys
import tempfile
from dataclasses import asdict, is_dataclass
from os import PathLike
from pathlib import Path
from typing import Any, Callable, Mapping

from edgeai.errors import ConfigError

DATA_KEYWORDS = {"eval_data": "eval", "calibration": "calibration", "train_data": "train"}
_PATHS = ("eval_data", "calibration", "train_data", "example_inputs", "arch", "metric", "cache_dir",
          "ssh_config", "output")
_STRINGS = ("name", "arch", "task", "metric", "format", "objective", "ray", "cache_dir", "device", "ssh_config",
            "device_python", "output")
_BOOLS = ("trust_pickle", "dynamic_batch", "no_cache")
_NUMBERS = ("max_drop", "budget_minutes", "max_size_mb", "max_rss_mb", "min_seconds")
_INTS = ("threads", "rounds", "workers")
_OBJECTS = {}                  # attribute name in this module -> the module object `export` was given
_counter = itertools.count()


def export(model: Any = None, out_dir: str | PathLike | None = None, *, recipe=None,
           progress: Callable[[str], None] | None = None, **options: Any):
    """Export `model` (a spec string or an nn.Module) or run `recipe` into `out_dir`; see edgeai.pipeline.

    >>> edgeai.export(net, "out/m", example_inputs={"x": x}, quantize=["int8-dynamic"], eval_data="e.npz")
    """
    from edgeai.pipeline import export as run_export
    from edgeai.recipe import Recipe, load_recipe, recipe_from_dict

    options = _plain(options)
    # the recipe's own typing checks its fields (recipe_from_dict); these keywords are the API's
    _check_types({k: v for k, v in options.items() if k in (*DATA_KEYWORDS, "example_inputs")}, "export")
    if _is_module(model):
        _need_inputs(options, "export")
        model = _in_process(model)
    elif model is not None and not isinstance(model, str):
        raise ConfigError(f"model must be a model spec (str) or a torch.nn.Module, got {type(model).__name__}")
    if isinstance(recipe, (str, Path)):
        recipe = load_recipe(recipe)
    elif recipe is not None and not isinstance(recipe, Recipe):
        raise ConfigError(f"recipe must be a path or an edgeai.recipe.Recipe, got {type(recipe).__name__}")
    examples = options.pop("example_inputs") if isinstance(options.get("example_inputs"), Mapping) else None
    data = {DATA_KEYWORDS[k]: options.pop(k) for k in list(options) if k in DATA_KEYWORDS}
    if not options and not data and examples is None and (recipe is None or model is None):
        return run_export(model, out_dir, recipe=recipe, progress=progress)   # nothing to merge
    base = asdict(recipe) if recipe is not None else {"model": model}
    if model is not None:
        base["model"] = model
    if isinstance(options.get("data"), Mapping):
        data = {**options.pop("data"), **data}
    merged = {**base, **options, "data": {**(base.get("data") or {}), **data}}
    if examples is None:
        return run_export(recipe=recipe_from_dict(merged), out_dir=out_dir, progress=progress)
    with tempfile.TemporaryDirectory(prefix="edgeai-examples-") as tmp:  # a recipe holds paths, not arrays
        merged["example_inputs"] = str(_save_examples(examples, Path(tmp)))
        return run_export(recipe=recipe_from_dict(merged), out_dir=out_dir, progress=progress)


def optimize(model: Any = None, out_dir: str | PathLike | None = None, *, config=None,
             progress: Callable[[dict], None] | None = None, **options: Any):
    """Find the fastest variant of `model` (a spec string or an nn.Module) within `max_drop`; see edgeai.optimize.

    >>> edgeai.optimize(net, "out/opt", example_inputs={"x": x}, eval_data="e.npz", max_drop=1.0)
    """
    from edgeai.optimize import optimize as run_optimize
    from edgeai.vocabulary import renamed_keywords

    options = _plain(renamed_keywords(options, {"formats": "format"}))
    if "format" in options:   # one name with export: format="onnx", or several: format=["onnx", "tflite"]
        value = options.pop("format")
        options["formats"] = tuple(v.strip() for v in value.split(",")) if isinstance(value, str) else value
    _check_types(options, "optimize")
    if _is_module(model):
        if out_dir is None:
            raise ConfigError("no output folder: pass out_dir")
        _need_inputs(options, "optimize")
        from edgeai.fsutil import ensure_writable_dir, real_dirs
        from edgeai.optimize.config import check_known
        check_known(options)     # before the module is written anywhere
        # where optimize.run keeps its cache; made the same way (OUTDIR and its parents may not exist yet)
        cache = ensure_writable_dir(options.get("cache_dir") or real_dirs(ensure_writable_dir(out_dir), ".cache"))
        if isinstance(options.get("example_inputs"), Mapping):
            options["example_inputs"] = str(_save_examples(options["example_inputs"], cache))
        model, options["trust_pickle"] = str(_save_module(model, cache)), True
    elif model is not None and not isinstance(model, str):
        raise ConfigError(f"model must be a model spec (str) or a torch.nn.Module, got {type(model).__name__}")
    elif isinstance(options.get("example_inputs"), Mapping):
        raise ConfigError("optimize takes example_inputs as an .npz path for a model spec "
                          "(a {name: array} dict goes with a module object)")
    return run_optimize(model, out_dir, config=config, progress=progress, **options)


# ---------------------------------------------------------------------------- keywords

def _plain(options: Mapping[str, Any]) -> dict:
    """Paths as str, lists as tuples, config dataclasses as mappings: the forms the configs hold."""
    out = {}
    for key, value in options.items():
        if isinstance(value, PathLike) and key in _PATHS:
            value = str(value)
        elif key in ("inputs", "formats") and isinstance(value, str):
            value = tuple(v.strip() for v in value.split(",")) if key == "formats" else (value,)
        elif key in ("inputs", "formats", "prune_ratios", "quantize", "steps") and isinstance(value, list):
            value = tuple(value)
        elif is_dataclass(value) and not isinstance(value, type):
            value = asdict(value)
        elif key == "example_inputs" and isinstance(value, Mapping):  # torch tensors -> numpy
            value = {k: v.detach().cpu().numpy() if hasattr(v, "detach") else v for k, v in value.items()}
        out[key] = value
    return out


def _check_types(values: Mapping[str, Any], what: str) -> None:
    """One ConfigError naming the keyword, before anything runs."""
    def bad(key: str, expected: str) -> ConfigError:
        value = values[key]
        return ConfigError(f"{what}: {key} must be {expected}, got {type(value).__name__} {value!r:.80}")

    for key, value in values.items():
        if value is None:
            continue
        if key in _BOOLS and not isinstance(value, bool):
            raise bad(key, "True or False")
        if key in _INTS and (not isinstance(value, int) or isinstance(value, bool)):
            raise bad(key, "an integer")
        if key in _NUMBERS and (not isinstance(value, (int, float)) or isinstance(value, bool)):
            raise bad(key, "a number")
        if key in _STRINGS and not isinstance(value, str):
            raise bad(key, "a string")
        if key in ("inputs", "formats") and not all(isinstance(v, str) for v in _seq(value)):
            raise bad(key, "a list of strings (e.g. ['x:batch,3,32,32'])")
        if key in ("quantize", "steps") and not all(isinstance(v, (str, Mapping)) for v in _seq(value)):
            raise bad(key, "a list of names or {name: options} mappings (e.g. ['int8-dynamic'])")
        if key in ("export", "tolerance", "distill", "summary") and not isinstance(value, Mapping):
            raise bad(key, "a mapping of options")
        if key == "example_inputs" and not isinstance(value, (str, Mapping)):
            raise bad(key, "an .npz path or a {name: array} mapping")
        if key == "data":
            for kind, source in value.items() if isinstance(value, Mapping) else [("data", value)]:
                if source is not None and not isinstance(source, (str, Mapping)):
                    raise bad("data", "paths, folders or module:function strings")
        if key in DATA_KEYWORDS and not isinstance(value, str):
            raise bad(key, "a path, a folder or a 'module:function' string")


def _seq(value: Any) -> tuple:
    if isinstance(value, (str, Mapping)):
        return (value,)
    if not isinstance(value, (list, tuple)):
        return (object(),)   # neither: the check reports it
    return tuple(value)


def _need_inputs(options: Mapping[str, Any], what: str) -> None:
    if not options.get("inputs") and options.get("example_inputs") is None:
        raise ConfigError(f"{what} of a module object needs its inputs: example_inputs={{name: array}} (or an "
                          ".npz path) or inputs=['NAME:DIMS', ...]")


# ---------------------------------------------------------------------------- module objects

def _is_module(model: Any) -> bool:
    torch = sys.modules.get("torch")  # a module object means torch is already imported
    return torch is not None and isinstance(model, torch.nn.Module)


def _in_process(module) -> str:
    """A factory spec (`edgeai.api:object_Net_0`) that returns a fresh deep copy of `module`."""
    name = f"object_{type(module).__name__}_{next(_counter)}"
    _OBJECTS[name] = module
    globals()[name] = lambda: copy.deepcopy(_OBJECTS[name])
    return f"{__name__}:{name}"


def _save_module(module, cache: Path) -> Path:
    """The module pickled (by value for classes of the user's script) into CACHE/models/SHA.pt."""
    import torch

    from edgeai.extras import require
    require("cloudpickle", "optimize of a module object")
    import cloudpickle
    buf = io.BytesIO()
    torch.save(module, buf, pickle_module=cloudpickle)
    return _store(cache, buf.getvalue(), "", ".pt")


def _save_examples(feeds: Mapping[str, Any], cache: Path) -> Path:
    import numpy as np

    arrays = {k: v.detach().cpu().numpy() if hasattr(v, "detach") else np.asarray(v) for k, v in feeds.items()}
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return _store(cache, buf.getvalue(), "examples-", ".npz")


def _store(cache: Path, data: bytes, prefix: str, suffix: str) -> Path:
    """`data` in CACHE/models/ under its content's digest (written once); the folder is checked like
    every cache folder: no link anywhere on the way."""
    from edgeai.fsutil import atomic_write_bytes, real_dirs
    path = real_dirs(cache, "models") / f"{prefix}{hashlib.sha256(data).hexdigest()[:20]}{suffix}"
    if not path.is_file():
        atomic_write_bytes(path, data)
    return path

