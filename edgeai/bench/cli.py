"""The `edgeai bench` subcommand: `add_parser(subparsers)` registers it, `run(args)` runs it."""
from __future__ import annotations

import argparse
from pathlib import Path

from edgeai.argtypes import THREADS_HELP, cap_threads, count, is_count, positive_int, seconds, threads
from edgeai.bench.results import PRECISIONS, PROVIDERS, RUNTIMES
from edgeai.bench.stats import DEFAULT_MAX_SECONDS, DEFAULT_MIN_RUNS, DEFAULT_MIN_SECONDS
from edgeai.errors import InputSpecError, OutputError
from edgeai.fsutil import check_output_file, ensure_writable_dir, write_output
from edgeai.manifest import NO_VERIFY_HELP

DESCRIPTION = f"""\
Time models the way TFLite's benchmark_model and MLPerf do. For each target: load time, the
first (cold) inference, then after --warmup runs the p50/p90/p99, mean, std, min and max
latency of the timed runs, peak RSS of the process and model size. Each target runs in its
own fresh Python process (so one cannot warm caches for the next); a target whose runtime
crashes is reported as failed with its signal, and the others are still measured.
Timed runs: --runs N exactly, or --min-seconds S at least; by default at least
{DEFAULT_MIN_RUNS} runs and at least {DEFAULT_MIN_SECONDS:g} s, stopping at {DEFAULT_MAX_SECONDS:g} s.
Exit status: 0 when every target was measured, 1 when any failed."""

EPILOG = """\
examples:
  edgeai bench model.onnx model-int8.onnx
  edgeai bench out/                      every artifact in out/manifest.json, in order
  edgeai bench out/@int8-static --threads 4 --runs 200 --json bench.json
  edgeai bench --runtime torch edgeai.zoo:digits_cnn --input image:batch,1,32,32
  edgeai bench out/ --device ssh://pi@raspberrypi.local --device-python /home/pi/edgeai/bin/python
  edgeai bench model.tflite --device adb:SERIAL --benchmark-binary android_aarch64_benchmark_model
  edgeai bench --compare base.json new.json --threshold 5%   exit 1 on a p50 regression past 5%
JSON schema (edgeai.bench/1): edgeai/bench/SCHEMA.md"""


def parse_dims(texts: list[str]) -> dict[str, int]:
    """`["seq=128", "height=224"]` -> {"seq": 128, "height": 224}."""
    dims = {}
    for text in texts:
        name, _, size = text.partition("=")
        if not name or not is_count(size) or int(size) < 1:
            raise InputSpecError(f"bad --dim {text!r}: expected NAME=SIZE with a positive size, e.g. seq=128")
        dims[name] = int(size)
    return dims


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "bench", help="time models: load, first inference, p50/p90/p99 latency, memory",
        description=DESCRIPTION, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("targets", nargs="*", metavar="ARTIFACT_OR_MODEL",
                   help="a .onnx/.tflite file, an edgeai export folder (every artifact of its manifest) "
                        "or FOLDER@ARTIFACT; with --runtime torch a model spec (e.g. edgeai.zoo:digits_cnn)")
    p.add_argument("--runtime", choices=RUNTIMES, default="auto",
                   help="auto: each artifact in its format's runtime (onnx: onnxruntime); torch: run "
                        "model specs in PyTorch (default: auto)")
    p.add_argument("--threads", type=threads, default=1, metavar="N",
                   help="intra-op threads (onnxruntime intra_op_num_threads, torch.set_num_threads); "
                        f"default: 1; {THREADS_HELP}")
    p.add_argument("--warmup", type=count, default=10, metavar="W",
                   help="untimed runs after the first inference (default: 10)")
    stop = p.add_mutually_exclusive_group()
    stop.add_argument("--runs", type=positive_int, metavar="N", help="time exactly N runs")
    stop.add_argument("--min-seconds", type=seconds, metavar="S",
                      help="time runs until S seconds have passed (no cap)")
    p.add_argument("--batch", type=positive_int, default=1, metavar="B",
                   help="size of the dynamic dim named 'batch' (else the first dynamic dim); default: 1")
    p.add_argument("--dim", action="append", default=[], metavar="NAME=SIZE",
                   help="size of another dynamic dim, e.g. --dim seq=128 (repeatable); unset dims "
                        "take their example size")
    p.add_argument("--provider", choices=PROVIDERS, default="cpu",
                   help="execution device: cuda (onnxruntime-gpu or a CUDA torch), tensorrt (onnxruntime-gpu with "
                        "TensorRT); GPU runs are timed with inputs already on the GPU and a device sync per "
                        "run; default: cpu")
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON (schema edgeai.bench/1)")
    p.add_argument("--no-verify-digest", action="store_true", help=NO_VERIFY_HELP)
    p.add_argument("--no-isolate", action="store_true",
                   help="measure every target in this process (faster to run; caches and peak RSS "
                        "are shared between targets)")
    dev = p.add_argument_group("where to run (default: this machine)")
    dev.add_argument("--device", metavar="ssh://HOST | adb:SERIAL", default=None,
                     help="ssh://[USER@]HOST[:PORT]: copy the artifacts there (once, by sha256) and time them "
                          "with the device's edgeai; adb:SERIAL: time a .tflite on an Android device with "
                          "--benchmark-binary")
    dev.add_argument("--ssh-config", metavar="FILE", help="ssh config file read before ~/.ssh/config (its settings win)")
    dev.add_argument("--device-python", metavar="PATH",
                     help="the device's Python that has edgeai installed (default: python3)")
    dev.add_argument("--benchmark-binary", metavar="PATH",
                     help="TFLite's benchmark_model built for the Android device (adb devices)")
    from edgeai.bench.decoder import add_decoder_options
    add_decoder_options(p)
    cmp = p.add_argument_group("compare two reports (for CI)")
    cmp.add_argument("--compare", nargs=2, metavar=("BASE.json", "NEW.json"),
                     help="print NEW/BASE p50 ratios per target; exit 1 when one is slower by more than "
                          "--threshold")
    cmp.add_argument("--threshold", default="5%", metavar="PCT",
                     help="allowed p50 slowdown for --compare, e.g. 5%% or 0.05 (default: 5%%); a slowdown "
                          "within either run's own p90/p50 spread is not a regression")
    torch_opts = p.add_argument_group("model specs (--runtime torch), passed to edgeai.source.load_model")
    torch_opts.add_argument("--input", action="append", default=[], metavar="NAME:DIM,...[:DTYPE]",
                            help="an input of the model, e.g. image:batch,1,32,32 (repeatable, call order)")
    torch_opts.add_argument("--precision", choices=PRECISIONS, default="fp32",
                            help="cast the module's weights and float inputs to this dtype before timing "
                                 "(fp16/bf16: the usual GPU precisions); default: fp32")
    torch_opts.add_argument("--example-inputs", metavar="NPZ", help="example inputs file (.npz)")
    torch_opts.add_argument("--arch", metavar="MODULE:FACTORY", help="builds the module a state_dict is loaded into")
    torch_opts.add_argument("--trust-pickle", action="store_true",
                            help="allow loading a pickled full model (runs code from the file)")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from edgeai.bench.report import print_report
    from edgeai.bench.runner import bench

    if args.compare:
        from edgeai.bench.compare import run_compare
        if args.targets:
            raise InputSpecError("--compare takes two report files and no targets")
        return run_compare(args.compare[0], args.compare[1], args.threshold)
    if not args.targets:
        raise InputSpecError("nothing to benchmark; pass a .onnx/.tflite file or an export folder "
                             "(or --compare BASE.json NEW.json)")
    from edgeai.bench.decoder import decoder_options
    from edgeai.bench.devices import parse_device
    device = parse_device(args.device, ssh_config=args.ssh_config, device_python=args.device_python,
                          benchmark_binary=args.benchmark_binary)
    if args.runtime == "torch":  # a device install has no torch: say which extra brings it
        from edgeai.extras import require
        require("torch", "edgeai bench --runtime torch")
    dims = parse_dims(args.dim)
    load_options = {k: v for k, v in (("example_inputs", args.example_inputs), ("arch", args.arch),
                                      ("trust_pickle", args.trust_pickle)) if v}
    if (args.input or load_options or args.precision != "fp32") and args.runtime != "torch":
        raise InputSpecError("--input, --example-inputs, --arch, --trust-pickle and --precision describe PyTorch model "
                             "specs; add --runtime torch (exported artifacts carry their own input specs)")
    if args.json:
        json_path = Path(args.json)
        if json_path.is_dir() and not json_path.is_symlink():
            raise OutputError(f"--json {args.json!r} is a folder; name a file, e.g. {json_path / 'bench.json'}")
        check_output_file(json_path)
        ensure_writable_dir(json_path.parent)  # fail before spending minutes benchmarking
    n_threads = args.threads if device is not None else cap_threads(args.threads)  # a device has its own cores
    report = bench(args.targets, runtime=args.runtime, threads=n_threads, warmup=args.warmup,
                   runs=args.runs, min_seconds=args.min_seconds, batch=args.batch,
                   dims=dims, provider=args.provider, isolate=not args.no_isolate,
                   inputs=args.input, load_options=load_options, verify_digest=not args.no_verify_digest,
                   device=device, precision=args.precision, decoder=decoder_options(args))
    print_report(report)
    if args.json:
        write_output(args.json, report.to_json().encode())
        print(f"wrote {args.json}")
    return 1 if report.failed else 0
