"""Shared by the benchmark scripts: model lists, random data, Markdown/JSON output with the machine named.

A run writes to benchmarks/results/runs/NAME-TIMESTAMP.json (and .md), never over the committed
results/NAME.json, unless the script is given --write-results.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"
sys.path.insert(0, str(ROOT))


def environment() -> dict:
    from edgeai.hw import cpu_info, os_info
    from edgeai.pipeline import versions
    return {"cpu": cpu_info(), "os": os_info(), "versions": versions()}


def machine_line(env: dict) -> str:
    cpu = env["cpu"]
    return (f"{cpu['model']} ({cpu['machine']}, {cpu['logical_cores']} cores; flags: {' '.join(cpu['flags'])}); "
            + ", ".join(f"{k} {v}" for k, v in env["versions"].items()))


def random_data(specs: list[str], n: int, seed: int, folder: Path, name: str) -> str:
    """Write n random N(0,1) samples for float inputs to an .npz; return its path."""
    from edgeai.specs import parse_input_spec, random_feeds
    parsed = [parse_input_spec(s) for s in specs]
    feeds = random_feeds(parsed, {"batch": n}, seed=seed)
    path = folder / f"{name}.npz"
    np.savez(path, **feeds)
    return str(path)


def reference_models() -> list[tuple[str, str, list[str], str, str, str]]:
    """(name, factory, inputs, kind, eval data, calibration data) of the zoo models."""
    from edgeai.zoo import REFERENCE_MODELS
    return [(f"digits-{m.name}", m.factory, list(m.inputs), m.kind, m.test_data, m.calib_data)
            for m in REFERENCE_MODELS.values()]


def edge_models(folder: Path, n_eval: int = 32, n_calib: int = 32):
    """(name, factory, inputs, kind, eval data, calibration data) of the random-weight edge models."""
    from edge_models import EDGE_MODELS
    out = []
    for name, (factory, inputs, kind) in EDGE_MODELS.items():
        out.append((name, str(ROOT / factory), inputs, kind,
                    random_data(inputs, n_eval, 1, folder, f"{name}-eval"),
                    random_data(inputs, n_calib, 2, folder, f"{name}-calib")))
    return out


def markdown_table(rows: list[dict], columns: list[tuple[str, str, str]]) -> str:
    """columns: (key, header, format spec)."""
    lines = ["| " + " | ".join(h for _, h, _ in columns) + " |",
             "|" + "|".join("---" for _ in columns) + "|"]
    for r in rows:
        cells = []
        for key, _, spec in columns:
            v = r.get(key)
            cells.append("-" if v is None else format(v, spec) if spec else str(v))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def parser(doc: str) -> argparse.ArgumentParser:
    """The scripts' argument parser: --help describes the run, --write-results replaces the committed tables."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--write-results", action="store_true",
                    help="write over the committed benchmarks/results/NAME.json and .md (default: a new file "
                         "under benchmarks/results/runs/)")
    return ap


def check_only(ap: argparse.ArgumentParser, only: list[str] | None, known) -> None:
    """Refuse --only names the script does not know (a typo would otherwise produce an empty table)."""
    unknown = [n for n in only or () if n not in known]
    if unknown:
        ap.error(f"--only: unknown model(s) {', '.join(unknown)}; known: {', '.join(known)}")


def result_path(name: str, write_results: bool, suffix: str = ".json") -> Path:
    """results/NAME.json with --write-results, else a new runs/NAME-TIMESTAMP.json."""
    if write_results:
        return RESULTS / f"{name}{suffix}"
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")
    return RESULTS / "runs" / f"{name}-{stamp}{suffix}"


def write_results(name: str, rows: list[dict], table: str, env: dict, extra: dict | None = None, *,
                  write_results: bool, notes: str = "") -> None:
    path = result_path(name, write_results)
    path.parent.mkdir(parents=True, exist_ok=True)
    created = datetime.now(timezone.utc).isoformat(timespec="seconds")
    payload = {"schema": f"edgeai.benchmarks.{name}/1", "created": created, "env": env, "rows": rows,
               **(extra or {})}
    path.write_text(json.dumps(payload, indent=2) + "\n")
    tail = f"\n{notes}\n" if notes else ""
    path.with_suffix(".md").write_text(f"Machine: {machine_line(env)}\n\nCreated {created}.\n\n{table}\n{tail}")
    print(f"\nMachine: {machine_line(env)}\n\n{table}\n\nwrote {path} and .md")


def workdir():
    return tempfile.TemporaryDirectory(prefix="edgeai-bench-")


def timed(targets: list[str], threads: int, min_seconds: float, rounds: int = 3) -> list[float | None]:
    """Median p50 (ms) of each target over `rounds` runs of the whole list.

    Each round runs every target in a fresh process, one after the other; taking the median
    over interleaved rounds keeps a burst of load on this shared machine from landing on one
    variant only. None for a target that failed in any round.
    """
    from statistics import median

    from edgeai.bench import bench
    samples: list[list[float | None]] = [[] for _ in targets]
    for _ in range(rounds):
        report = bench(targets, threads=threads, min_seconds=min_seconds, batch=1)
        for i, r in enumerate(report.results):
            samples[i].append(r.timing.p50_ms if r.ok else None)
    return [None if None in s else median(s) for s in samples]


def models_main(name: str, doc: str, run, columns, extra_models=()) -> None:
    """The command line shared by the per-model benchmarks: pick models, run, write the table."""
    import logging

    ap = parser(doc)
    ap.add_argument("--only", nargs="*", help="model names to run (default: all; a wrong one lists them)")
    ap.add_argument("--min-seconds", type=float, default=2.0, help="timed seconds per variant (default 2)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--results", default=name, help=f"results file stem under benchmarks/results (default {name})")
    args = ap.parse_args()
    if args.only:  # the names need the edge models' module, which imports torch: not for --help
        from edge_models import EDGE_MODELS
        from edgeai.zoo import REFERENCE_MODELS
        known = [f"digits-{m}" for m in REFERENCE_MODELS] + list(EDGE_MODELS) + [m[0] for m in extra_models]
        check_only(ap, args.only, known)
    logging.basicConfig(level=logging.WARNING)
    with workdir() as tmp:
        folder = Path(tmp)
        models = reference_models() + edge_models(folder) + list(extra_models)
        if args.only:
            models = [m for m in models if m[0] in args.only]
        rows = run(models, args.min_seconds, args.threads, folder)
    write_results(args.results, rows, markdown_table(rows, columns), environment(),
                  {"threads": args.threads, "batch": 1, "min_seconds": args.min_seconds},
                  write_results=args.write_results)
