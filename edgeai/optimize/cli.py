"""The `edgeai optimize` subcommand: `add_parser(subparsers)` registers it; a rich progress bar while it runs."""
from __future__ import annotations

import argparse
import logging
import sys

from edgeai import argtypes
from edgeai.optimize.config import OBJECTIVES
from edgeai.optimize.stop import EXIT_CODES, Stopped
from edgeai.vocabulary import add_deprecated_alias

DESCRIPTION = """\
Find the fastest variant of MODEL for this machine (or the --device) within an accuracy budget, by measuring.
Candidates: FP32, FP16, INT8-dynamic and INT8-static in each format, structured pruning at a few
ratios (distilled when --train-data is given) and prune -> quantize combinations, cheap likely
winners first. Every candidate is exported and verified by the export pipeline, scored on
--eval-data in its own runtime and timed against FP32 in interleaved rounds (each in a fresh
process). A candidate replaces FP32 only if its median speedup is >= 1.03x AND it is faster in
every round; ties go to the smaller file. --budget-minutes bounds the whole command: at the budget,
or on SIGINT/SIGTERM, it times what it built and writes the report from the best so far.
Exit 0 whichever is chosen (the budget included), 2 on bad input, 130/143 after SIGINT/SIGTERM."""

EPILOG = """\
writes OUTDIR/best/ (an export folder with the chosen artifact), baseline/ (the FP32 export it was
compared with: edgeai eval OUTDIR/best --eval-data E.npz --reference OUTDIR/baseline), report.md, report.json
(schema edgeai.optimize/1), pareto.png and recipe.yaml (reproduces the choice with edgeai export).
examples:
  edgeai optimize edgeai.zoo:digits_cnn --input image:batch,1,32,32 --eval-data test.npz \\
      --calibration calib.npz --max-drop 1.0 -o out/opt
  edgeai optimize model.py:make --example-inputs x.npz --eval-data e.npz --metric metric.py:pitch_error \\
      --max-drop 2 --train-data t.npz --format onnx,tflite --budget-minutes 20 -o out/opt
  edgeai optimize model.py:make --input x:batch,64 --eval-data e.npz --max-drop 1 -o out/opt \\
      --device ssh://pi@raspberrypi.local --device-python /home/pi/edgeai/bin/python"""


def _csv(text: str) -> tuple[str, ...]:
    return tuple(t.strip() for t in text.split(",") if t.strip())


def _ratios(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(t) for t in _csv(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated fractions such as 0.5,0.75, got {text!r}")


def add_parser(sub) -> None:
    p = sub.add_parser("optimize", help="find the fastest variant within an accuracy budget, by measuring",
                       description=DESCRIPTION, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", metavar="MODEL")
    p.add_argument("-o", "--output", required=True, metavar="OUTDIR")
    p.add_argument("--input", dest="inputs", action="append", default=None, metavar="NAME:DIMS[:DTYPE]",
                   help="one per forward() input, as for edgeai export")
    p.add_argument("--example-inputs", metavar="X.npz", help="example inputs keyed by forward()'s parameter names")
    p.add_argument("--fixed-batch", action="store_true", help="with --example-inputs: keep the leading dim fixed")
    p.add_argument("--arch", metavar="FILE.py:FACTORY", help="builds the model a state_dict file belongs to")
    p.add_argument("--trust-pickle", action="store_true", help="allow full unpickling of MODEL")
    p.add_argument("--eval-data", required=True, metavar="E.npz",
                   help="scores every candidate: inputs plus optional 'labels' (top-1; without labels, "
                        "cosine to FP32 PyTorch)")
    p.add_argument("--metric", metavar="FILE.py:FUNC",
                   help="your metric FUNC(outputs: dict[str, ndarray], labels) -> float, higher is better")
    p.add_argument("--max-drop", type=argtypes.finite_float, required=True,
                   help="accuracy budget in the metric's units (top-1 points, cosine, or your metric)")
    p.add_argument("--calibration", metavar="C.npz", help="calibration inputs (static INT8 needs them)")
    p.add_argument("--train-data", metavar="T.npz", help="training data: pruned candidates are distilled on it")
    p.add_argument("--format", dest="formats", type=_csv, default=(), metavar="onnx[,tflite]",
                   help="formats to try; the first one's FP32 is the baseline (default: onnx, and tflite "
                        "when the tflite extra is installed)")
    add_deprecated_alias(p, "--formats", "--format", "formats", type=_csv)
    p.add_argument("--objective", choices=OBJECTIVES, default="p50",
                   help="p50 or p90 latency, or size (the smallest file not slower than FP32); default p50")
    p.add_argument("--budget-minutes", type=argtypes.finite_float, default=30.0,
                   help="the whole command's time, report included: stops with the best so far (default 30)")
    p.add_argument("--threads", type=argtypes.threads, default=1, metavar="N",
                   help=f"threads when timing (default 1; {argtypes.THREADS_HELP})")
    p.add_argument("--max-size-mb", type=argtypes.finite_float, default=None, help="reject candidates larger than this")
    p.add_argument("--max-rss-mb", type=argtypes.finite_float, default=None,
                   help="reject candidates whose peak RSS exceeds this")
    p.add_argument("--prune-ratios", type=_ratios, default=None, metavar="R,R",
                   help="fractions of MACs to remove (default 0.5,0.7,0.85 with --train-data, else 0.25,0.5; "
                        "'' turns pruning off)")
    p.add_argument("--distill-epochs", type=argtypes.positive_int, default=None,
                   help="most epochs of distillation per pruned candidate (default: the distill step's)")
    p.add_argument("--rounds", type=argtypes.positive_int, default=3, help="interleaved timing rounds (default 3)")
    p.add_argument("--min-seconds", type=argtypes.seconds, default=1.0, help="timed seconds per candidate per round")
    p.add_argument("--workers", type=argtypes.positive_int, default=1,
                   help="parallel builds (default 1: timing is never parallel)")
    p.add_argument("--ray", metavar="ADDRESS", help="build on a Ray cluster ('local' starts one here)")
    p.add_argument("--cache-dir", metavar="DIR", help="where built candidates are kept (default OUTDIR/.cache)")
    p.add_argument("--no-cache", action="store_true", help="rebuild and re-time everything")
    p.add_argument("--task", help="hf: models: the Optimum task (default: read from config.json)")
    dev = p.add_argument_group("where candidates are timed and scored (default: this machine; builds stay here)")
    dev.add_argument("--device", metavar="ssh://HOST", default=None,
                     help="ssh://[USER@]HOST[:PORT]: time every candidate there with the device's edgeai, as "
                          "edgeai bench --device does (artifacts are copied once, by sha256), and judge its "
                          "accuracy on its outputs there")
    dev.add_argument("--ssh-config", metavar="FILE", help="ssh config file read before ~/.ssh/config (its settings win)")
    dev.add_argument("--device-python", metavar="PATH",
                     help="the device's Python that has edgeai installed (default: python3)")
    p.set_defaults(func=cmd_optimize)


def cmd_optimize(args) -> int:
    from pathlib import Path

    from edgeai.extras import require
    require("torch", "edgeai optimize")  # a device install (no 'export' extra): say which extra to add
    from edgeai.optimize import OptimizeConfig, run

    threads = args.threads if args.device else argtypes.cap_threads(args.threads)  # a device has its own cores
    config = OptimizeConfig(
        model=args.model, eval_data=args.eval_data, max_drop=args.max_drop, inputs=tuple(args.inputs or ()),
        example_inputs=args.example_inputs, arch=args.arch, trust_pickle=args.trust_pickle,
        dynamic_batch=not args.fixed_batch, metric=args.metric, calibration=args.calibration,
        train_data=args.train_data, formats=args.formats, objective=args.objective,
        budget_minutes=args.budget_minutes, threads=threads, max_size_mb=args.max_size_mb,
        max_rss_mb=args.max_rss_mb, prune_ratios=args.prune_ratios, rounds=args.rounds,
        min_seconds=args.min_seconds, workers=args.workers, ray=args.ray, cache_dir=args.cache_dir,
        no_cache=args.no_cache, distill={"epochs": args.distill_epochs} if args.distill_epochs else {},
        task=args.task, device=args.device, ssh_config=args.ssh_config, device_python=args.device_python)
    from edgeai.optimize.decoder import is_decoder_config, run_decoder_cli
    if is_decoder_config(config):  # --task text-generation: edgeai/optimize/decoder.py
        return run_decoder_cli(config, Path(args.output), quiet=args.quiet)
    config.validate()
    bench_log = logging.getLogger("edgeai.bench")
    level = bench_log.level
    if not args.debug:  # the progress line says what is being timed; per-target bench lines would bury it
        bench_log.setLevel(logging.WARNING)
    try:
        with _ProgressDisplay(quiet=args.quiet) as display:
            result = run(config, Path(args.output), display.update)
    except Stopped as e:   # before the FP32 baseline was built: there is nothing to report
        print(f"edgeai optimize: {e} before the FP32 baseline was built; nothing was written", file=sys.stderr)
        return EXIT_CODES[e.name]
    finally:
        bench_log.setLevel(level)  # in-process callers (the API, tests) get their bench log lines back
    _print_summary(result)
    return EXIT_CODES.get(result.stopped or "", 0)   # 130/143 after a signal, once everything is written


class _ProgressDisplay:
    """candidates done/total, the current best and the time left.

    On a terminal: one rich progress line on stderr, with log lines printed above it (same stream, so
    they never collide). Elsewhere (CI, a pipe): a plain line whenever a candidate finishes or the step
    changes, and at least every PLAIN_EVERY_S seconds, so a log shows progress as it happens."""

    PLAIN_EVERY_S = 30.0

    def __init__(self, quiet: bool):
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
        self.console = Console(stderr=True)
        self.quiet, self.live = quiet, self.console.is_terminal
        self.progress = Progress(TextColumn("[bold]optimize"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.description}"), TimeElapsedColumn(), console=self.console,
                                 disable=quiet or not self.live, transient=False)
        self.task = self.progress.add_task("starting", total=None)
        self._last: tuple = ()
        self._last_at = 0.0

    def __enter__(self):
        self.progress.start()
        return self

    def __exit__(self, *exc):
        self.progress.stop()
        return False

    def update(self, event: dict) -> None:
        import time
        best = f"best {event['best']} {event['best_speedup']:.2f}x" if event.get("best_speedup") else "best FP32"
        left = f"{event['seconds_left'] / 60:.1f} min left"
        description = f"{best} | {left} | {event['message'][:60]}"
        if self.live:
            self.progress.update(self.task, total=event["total"], completed=event["done"], description=description)
            return
        key, now = (event["done"], event["message"]), time.monotonic()
        if not self.quiet and (key != self._last or now - self._last_at >= self.PLAIN_EVERY_S):
            self._last, self._last_at = key, now
            print(f"optimize {event['done']}/{event['total'] or '?'} | {description}", file=sys.stderr, flush=True)


def _print_summary(result) -> None:
    from rich.console import Console
    from rich.table import Table

    from edgeai.console import fmt_ms, print_table
    from edgeai.optimize.report_html import metric_cell

    table = Table(title=f"edgeai optimize: {result.out_dir}", title_justify="left")
    for col in ("candidate", "status", "size MB", "p50 ms", "speedup", "metric", "drop", "reason"):
        table.add_column(col, no_wrap=col != "reason")
    styles = {"chosen": "bold green", "rejected": "red", "failed": "red", "skipped": "dim"}
    for c in result.report["candidates"]:
        table.add_row(c["id"], c["status"], _fmt(c["size_bytes"] and c["size_bytes"] / 1e6, ".3f"),
                      fmt_ms(c["p50_ms"]), _fmt(c["speedup"], ".2f"), metric_cell(c),
                      _fmt(c["drop"], "+.4g"), c["reason"], style=styles.get(c["status"]))
    console = Console()
    print_table(table, console, drop=("drop", "size MB", "metric"), fold=("reason", "candidate"))
    formats = result.report.get("formats") or []
    if len(formats) > 1:
        console.print("formats against " + formats[0]["baseline"] + ": " + "; ".join(
            f"{f['format']} best {f['best'] or '-'} {_fmt(f['best_speedup'], '.2f')}x" for f in formats),
            markup=False, highlight=False)
    for note in result.report["notes"]:
        console.print(f"note: {note}", style="yellow", markup=False, highlight=False)
    console.print(f"chosen: {result.why}", markup=False, highlight=False)
    console.print(f"wrote {result.best_dir}/, baseline/, report.md, report.html, report.json, pareto.png, recipe.yaml in "
                  f"{result.out_dir}",
                  markup=False, highlight=False)


def _fmt(v, spec: str) -> str:
    return "-" if v is None else format(v, spec)
