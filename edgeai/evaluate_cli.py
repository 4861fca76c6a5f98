"""`edgeai eval`: the task metric of each artifact, measured in its own runtime."""
from __future__ import annotations

import json
from pathlib import Path

from edgeai.manifest import MANIFEST_NAME


def add_parser(sub) -> None:
    p = sub.add_parser(
        "eval", help="measure the task metric (top-1, or cosine to FP32) of artifacts in their runtime",
        description="Evaluate ARTIFACT (a .onnx/.tflite file, or every artifact of an export folder) on DATA. "
                    "With a 'labels' array the metric is top-1 accuracy in points; without, the mean cosine "
                    "similarity of each artifact's first output to the first artifact's (the FP32 reference). "
                    "--metric scores with your own FUNC(outputs, labels) instead.")
    p.add_argument("artifact")
    p.add_argument("--data", required=True, metavar="FILE.npz|module:function",
                   help="inputs keyed by input name, optionally 'labels'")
    p.add_argument("--artifact-name", action="append", default=None,
                   help="only these artifacts of an export folder (repeatable; default: all)")
    p.add_argument("--batch-size", type=int, default=64, help="samples per run (default 64)")
    p.add_argument("--provider", default="cpu", choices=("cpu", "cuda"), help="execution provider (default cpu)")
    p.add_argument("--metric", metavar="FILE.py:FUNC|module:FUNC",
                   help="your task metric, FUNC(outputs: dict[name, array], labels) -> float, higher is better; "
                        "labels is the data's 'labels' array or None")
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    p.set_defaults(func=run)


def run(args) -> int:
    from rich.console import Console
    from rich.table import Table

    from edgeai import runtime
    from edgeai.data import load_feeds, split_labels
    from edgeai.evaluate import evaluate, run_batched
    from edgeai.console import print_wide
    from edgeai.fsutil import atomic_write_text
    from edgeai.manifest import Manifest
    from edgeai.metrics import load_metric

    metric = load_metric(args.metric)
    path = Path(args.artifact)
    if path.is_dir() and (path / MANIFEST_NAME).is_file():
        names = args.artifact_name or [a.name for a in Manifest.read(path).artifacts]
    else:
        names = [None]
    results, reference = [], None
    for name in names:
        session = runtime.load(path, artifact=name, provider=args.provider)
        feeds, labels = split_labels(load_feeds(args.data, session.inputs, what="evaluation data"))
        if labels is None and reference is None and metric is None:
            reference = run_batched(session, feeds, args.batch_size)
        res = evaluate(session, feeds, labels=labels, reference=None if labels is not None else reference,
                       batch_size=args.batch_size, metric=metric)
        results.append({"artifact": name or str(path), **res.to_dict()})
    base = results[0]["value"]
    table = Table(title=f"edgeai eval: {path}", title_justify="left")
    for col in ("artifact", "metric", "value", "drop", "n"):
        table.add_column(col, justify="left" if col in ("artifact", "metric") else "right")
    for r in results:
        r["drop"] = base - r["value"]
        spec = ".5f" if r["metric"] == "cosine" else ".2f" if r["metric"] == "top1" else ".5g"
        table.add_row(r["artifact"], r["metric"], format(r["value"], spec), format(r["drop"], "+" + spec), str(r["n"]))
    print_wide(table, Console())
    if args.json:
        atomic_write_text(args.json, json.dumps({"schema": "edgeai.eval/1", "results": results}, indent=2) + "\n")
    return 0
