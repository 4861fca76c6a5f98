"""What `edgeai optimize` writes: best/ and baseline/ (export folders), report.json/.md/.html, pareto.png, recipe.yaml."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from statistics import median
from typing import Any

from edgeai.fsutil import atomic_write_bytes, atomic_write_text
from edgeai.optimize.choice import MIN_SPEEDUP
from edgeai.optimize.device_accuracy import accuracy, measured_on
from edgeai.recipe import spec_parts
from edgeai.optimize.plots import pareto_png
from edgeai.optimize.report_html import accuracy_where, metric_cell, report_html
from edgeai.optimize.search import Row, SearchResult

SCHEMA = "edgeai.optimize/1"
STATUSES = ("chosen", "ok", "rejected", "failed", "skipped")


def candidate_dict(row: Row, device: str | None = None) -> dict:
    """A candidate as report.json lists it; `device`: --device, where its accuracy was measured too."""
    b, t = row.built, row.timing
    return {
        "id": row.id, "steps": [dict(s) for s in row.candidate.steps] + (
            [] if row.candidate.scheme == "fp32" else [{"quantize": row.candidate.scheme}]),
        "format": row.candidate.format, "precision": row.candidate.precision, "scheme": row.candidate.scheme,
        "size_bytes": b.size_bytes if b else None,
        "p50_ms": median(t.p50) if t and t.p50 else None, "p90_ms": median(t.p90) if t and t.p90 else None,
        "speedup": row.speedup,
        "rounds": {"p50_ms": t.p50, "baseline_p50_ms": t.base_p50, "p90_ms": t.p90,
                   "baseline_p90_ms": t.base_p90} if t else None,
        "peak_rss_bytes": t.peak_rss_bytes if t else None,
        "metric": b.metric if b else None, "value": accuracy(row), "drop": row.drop,
        "accuracy_measured_on": measured_on(row, device),   # where "value" (and "drop") were measured
        "host_value": b.value if b else None,
        "device_value": row.device.value if row.device else None,
        "status": row.status if row.status in STATUSES else "skipped", "reason": row.reason,
        "notes": list(b.notes) if b else [],
    }


def report_dict(result: SearchResult, config: dict, env: dict) -> dict:
    device = config.get("device")
    return {"schema": SCHEMA, "baseline": candidate_dict(result.baseline, device), "chosen": result.chosen.id,
            "why": result.why, "objective": config["objective"], "max_drop": config["max_drop"],
            "rule": f"chosen over FP32 only at >= {MIN_SPEEDUP}x median speedup and faster in every round",
            "budget_minutes": config["budget_minutes"], "elapsed_s": result.elapsed_s,
            "budget_reached": result.budget_reached, "stopped": _stopped(result), "notes": result.notes,
            "formats": result.formats, "pruning": result.pruning, "env": env, "config": config,
            "candidates": [candidate_dict(r, device) for r in result.rows]}


def _stopped(result: SearchResult) -> dict | None:
    """Why the search stopped before its plan was done (None: it was not)."""
    if result.stopped is None:
        return None
    why = ("the budget: no further build could finish within it" if result.stopped == "budget"
           else f"{result.stopped} received")
    return {"by": result.stopped, "why": why, "after_s": round(result.elapsed_s, 1)}


def write_all(out_dir: Path, result: SearchResult, config: dict, env: dict, recipe: dict) -> dict:
    """Write every output into `out_dir`, each file atomically; best/ is replaced as a whole."""
    report = report_dict(result, config, env)
    write_best(out_dir / "best", result, config["threads"], config.get("device"))
    write_baseline(out_dir / "baseline", result)
    atomic_write_text(out_dir / "report.json", json.dumps(report, indent=2) + "\n")
    atomic_write_text(out_dir / "report.md", markdown(report))
    atomic_write_text(out_dir / "recipe.yaml", recipe_yaml(relative_paths(recipe, out_dir), result.chosen))
    png = pareto_png(report)
    atomic_write_bytes(out_dir / "pareto.png", png)
    atomic_write_text(out_dir / "report.html", report_html(report, png))
    return report


def relative_paths(recipe: dict, out_dir: Path) -> dict:
    """The recipe's file paths relative to OUTDIR, where recipe.yaml lies (a recipe's relative paths are read
    relative to its own folder): the folder can move with its inputs, or be rerun from another checkout."""
    def rel(value):
        if not isinstance(value, str) or not value:
            return value
        prefix, file, suffix = spec_parts(value)
        if not Path(file).is_absolute() or not Path(file).exists():
            return value
        return prefix + os.path.relpath(file, Path(out_dir).resolve()) + suffix
    out = {k: rel(v) if k in ("model", "arch", "example_inputs", "metric") else v for k, v in recipe.items()}
    if isinstance(recipe.get("data"), dict):
        out["data"] = {k: rel(v) for k, v in recipe["data"].items()}
    return out


def write_best(best: Path, result: SearchResult, threads: int, device: str | None = None) -> None:
    """best/: the chosen candidate's export folder, its manifest noting what it was compared against."""
    from edgeai.manifest import Manifest

    src = Path(result.chosen.built.folder)
    manifest = Manifest.read(src)
    entry = manifest.artifacts[0]
    base = result.baseline
    chosen = candidate_dict(result.chosen, device)
    entry.metrics.update({"latency_p50_ms": chosen["p50_ms"], "latency_threads": threads,
                          "speedup_vs_fp32": result.chosen.speedup,
                          **({result.chosen.built.metric: result.chosen.built.value} if result.chosen.built.metric
                             else {})})
    manifest.source = {**manifest.source, "optimize": {
        "chosen": result.chosen.id, "why": result.why,
        "accuracy": {k: chosen[k] for k in ("metric", "value", "accuracy_measured_on", "host_value", "device_value")},
        "reference": {"artifact": base.id, "metric": base.built.metric, "value": base.built.value,
                      "outputs_sha256": base.built.reference_sha256,
                      "what": "FP32 export of the original model, run on the evaluation data"}}}
    _replace_folder(best, src, [entry.file, *entry.extra_files], manifest)


def write_baseline(dest: Path, result: SearchResult) -> None:
    """baseline/: the FP32 export best/ was compared with (`edgeai eval best/ --reference baseline/`)."""
    from edgeai.manifest import Manifest

    src = Path(result.baseline.built.folder)
    manifest = Manifest.read(src)
    entry = manifest.artifacts[0]
    _replace_folder(dest, src, [entry.file, *entry.extra_files], manifest)


def _replace_folder(dest: Path, src: Path, files: list[str], manifest) -> None:
    """Build `dest` beside itself, then swap it in by rename: a reader never sees half a folder."""
    import tempfile

    from edgeai.outdir import check_replaceable

    check_replaceable(dest)
    stage = Path(tempfile.mkdtemp(prefix=f".{dest.name}-new-", dir=dest.parent))
    old = dest.parent / f".{dest.name}-old-{stage.name}"
    try:
        for f in files:
            shutil.copyfile(src / f, stage / f)
        manifest.artifacts[0].verify_files(stage)  # what is published is what was built, timed and scored
        manifest.write(stage)          # the manifest last, as every export folder
        if dest.exists():
            dest.rename(old)
        stage.rename(dest)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)


def _fmt(v: Any, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def markdown(report: dict) -> str:
    base = report["baseline"]
    lines = [f"# edgeai optimize: {report['chosen']}", ""]
    if report.get("stopped"):
        st = report["stopped"]
        lines += [f"**Stopped early** after {st['after_s'] / 60:.1f} min ({st['why']}): the choice is the best of "
                  "what was built and timed by then.", ""]
    lines += [f"**Chosen:** {report['why']}", "",
             f"Objective {report['objective']}, accuracy budget {report['max_drop']:g} "
             f"({base['metric']}), {report['rule']}. Baseline {base['id']}: p50 {_fmt(base['p50_ms'], '.3f')} ms, "
             f"{base['metric']} {_fmt(base['value'], '.4g')}. Search took {report['elapsed_s'] / 60:.1f} of "
             f"{report['budget_minutes']:g} min.", "",
             "| candidate | status | size MB | p50 ms | p90 ms | speedup | metric | drop | reason |",
             "|---|---|---|---|---|---|---|---|---|"]
    for c in report["candidates"]:
        size = c["size_bytes"] / 1e6 if c["size_bytes"] else None
        lines.append(f"| {c['id']} | {c['status']} | {_fmt(size, '.3f')} | {_fmt(c['p50_ms'], '.3f')} | "
                     f"{_fmt(c['p90_ms'], '.3f')} | {_fmt(c['speedup'], '.2f')} | {metric_cell(c)} | "
                     f"{_fmt(c['drop'], '+.4g')} | {c['reason'].replace('|', '/')} |")
    if report["config"].get("device"):
        lines += ["", accuracy_where(report)]
    lines += _formats_md(report)
    if report.get("pruning", {}).get("method"):
        p = report["pruning"]
        lines += ["", f"Pruning search: {p['method']}."]
    if report["notes"]:
        lines += ["", *[f"- {n}" for n in report["notes"]]]
    cpu, device = report["env"].get("cpu", {}), report["env"].get("device")
    where = f"Timed on {device['device']}" if device else "Timed on this machine"
    lines += ["", f"{where}: {cpu.get('model', '?')} ({cpu.get('machine', '?')}, flags: "
                  f"{' '.join(cpu.get('flags', []))}); timing: {report['config']['rounds']} interleaved rounds, "
                  f"each candidate in a fresh process, {report['config']['threads']} thread(s), batch 1.", ""]
    return "\n".join(lines)


def _formats_md(report: dict) -> list[str]:
    """Each format's FP32, best unpruned and best candidate, all against the same baseline."""
    rows = report.get("formats") or []
    if len(rows) < 2:
        return []
    base = report["baseline"]["id"]
    out = ["", f"Formats against the same baseline ({base}):", "",
           "| format | FP32 speedup | best unpruned | speedup | best | speedup |", "|---|---|---|---|---|---|"]
    for f in rows:
        out.append(f"| {f['format']} | {_fmt(f['fp32_speedup'], '.2f')} | {f['best_unpruned'] or '-'} | "
                   f"{_fmt(f['best_unpruned_speedup'], '.2f')} | {f['best'] or '-'} | {_fmt(f['best_speedup'], '.2f')} |")
    return out


def recipe_yaml(recipe: dict, chosen: Row) -> str:
    import yaml

    recipe = {**recipe, "output": "out/optimized"}
    step = recipe["quantize"][0] if recipe["quantize"] else "fp32"   # a name, or {name: options}
    artifact = "fp32" if chosen.candidate.scheme == "fp32" else step if isinstance(step, str) else next(iter(step))
    head = (f"# Reproduces the choice of `edgeai optimize` ({chosen.id}):\n"
            f"#   edgeai export recipe.yaml   -> the artifact named '{artifact}' in {recipe['output']}/\n")
    return head + yaml.safe_dump(recipe, sort_keys=False)
