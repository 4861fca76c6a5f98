"""The `edgeai` command line: parses arguments, calls the library, prints results."""
from __future__ import annotations

import argparse
import contextlib
import logging
import re
import signal
import sys
import threading
import traceback
from pathlib import Path
from typing import Iterator

from edgeai import __version__, argtypes
from edgeai.errors import EdgeAIError, RuntimeLoadError, Terminated
from edgeai.manifest import NO_VERIFY_HELP

log = logging.getLogger("edgeai")

EPILOG = """examples:
  edgeai export recipes/digits_cnn.yaml -o out/cnn
  edgeai export model.py:make_model --input image:batch,3,224,224 -o out/m
  edgeai export weights.pt --arch model.py:Net --example-inputs inputs.npz -o out/m
  edgeai run out/cnn@fp32 --input-data inputs.npz -o outputs.npz
  edgeai bench out/cnn --threads 1
  edgeai eval out/cnn --eval-data edgeai/zoo/data/digits_test_image.npz
  edgeai optimize edgeai.zoo:digits_cnn --input image:batch,1,32,32 --eval-data test.npz --max-drop 1 -o out/opt
  edgeai device setup ssh://pi@raspberrypi.local      install this edgeai (+ LiteRT) on a board, in a venv
"""


def _add_export(sub) -> None:
    p = sub.add_parser(
        "export", help="export a trained model (or run a recipe), verify it and write a manifest",
        description="Export MODEL to ONNX (or run RECIPE.yaml), verify the artifact against PyTorch on the "
                    "example shape and a second size of every dynamic dim, and write OUTDIR/manifest.json.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="MODEL is one of: file.py:factory | package.module:factory | TorchScript file | "
               "ExportedProgram .pt2 | state_dict file with --arch | .onnx file | RECIPE.yaml | "
               "hf:FOLDER or hf:ORG/NAME (a Hugging Face model; inputs from Optimum)")
    p.add_argument("model", metavar="MODEL|RECIPE.yaml")
    p.add_argument("-o", "--output", metavar="OUTDIR", help="output folder (default: the recipe's 'output')")
    p.add_argument("--input", dest="inputs", action="append", default=None, metavar="NAME:DIMS[:DTYPE]",
                   help="one per forward() input, in call order: DIMS are comma-separated ints or names; a "
                        "name is a dynamic dim, name=N sets its example size (e.g. image:batch,3,224,224 or "
                        "input_ids:batch,seq=16:int64); dtype defaults to float32")
    p.add_argument("--example-inputs", metavar="FILE.npz",
                   help="example inputs: keys are forward()'s parameter names, in call order; the leading dim "
                        "is a dynamic batch unless --fixed-batch")
    p.add_argument("--fixed-batch", action="store_true", help="with --example-inputs: keep the leading dim fixed")
    p.add_argument("--arch", metavar="FILE.py:FACTORY", help="builds the model a state_dict file belongs to")
    p.add_argument("--task", help="hf: models: the task to export for (default: from config.json), e.g. "
                                  "feature-extraction, text-classification, image-classification")
    p.add_argument("--trust-pickle", action="store_true",
                   help="allow full unpickling of MODEL (runs code from the file: only for files you trust)")
    p.add_argument("--format", default=None, help="export format (default onnx)")
    p.add_argument("--exporter", choices=("auto", "dynamo", "torchscript"), default=None,
                   help="ONNX export path: auto tries torch.export first, then TorchScript (default auto)")
    p.add_argument("--opset", type=int, default=None, help="ONNX opset (default 18)")
    p.add_argument("--decoder-graph", choices=("auto", "fused", "traced"), default=None,
                   help="--task text-generation: 'fused' writes the graph from the weights with onnxruntime's fused "
                        "operators (GroupQueryAttention, SkipLayerNorm; GPT-2, Llama, Qwen2, Mistral), 'traced' "
                        "uses torch.export; auto (default): fused where supported and verified, else traced")
    p.add_argument("--allow-trace-branches", action="store_true",
                   help="keep a TorchScript trace whose Python control flow read input values (it follows the "
                        "example inputs' branch; --eval-data verifies it on real samples)")
    p.add_argument("--channels-last-io", action="store_true",
                   help="TFLite: take image inputs as NHWC (a camera frame needs no transpose)")
    p.add_argument("--fuse-lstm", action="store_true",
                   help="TFLite: emit nn.LSTM as the fused UNIDIRECTIONAL_SEQUENCE_LSTM op instead of unrolling it")
    p.add_argument("--atol", type=argtypes.nonnegative_float, default=None,
                   help="verification absolute tolerance (default 1e-4)")
    p.add_argument("--rtol", type=argtypes.nonnegative_float, default=None,
                   help="verification tolerance relative to max |reference| (default 1e-3)")
    p.add_argument("--quantize", action="append", default=None, metavar="SCHEME[,SCHEME]",
                   help="also write quantized variants, each verified and measured: fp16, int8-dynamic, "
                        "int8-static (calibrated full integer; int8-full is an alias), the same names for ONNX and TFLite")
    p.add_argument("--quantize-option", action="append", default=None, metavar="SCHEME.KEY=VALUE",
                   help="an option of a --quantize scheme, typed as the scheme's config field (repeatable), e.g. "
                        "int8-dynamic.op_types=MatMul,Gemm,Conv or int8-static.per_channel=false")
    p.add_argument("--calibration", metavar="DATA",
                   help="calibration inputs for static INT8: FILE.npz keyed by input name, a folder of "
                        "NAME.npy files, or module:function")
    p.add_argument("--eval-data", metavar="DATA",
                   help="evaluate every artifact on this data: inputs keyed by input name plus optional "
                        "'labels' (top-1 in points); without labels, cosine similarity to FP32 PyTorch")
    p.add_argument("--max-drop", type=argtypes.finite_float, default=None,
                   help="accuracy budget for INT8 in the metric's units (points of top-1, or cosine: 0.01 means "
                        ">= 0.99): keep the most sensitive layers in FP32 until the drop fits")
    p.add_argument("--metric", metavar="FILE.py:FUNC|module:FUNC",
                   help="your task metric, FUNC(outputs: dict[name, array], labels) -> float, higher is better "
                        "(return minus an error); labels is the data's 'labels' array or None. Used to score "
                        "--eval-data and for --max-drop (in its units)")
    p.add_argument("--max-minutes", type=argtypes.finite_float, default=None, metavar="M",
                   help="a wall for the export's searches: distillation and the accuracy fallback stop when M "
                        "minutes have passed since the start, keeping the best found so far")
    p.add_argument("--no-bench", action="store_true", help="skip timing the variants for the summary table")
    p.add_argument("--threads", type=argtypes.threads, default=None, metavar="N",
                   help=f"threads for the summary timings (default 1; {argtypes.THREADS_HELP})")
    p.set_defaults(func=cmd_export)


def cmd_export(args) -> int:
    from dataclasses import replace

    from edgeai.extras import require
    for module in ("torch", "onnx"):  # a device install (no 'export' extra): say which extra to add
        require(module, "edgeai export")
    from edgeai.console import quiet_third_party
    from edgeai.pipeline import export
    from edgeai.recipe import Recipe, load_recipe
    from edgeai.report import print_export_summary

    if args.model.endswith((".yaml", ".yml")):
        recipe = load_recipe(args.model)
    else:
        recipe = Recipe(model=args.model)
    opts = {}
    if args.inputs:
        opts["inputs"] = tuple(args.inputs)
    for key in ("example_inputs", "arch", "format", "task"):
        if getattr(args, key):
            opts[key] = getattr(args, key)
    if args.trust_pickle:
        opts["trust_pickle"] = True
    if args.fixed_batch:
        opts["dynamic_batch"] = False
    export_opts = dict(recipe.export)
    if args.exporter:
        export_opts["exporter"] = args.exporter
    if args.decoder_graph:
        export_opts["decoder_graph"] = args.decoder_graph
    if args.opset:
        export_opts["opset"] = args.opset
    if args.allow_trace_branches:
        export_opts["allow_trace_branches"] = True
    if args.channels_last_io:
        export_opts["channels_last_io"] = True
    if args.fuse_lstm:
        export_opts["fuse_lstm"] = True
    tol = dict(recipe.tolerance)
    tol.update({k: v for k, v in (("atol", args.atol), ("rtol", args.rtol)) if v is not None})
    data = recipe.data
    if args.eval_data:
        data = replace(data, eval=args.eval_data)
    if args.calibration:
        data = replace(data, calibration=args.calibration)
    if args.quantize:
        opts["quantize"] = tuple({name.strip(): {}} for arg in args.quantize for name in arg.split(",") if name.strip())
    if args.quantize_option:
        from edgeai.vocabulary import with_scheme_options
        opts["quantize"] = with_scheme_options(opts.get("quantize", recipe.quantize), args.quantize_option,
                                               opts.get("format", recipe.format))
    if args.max_drop is not None:
        opts["max_drop"] = args.max_drop
    if args.max_minutes is not None:
        opts["max_minutes"] = args.max_minutes
    if args.metric:
        opts["metric"] = args.metric
    summary = recipe.summary
    if args.no_bench:
        summary = replace(summary, bench=False)
    if args.threads is not None:
        summary = replace(summary, threads=args.threads)
    if summary.bench:
        summary = replace(summary, threads=argtypes.cap_threads(summary.threads))
    recipe = replace(recipe, export=export_opts, tolerance=tol, data=data, summary=summary, **opts)
    with quiet_third_party(enabled=not args.debug):  # absl/oneDNN/XNNPACK lines, torchao and pytree warnings
        outcome = export(recipe=recipe, out_dir=args.output)  # progress: timed log lines on stderr
    print_export_summary(outcome.manifest, outcome.out_dir)
    return 0


def _add_run(sub) -> None:
    from edgeai.bench.results import PROVIDERS
    from edgeai.vocabulary import add_deprecated_alias
    p = sub.add_parser("run", help="run an artifact on inputs from an .npz and save the outputs",
                       description="Run ARTIFACT (a .onnx/.tflite file, an export folder's first artifact, or "
                                   "FOLDER@ARTIFACT) in its runtime.")
    p.add_argument("artifact", metavar="ARTIFACT|FOLDER[@ARTIFACT]")
    p.add_argument("--input-data", metavar="FILE.npz", help="the inputs to run on, keyed by input name")
    add_deprecated_alias(p, "--input", "--input-data", "input_data")
    p.add_argument("-o", "--output", required=True, metavar="OUT.npz", help="where to write the outputs")
    add_deprecated_alias(p, "--artifact-name", "FOLDER@ARTIFACT", "artifact_name")
    p.add_argument("--provider", default="cpu", choices=PROVIDERS, help="execution provider (default cpu)")
    p.add_argument("--threads", type=argtypes.threads, default=None, metavar="N",
                   help=f"intra-op threads (default: runtime's choice; {argtypes.THREADS_HELP})")
    p.add_argument("--no-verify-digest", action="store_true", help=NO_VERIFY_HELP)
    p.set_defaults(func=cmd_run)


def cmd_run(args) -> int:
    import io

    import numpy as np

    from edgeai.fsutil import check_output_file, write_output
    from edgeai.runtime.subproc import load_guarded
    from edgeai.specs import load_npz

    from edgeai.errors import InputSpecError
    from edgeai.vocabulary import split_artifact
    if not getattr(args, "input_data", None):
        raise InputSpecError("edgeai run needs the inputs to run on: --input-data FILE.npz")
    path, name = split_artifact(args.artifact, getattr(args, "artifact_name", None))
    out = check_output_file(args.output)  # a bad -o fails before the model runs
    feeds = load_npz(args.input_data, "input file")
    feeds.pop("labels", None)
    # LiteRT can abort on a bad model: it runs in a child process, so that is an error message
    threads = argtypes.cap_threads(args.threads)
    session = load_guarded(path, artifact=name, provider=args.provider, threads=threads,
                           verify_digest=not args.no_verify_digest)
    outputs = _run_samples(session, feeds)
    buf = io.BytesIO()
    np.savez(buf, **outputs)
    write_output(out, buf.getvalue())  # a full disk is one line naming the file (fsutil.disk_error)
    for name, arr in outputs.items():
        print(f"{name}: shape {tuple(arr.shape)} {arr.dtype}")
    print(f"wrote {out}")
    return 0


def _run_samples(session, feeds: dict) -> dict:
    """Run the feeds at once, or one sample at a time when the model's batch is fixed at 1 (TFLite, a
    fixed-batch export) and the file holds several: the outputs are stacked on axis 0 as a batched run's."""
    import numpy as np
    sizes = {len(v) for v in feeds.values() if getattr(v, "ndim", 0) > 0}
    fixed_one = session.inputs and all(spec.shape[:1] == (1,) for spec in session.inputs)
    if not (fixed_one and len(sizes) == 1 and sizes != {1}):
        return session.run(feeds)
    runs = [session.run({k: v[i:i + 1] for k, v in feeds.items()}) for i in range(sizes.pop())]
    log.info("the model takes batch 1: ran the %d samples one at a time", len(runs))
    return {name: np.concatenate([r[name] for r in runs]) for name in runs[0]}


def _add_info(sub) -> None:
    p = sub.add_parser("info", help="show what an export folder holds (from its manifest)")
    p.add_argument("folder")
    p.add_argument("--no-verify-digest", action="store_true", help=NO_VERIFY_HELP)
    p.set_defaults(func=cmd_info)


def cmd_info(args) -> int:
    from edgeai.manifest import MANIFEST_NAME, Manifest
    from edgeai.report import print_export_summary
    folder = Path(args.folder)
    if not folder.is_dir():
        what = "does not exist" if not folder.exists() else "is a file, not an export folder"
        raise RuntimeLoadError(f"{args.folder!r} {what}; edgeai info reads the {MANIFEST_NAME} of a folder "
                               "that edgeai export wrote")
    manifest = Manifest.read(folder)
    if not args.no_verify_digest:
        for entry in manifest.artifacts:
            entry.verify_files(folder)
    _print_provenance(manifest)
    print_export_summary(manifest, folder, title="edgeai info")
    return 0


def _print_provenance(manifest) -> None:
    """What the folder was made from, when and with what: the lines above `info`'s table."""
    from rich.console import Console
    console, src = Console(), manifest.source
    inputs = ", ".join(f"{i['name']} ({', '.join(str(d) for d in i['shape'])}) {i['dtype']}"
                       for i in src.get("inputs", ()))
    recipe = f" (recipe {src['recipe']})" if src.get("recipe") else ""
    versions = ", ".join(f"{k} {v}" for k, v in manifest.versions.items() if v)
    for line in (f"source: {src.get('origin', '?')} [{src.get('kind', '?')}]{recipe}",
                 f"inputs: {inputs}" if inputs else "",
                 f"created: {manifest.created}; schema {manifest.schema}", f"made with: {versions}"):
        if line:
            console.print(line, markup=False, highlight=False)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edgeai", formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG,
        description="Make a trained PyTorch model small and fast, export it, verify it, run and benchmark it.")
    parser.add_argument("--version", action="version", version=f"edgeai {__version__}")
    _add_common(parser, False)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in (_add_export, _add_run, _add_info, *_extra_commands()):
        add(sub)
    for command in sub.choices.values():  # --debug / -q work after the command name too
        _add_common(command, argparse.SUPPRESS)
    return parser


def _add_common(parser: argparse.ArgumentParser, default) -> None:
    parser.add_argument("--debug", action="store_true", default=default, help="show tracebacks and debug logs")
    parser.add_argument("-q", "--quiet", action="store_true", default=default, help="only print results and errors")
    parser.add_argument("--wide", action="store_true", default=default,
                        help="print tables with every column even past the terminal's width (by default "
                             "the least important columns are hidden to fit, and the table says which)")


def _extra_commands():
    """Subcommands that live beside the code they drive (bench, eval)."""
    from edgeai.bench.cli import add_parser as add_bench
    from edgeai.bench.setup import add_parser as add_device
    from edgeai.data_text import add_parser as add_data
    from edgeai.evaluate.cli import add_parser as add_eval
    from edgeai.optimize.cli import add_parser as add_optimize
    from edgeai.runtime.generate_cli import add_parser as add_generate
    return [add_bench, add_eval, add_optimize, add_data, add_device, add_generate]


def _setup_logging(debug: bool, quiet: bool) -> None:
    from rich.console import Console
    from rich.logging import RichHandler
    # log lines go to stderr: stdout carries only results (tables, JSON)
    handler = RichHandler(console=Console(stderr=True), show_time=False, show_path=False, markup=False,
                          rich_tracebacks=debug)
    handler.setFormatter(logging.Formatter("%(message)s"))
    handler.addFilter(_final_paths)
    log.handlers[:] = [handler]
    log.setLevel(logging.DEBUG if debug else logging.WARNING if quiet else logging.INFO)
    log.propagate = False
    logging.getLogger().setLevel(logging.WARNING)


_STAGING = re.compile(r"[/\\]\.edgeai-staging-[^/\\\s]+")  # fsutil.staging_dir's folders


def _final_paths(record: logging.LogRecord) -> bool:
    """Log files by the name they are published under, not their place in the staging folder."""
    message = record.getMessage()
    if ".edgeai-staging-" in message:
        record.msg, record.args = _STAGING.sub("", message), ()
    return True


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    _setup_logging(args.debug, args.quiet)
    from edgeai.console import set_wide
    set_wide(args.wide)
    with _sigterm_unwinds():
        try:
            argtypes.check_utf8_args(vars(args))
            return int(args.func(args) or 0)
        except EdgeAIError as e:
            if args.debug:
                traceback.print_exc()
            print(f"edgeai: error: {e}", file=sys.stderr)
            return 2
        except Terminated:
            print("edgeai: terminated (SIGTERM)", file=sys.stderr)
            return 128 + signal.SIGTERM
        except KeyboardInterrupt:
            print("edgeai: interrupted", file=sys.stderr)
            return 128 + signal.SIGINT
        except OSError as e:
            from edgeai.fsutil import disk_error
            error = disk_error(e.filename, e)  # a full disk anywhere is the machine's state, not a bug
            if error is None:
                return _internal_error(e, args.debug)
            if args.debug:
                traceback.print_exc()
            print(f"edgeai: error: {error}", file=sys.stderr)
            return 2
        except Exception as e:
            return _internal_error(e, args.debug)


def _internal_error(e: Exception, debug: bool) -> int:
    if debug:
        traceback.print_exc()
    print(f"edgeai: internal error: {type(e).__name__}: {' '.join(str(e).split())[:300]} "
          "(run with --debug for the traceback and please report it)", file=sys.stderr)
    return 1


@contextlib.contextmanager
def _sigterm_unwinds() -> Iterator[None]:
    """SIGTERM raises Terminated, so it unwinds like Ctrl-C: staging folders go, outputs stay untouched."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def terminate(signum, frame):
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
