"""Build one unit of candidates in a worker process: one `edgeai.export` call, split into one folder per candidate."""
from __future__ import annotations

import hashlib
import logging
import os
import shutil
import signal
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from edgeai.errors import EdgeAIError, MissingDependencyError, Terminated
from edgeai.fsutil import check_real_dir, copy_new_file, hold_lock

log = logging.getLogger(__name__)


def target_options(cpu: Mapping[str, Any]) -> dict:
    """The step defaults edgeai.hw picks from this machine's CPU, picked from the timing device's `cpu`
    instead (builds run here, the artifact runs there): ONNX INT8 reduce_range (7-bit weights on x86
    without VNNI), structured pruning's channel multiple (16 with AVX-512, else 8)."""
    flags, machine = set(cpu.get("flags", ())), str(cpu.get("machine", "")).lower()
    dot = bool(flags & {"avx512_vnni", "avx_vnni", "amx_int8", "asimddp", "i8mm"})
    return {"reduce_range": machine in ("x86_64", "amd64", "i386", "i686") and not dot,
            "round_to": 16 if "avx512f" in flags else 8}


def _for_target(fmt: str, steps: tuple, quantize: tuple[str, ...], target: Mapping[str, Any] | None):
    """(steps, quantize) with the target's defaults written in, where the recipe leaves them to the CPU."""
    steps = [dict(s) for s in steps]
    if not target:
        return steps, list(quantize)
    for i, step in enumerate(steps):
        if "prune" in step and (step["prune"] or {}).get("round_to") is None:
            steps[i] = {**step, "prune": {**(step["prune"] or {}), "round_to": target["round_to"]}}
    onnx_int8 = ("int8-static", "int8-dynamic")
    return steps, [{q: {"reduce_range": target["reduce_range"]}} if fmt == "onnx" and q in onnx_int8 else q
                   for q in quantize]


def unit_recipe(config: Mapping[str, Any], fmt: str, steps: tuple, quantize: tuple[str, ...],
                target: Mapping[str, Any] | None = None) -> dict:
    """The recipe (as plain data) that `edgeai export` runs for these candidates; also what recipe.yaml holds.
    `target`: target_options() of the device the candidates are timed on (None: this machine)."""
    steps, quantize = _for_target(fmt, steps, quantize, target)
    recipe = {"model": config["model"], "inputs": list(config["inputs"]), "format": fmt,
              "export": dict(config["export"]), "steps": steps, "quantize": quantize,
              "data": {"eval": config["eval_data"], "calibration": config["calibration"],
                       "train": config["train_data"]}}
    if quantize:  # the pipeline's budget for its quantized variants; a pruned FP32 unit is judged by the search
        recipe["max_drop"] = config["max_drop"]
    for key in ("example_inputs", "arch", "task"):
        if config.get(key):
            recipe[key] = config[key]
    if config.get("trust_pickle"):
        recipe["trust_pickle"] = True
    if not config.get("dynamic_batch", True):
        recipe["dynamic_batch"] = False
    if config.get("metric"):
        recipe["metric"] = config["metric"]
    return recipe


def _to_recipe(data: Mapping[str, Any]):
    from edgeai.recipe import SummaryConfig, recipe_from_dict

    return replace(recipe_from_dict(data), summary=SummaryConfig(bench=False))


_building = False   # in a build worker: a unit is being built now (see worker_init)
_stopping = False   # ... and a signal is unwinding it


def worker_init() -> None:
    """Signals in a build worker: SIGTERM/SIGINT during a build unwind it (its export's staging and its unit
    folder are removed; a second signal does not cut that short); between builds the worker just exits,
    quietly (no traceback, nothing left for multiprocessing's resource tracker to warn about)."""
    def stop(signum, frame):
        global _stopping
        if not _building:
            os._exit(128 + signum)
        if not _stopping:
            _stopping = True
            raise Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, stop)


def build_unit(job: Mapping[str, Any]) -> dict[str, dict]:
    """{candidate id: Built fields}; every failure becomes an `error` (the unit never raises but for an interrupt).
    The unit is built in job["work"], a folder of its own that is removed when the build ends."""
    global _building
    ids: dict[str, str] = job["ids"]          # artifact name in the export -> candidate id
    _building = True
    try:
        return _build(job)
    except (MissingDependencyError, OSError, MemoryError) as e:  # this machine's, not the candidate's
        error = str(e) if isinstance(e, EdgeAIError) else f"{type(e).__name__}: {' '.join(str(e).split())[:300]}"
        return {cid: {"id": cid, "error": error, "transient": True} for cid in ids.values()}
    except EdgeAIError as e:
        error = str(e)
    except Exception as e:  # a bug or a limitation of a step on this model: report it, go on
        log.debug("build failed", exc_info=True)
        error = f"{type(e).__name__}: {' '.join(str(e).split())[:300]}"
    finally:
        _building = False
        shutil.rmtree(job["work"], ignore_errors=True)
    return {cid: {"id": cid, "error": error} for cid in ids.values()}


def new_unit_dir(parent: Path) -> tuple[Path, int]:
    """(a fresh `unit-*` folder in `parent`, the descriptor of the lock held on it): made under another name
    and renamed once locked, so remove_unlocked (another process sweeping stale units) never takes it."""
    new = Path(tempfile.mkdtemp(prefix=".new-unit-", dir=parent))
    lock = hold_lock(new)
    folder = new.with_name(new.name.removeprefix(".new-"))
    new.rename(folder)
    return folder, lock


def cap_distillation(recipe: Mapping[str, Any], deadline: float | None, after_s: float,
                     now: float) -> tuple[dict, float | None]:
    """`recipe` with each distill step's max_minutes cut so that it ends `after_s` seconds before
    `deadline` (time.time() seconds), and the cap in minutes when it cut one (else None). The recipe's own
    max_minutes (the export's wall: the accuracy fallback search stops there too) is cut the same way."""
    if deadline is None:
        return dict(recipe), None
    left = max((deadline - now - after_s) / 60, 0.01)
    steps, cap = [], None
    for step in recipe["steps"]:
        opts = step.get("distill") if isinstance(step, Mapping) else None
        if isinstance(opts, Mapping) and (opts.get("max_minutes") is None or opts["max_minutes"] > left):
            step, cap = {"distill": {**opts, "max_minutes": round(left, 3)}}, round(left, 3)
        steps.append(step)
    wall = recipe.get("max_minutes")
    return {**recipe, "steps": steps, "max_minutes": round(left if wall is None else min(wall, left), 3)}, cap


def distill_summary(entry) -> dict | None:
    """What the distill step of `entry` measured: epochs asked and run, seconds, whether max_minutes ended it."""
    step = next((s for s in entry.steps if s.get("type") == "model.distill"), None)
    if step is None:
        return None
    d, config = step.get("details", {}), step.get("config", {})
    return {"epochs": config.get("epochs"), "epochs_run": d.get("epochs_run"), "seconds": d.get("seconds"),
            "samples_trained": d.get("samples_trained"), "train_samples": d.get("train_samples"),
            "max_minutes": config.get("max_minutes"),
            "out_of_time": any(str(n).startswith("stopped at max_minutes") for n in step.get("notes", []))}


def _build(job: Mapping[str, Any]) -> dict[str, dict]:
    import time

    from edgeai.pipeline import export
    from edgeai.steps import step_extras

    ids, dests = job["ids"], job["dests"]
    unit = Path(job["work"])
    unit.mkdir(parents=True, exist_ok=True)   # made by the Lab here; on a Ray node, made now
    recipe, cap = cap_distillation(job["recipe"], job.get("deadline"), job.get("after_distill_s", 0.0), time.time())
    with step_extras(teacher_cache=job.get("teacher_cache")):   # on a Ray node: none (not this machine's)
        out = export(recipe=_to_recipe(recipe), out_dir=unit / "export")
    failed = {f["name"]: f["error"] for f in out.manifest.failed}
    results = {}
    for name, cid in ids.items():
        entry = next((a for a in out.manifest.artifacts if a.name == name), None)
        if entry is None:
            results[cid] = {"id": cid, "error": failed.get(name, f"the export produced no {name} artifact")}
            continue
        folder = _write_candidate(out.out_dir, out.manifest, entry, Path(dests[cid]))
        metric, value = _score(entry)
        result = {"id": cid, "folder": str(folder), "size_bytes": entry.size_bytes, "metric": metric,
                  "value": value, "notes": list(entry.notes), "distill": distill_summary(entry)}
        if cap is not None:   # built with less distillation than its key says: reported, not cached
            result["capped_minutes"] = cap
        if job.get("reference") and name == "fp32":
            result["reference_sha256"] = outputs_digest(_run_eval(folder, entry, job))
        results[cid] = result
    return results


def _write_candidate(src: Path, manifest, entry, dest: Path) -> Path:
    """`dest` becomes a normal export folder holding only `entry` (manifest written last)."""
    from edgeai.manifest import Manifest

    check_real_dir(dest)  # the cache made it empty; nothing in it is written through a link
    for f in [entry.file, *entry.extra_files]:
        copy_new_file(src / f, dest / f)
    Manifest(source=manifest.source, artifacts=[entry], versions=manifest.versions,
             created=manifest.created).write(dest)
    return dest


def _score(entry) -> tuple[str, float]:
    """(metric name, value) the pipeline measured in the artifact's runtime: the user metric, top-1 or cosine."""
    name = entry.metrics.get("metric_name") or next((n for n in ("top1", "cosine") if n in entry.metrics), None)
    if name is None:
        raise EdgeAIError("the export computed no metric; is --eval-data given?")
    return name, float(entry.metrics[name])


def _run_eval(folder: Path, entry, job: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """All outputs of the artifact in its own runtime on the evaluation data."""
    from edgeai.data import load_feeds, split_labels
    from edgeai.evaluate import run_batched
    from edgeai.manifest import Manifest
    from edgeai.runtime import load
    from edgeai.specs import TensorSpec
    from edgeai.verify import to_artifact_layout

    specs = [TensorSpec.from_dict(d) for d in Manifest.read(folder).source["inputs"]]
    feeds, _ = split_labels(load_feeds(job["recipe"]["data"]["eval"], specs, what="evaluation data"))
    return run_batched(load(folder), to_artifact_layout(feeds, entry.details))


def outputs_digest(outputs: Mapping[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for name in sorted(outputs):
        h.update(name.encode())
        h.update(np.ascontiguousarray(outputs[name]).tobytes())
    return h.hexdigest()
