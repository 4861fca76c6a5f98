"""`edgeai optimize MODEL --task text-generation`: the fastest decoder variant within a perplexity budget.

Candidates: FP32, int8-weight, int4-weight (block 32 and 128) and mixed (INT4 with lm_head and embeddings at
INT8), made by the decoder export's own variant steps (edgeai.steps.decoder_variants) with the LM budget held by
raising the most sensitive MatMuls. Each is scored on --eval-data (a .txt: perplexity, top-1 agreement and KL to
FP32) and timed by `edgeai bench` (fresh process each, --rounds interleaved rounds): --objective p50 is the
decode latency per new token (highest decode tokens/s), ttft the time to the first token at a 32-token prompt,
size the bytes. --max-drop is the allowed perplexity increase in percent (default 1). OUTDIR/candidates holds
every variant (an export folder), OUTDIR/best the chosen one, OUTDIR/report.json the table.
"""
from __future__ import annotations

import json
import logging
import shutil
from dataclasses import asdict, replace
from pathlib import Path
from statistics import median
from typing import Callable

from edgeai.errors import ConfigError

log = logging.getLogger(__name__)

CANDIDATES = ({"int8-weight": {}}, {"int4-weight": {}}, {"int4-weight": {"block_size": 128, "name": "int4-weight-b128"}},
              {"mixed": {}})
DEFAULT_MAX_PPL_INCREASE_PCT = 1.0
DECODER_OBJECTIVES = ("p50", "ttft", "size")
BENCH = {"prompt_lengths": [32], "depths": [32], "new_tokens": 32, "repeats": 3}


def _check(config) -> float:
    """The perplexity budget in percent; ConfigError for what a decoder search cannot take."""
    text = config.eval_data
    if not text or not str(text).lower().endswith(".txt") or not Path(text).is_file():
        raise ConfigError(f"a decoder is scored on text: pass --eval-data FILE.txt (got {text!r})")
    if config.objective not in DECODER_OBJECTIVES:
        raise ConfigError(f"decoder objectives: {', '.join(DECODER_OBJECTIVES)}; got {config.objective!r}")
    unsupported = [k for k, v in (("formats", config.formats != ("onnx",)), ("calibration", config.calibration),
                                  ("train_data", config.train_data), ("metric", config.metric),
                                  ("prune_ratios", config.prune_ratios), ("device", config.device)) if v]
    if unsupported:
        raise ConfigError(f"decoder search does not take {', '.join(unsupported)} (ONNX weight-only variants, "
                          "timed on this machine)")
    budget = DEFAULT_MAX_PPL_INCREASE_PCT if config.max_drop is None else float(config.max_drop)
    if budget < 0:
        raise ConfigError(f"--max-drop is the allowed perplexity increase in percent, >= 0; got {budget}")
    return budget


def _timings(folder: Path, names: list[str], config, progress) -> dict[str, dict]:
    """{artifact: median decode tok/s, TTFT ms, peak RSS} over config.rounds interleaved bench rounds."""
    from edgeai.bench import bench
    runs: dict[str, list] = {n: [] for n in names}
    for r in range(config.rounds):
        progress({"event": "timing", "round": r + 1, "rounds": config.rounds})
        report = bench([f"{folder}@{n}" for n in names], threads=config.threads, warmup=3, decoder=BENCH,
                       verify_digest=False)
        for n, res in zip(names, report.results):
            if res.ok:
                runs[n].append(res)
    out = {}
    for n, rs in runs.items():
        if rs:
            out[n] = {"decode_tokens_per_s": median(r.decoder["decode_tokens_per_s"] for r in rs),
                      "ttft_ms": median(r.decoder["ttft_ms"] for r in rs),
                      "peak_rss_bytes": median(r.peak_rss_bytes for r in rs), "rounds": len(rs)}
    return out


def _score(row: dict, objective: str) -> float:
    """Higher is better."""
    if objective == "ttft":
        return -row["ttft_ms"]
    if objective == "size":
        return -row["size_bytes"]
    return row["decode_tokens_per_s"]


def run_decoder(config, out_dir: Path, progress: Callable[[dict], None] | None = None):
    """Build, score, time and choose; returns edgeai.optimize.OptimizeResult."""
    import edgeai
    from edgeai.evaluate.text import load_tokens, score_artifacts
    from edgeai.fsutil import atomic_write_text, ensure_writable_dir
    from edgeai.optimize import OptimizeResult
    from edgeai.recipe import DataConfig, Recipe
    budget = _check(config)
    progress = progress or (lambda event: log.info("%s", event))
    ensure_writable_dir(out_dir)
    folder = out_dir / "candidates"
    progress({"event": "building", "candidates": ["fp32", *(next(iter(c.values())).get("name", next(iter(c)))
                                                            for c in CANDIDATES)]})
    recipe = Recipe(model=config.model, task="text-generation", trust_pickle=config.trust_pickle,
                    export=dict(config.export))
    say = lambda msg: progress({"event": "export", "message": msg})  # noqa: E731
    edgeai.export(recipe=recipe, out_dir=folder, progress=say)      # FP32, verified against PyTorch
    manifest = _add_variants(folder, replace(recipe, quantize=CANDIDATES, max_drop=budget,
                                             data=DataConfig(eval=str(config.eval_data))), say)
    names = [e.name for e in manifest.artifacts]
    fp32 = manifest.get("fp32")
    ids = load_tokens(config.eval_data, folder, 4096)
    progress({"event": "scoring", "tokens": int(len(ids))})
    scores = {s.artifact: s for s in score_artifacts({n: (folder, n) for n in names}, ids, threads=config.threads)}
    timings = _timings(folder, names, config, progress)
    rows = []
    for e in manifest.artifacts:
        s, t = scores[e.name], timings.get(e.name)
        row = {"name": e.name, "precision": e.precision, "size_bytes": e.size_bytes, **asdict(s),
               "within_budget": 100 * s.ppl_increase <= budget, **(t or {}), "timed": t is not None}
        rows.append(row)
    fastest = [r for r in rows if r["within_budget"] and r["timed"]]
    if not fastest:
        raise ConfigError(f"no candidate was both timed and within +{budget:g}% perplexity; not even FP32 "
                          "(see the export's failed variants)")
    chosen = max(fastest, key=lambda r: _score(r, config.objective))
    base = next(r for r in rows if r["name"] == "fp32")
    why = (f"{chosen['name']}: {chosen['decode_tokens_per_s']:.1f} decode tok/s "
           f"({chosen['decode_tokens_per_s'] / base['decode_tokens_per_s']:.2f}x FP32), TTFT {chosen['ttft_ms']:.2f} ms, "
           f"perplexity {chosen['perplexity']:.3f} ({100 * chosen['ppl_increase']:+.2f}% <= +{budget:g}%), "
           f"objective {config.objective}")
    _write_best(folder, manifest, chosen["name"], out_dir / "best")
    report = {"schema": "edgeai.optimize.decoder/1", "model": config.model, "objective": config.objective,
              "max_ppl_increase_pct": budget, "eval_text": str(config.eval_data), "chosen": chosen["name"],
              "why": why, "candidates": rows, "failed": manifest.failed, "bench": BENCH, "threads": config.threads}
    atomic_write_text(out_dir / "report.json", json.dumps(report, indent=2) + "\n")
    progress({"event": "chosen", "candidate": chosen["name"], "why": why})
    return OptimizeResult(out_dir, chosen["name"], why, report)


def _add_variants(folder: Path, recipe, say):
    """The candidates beside the FP32 export, in its manifest (written last)."""
    from edgeai.manifest import Manifest
    from edgeai.steps.decoder_variants import decoder_variants
    manifest = Manifest.read(folder)
    fp32 = manifest.get("fp32")
    variants, failed = decoder_variants(recipe, folder, fp32, say)
    manifest = replace(manifest, artifacts=[fp32, *variants], failed=list(manifest.failed) + failed)
    manifest.write(folder)
    return manifest


def _write_best(folder: Path, manifest, name: str, best: Path) -> None:
    """best/ as an export folder holding only the chosen artifact (files copied, then renamed into place)."""
    from edgeai.fsutil import locked_staging, publish
    entry = manifest.get(name)
    with locked_staging(best) as stage:
        for f in entry.files:
            shutil.copyfile(folder / f, stage / f)
        replace(manifest, artifacts=[entry]).write(stage)
        publish(stage, best, [*entry.files, "manifest.json"])


def is_decoder_config(config) -> bool:
    return config.task in ("text-generation", "text-generation-with-past")


def run_decoder_cli(config, out_dir: Path, quiet: bool = False) -> int:
    """The CLI's decoder branch: progress lines, then the candidates table and the choice."""
    from rich.console import Console
    from rich.table import Table

    from edgeai.console import print_wide
    console = Console()

    def show(event: dict) -> None:
        if not quiet:
            console.print("optimize: " + ", ".join(f"{k} {v}" for k, v in event.items() if k != "event"),
                          f"({event['event']})", markup=False, highlight=False)

    result = run_decoder(config, out_dir, show)
    table = Table(title=f"edgeai optimize (decoder): {out_dir}", title_justify="left")
    for col in ("candidate", "size MB", "decode tok/s", "TTFT ms", "perplexity", "ppl +%", "top-1 agree", "KL",
                "within"):
        table.add_column(col, justify="left" if col == "candidate" else "right")
    for r in result.report["candidates"]:
        timed = r["timed"]
        table.add_row(r["name"] + (" *" if r["name"] == result.chosen else ""), f"{r['size_bytes'] / 1e6:.2f}",
                      f"{r['decode_tokens_per_s']:.1f}" if timed else "-", f"{r['ttft_ms']:.2f}" if timed else "-",
                      f"{r['perplexity']:.3f}", f"{100 * r['ppl_increase']:+.2f}", f"{100 * r['top1_agreement']:.2f}%",
                      f"{r['kl']:.5f}", "yes" if r["within_budget"] else "no")
    print_wide(table, console)
    for f in result.report["failed"]:
        console.print(f"left out: {f['name']}: {f['error']}", style="yellow", markup=False, highlight=False)
    console.print(f"chosen: {result.why}", markup=False, highlight=False)
    console.print(f"wrote {result.best_dir}/, candidates/, report.json in {out_dir}", markup=False, highlight=False)
    return 0
