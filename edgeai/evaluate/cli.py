"""`edgeai eval`: the task metric of each artifact, measured in its own runtime."""
from __future__ import annotations

import json
from pathlib import Path

from edgeai.argtypes import positive_int
from edgeai.bench.results import PROVIDERS
from edgeai.manifest import MANIFEST_NAME, NO_VERIFY_HELP
from edgeai.vocabulary import add_deprecated_alias


def add_parser(sub) -> None:
    p = sub.add_parser(
        "eval", help="measure the task metric (top-1, or cosine to FP32) of artifacts in their runtime",
        description="Evaluate ARTIFACT (a .onnx/.tflite file, every artifact of an export folder, or FOLDER@ARTIFACT) on "
                    "--eval-data. "
                    "With a 'labels' array the metric is top-1 accuracy in points; without, the mean cosine "
                    "similarity of each artifact's first output to the first artifact's (the FP32 reference). "
                    "--metric scores with your own FUNC(outputs, labels) instead; --reference compares with "
                    "another model's outputs (e.g. the FP32 export, OUTDIR/baseline of edgeai optimize). "
                    "It prints what each value is compared against. A single artifact without labels, "
                    "--metric or --reference is refused: comparing it with itself would say nothing.")
    p.add_argument("artifact", metavar="ARTIFACT|FOLDER[@ARTIFACT]",
                   help="a .onnx/.tflite file, an export folder (every artifact) or FOLDER@ARTIFACT (that one)")
    p.add_argument("--eval-data", metavar="FILE.npz|module:function",
                   help="inputs keyed by input name, optionally 'labels' (or --text for a decoder)")
    add_deprecated_alias(p, "--data", "--eval-data", "eval_data")
    add_deprecated_alias(p, "--artifact-name", "FOLDER@ARTIFACT", "artifact_name", append=True)
    p.add_argument("--batch", dest="batch_size", type=positive_int, default=64, metavar="B",
                   help="samples per run: the size of the batch dim (default 64)")
    add_deprecated_alias(p, "--batch-size", "--batch", "batch_size", type=positive_int)
    p.add_argument("--provider", default="cpu", choices=PROVIDERS, help="execution provider (default cpu)")
    p.add_argument("--metric", metavar="FILE.py:FUNC|module:FUNC",
                   help="your task metric, FUNC(outputs: dict[name, array], labels) -> float, higher is better; "
                        "labels is the data's 'labels' array or None")
    p.add_argument("--reference", metavar="MODEL",
                   help="without labels: the cosine is to this model's outputs (a .onnx/.tflite file or an "
                        "export folder's first artifact) instead of the first artifact's")
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    p.add_argument("--no-verify-digest", action="store_true", help=NO_VERIFY_HELP)
    from edgeai.evaluate.text_cli import add_text_options
    add_text_options(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from rich.console import Console
    from rich.table import Table

    from edgeai.data import load_feeds, split_labels
    from edgeai.evaluate import evaluate, run_batched
    from edgeai.console import print_table
    from edgeai.fsutil import check_output_file, write_output
    from edgeai.vocabulary import split_artifacts
    from edgeai.manifest import Manifest
    from edgeai.metrics import load_metric
    from edgeai.runtime.subproc import load_guarded

    if args.text or not args.eval_data:  # a decoder scored on text (run_text says what is missing)
        from edgeai.evaluate.text_cli import run_text
        return run_text(args)
    if args.json:
        check_output_file(args.json)  # a bad --json fails before anything runs
    metric = load_metric(args.metric)
    target, chosen = split_artifacts(args.artifact, getattr(args, "artifact_name", None))
    path = Path(target)
    manifest = Manifest.read(path) if path.is_dir() and (path / MANIFEST_NAME).is_file() else None
    names = (chosen or [a.name for a in manifest.artifacts]) if manifest else [None]
    results, reference, against = [], None, None
    for name in names:
        session = load_guarded(path, artifact=name, provider=args.provider,  # LiteRT: in a child process
                               verify_digest=not args.no_verify_digest)
        feeds, labels = split_labels(load_feeds(args.eval_data, session.inputs, what="evaluation data"))
        if against is None:
            against = _compared_against(args, metric, labels, names, manifest, path)
        if labels is None and reference is None and metric is None:
            ref_session = session if args.reference is None else load_guarded(
                args.reference, provider=args.provider, verify_digest=not args.no_verify_digest)
            reference = run_batched(ref_session, feeds, args.batch_size)
            against += _recorded_reference_note(manifest, reference)
        res = evaluate(session, feeds, labels=labels, reference=None if labels is not None else reference,
                       batch_size=args.batch_size, metric=metric)
        results.append({"artifact": name or str(path), **res.to_dict(), "compared_with": against})
    Console(soft_wrap=True).print(f"compared with: {against}", markup=False, highlight=False)
    base = results[0]["value"]
    table = Table(title=f"edgeai eval: {path}", title_justify="left")
    for col in ("artifact", "metric", "value", "drop", "n"):
        table.add_column(col, justify="left" if col in ("artifact", "metric") else "right")
    for r in results:
        r["drop"] = base - r["value"]
        spec = ".5f" if r["metric"] == "cosine" else ".2f" if r["metric"] == "top1" else ".5g"
        table.add_row(r["artifact"], r["metric"], format(r["value"], spec), format(r["drop"], "+" + spec), str(r["n"]))
    print_table(table, Console(), fold=("artifact",))
    if args.json:
        write_output(args.json, (json.dumps({"schema": "edgeai.eval/1", "results": results}, indent=2) + "\n").encode())
    return 0


def _compared_against(args, metric, labels, names: list, manifest, path: Path) -> str:
    """What the values mean, in words; a lone artifact with nothing to compare with is a user error."""
    has_labels = "the data's 'labels'" if labels is not None else "no labels"
    unused = "; --reference is not used" if args.reference else ""
    if metric is not None:
        return f"your metric {metric.name} ({args.metric}) with {has_labels}{unused}"
    if labels is not None:
        return f"the data's 'labels' (top-1 accuracy in points){unused}"
    if args.reference is not None:
        return f"the outputs of --reference {args.reference} (cosine of the first output)"
    if len(names) == 1:
        from edgeai.errors import DataError
        entry = manifest.get(names[0]) if manifest else None
        what = f"{path} holds one {entry.precision} artifact ({entry.name})" if entry else f"{path} is one artifact"
        raise DataError(f"{what} and --eval-data has no 'labels': comparing it with itself would say nothing; add "
                        f"labels to the data, pass --metric FILE.py:FUNC, or --reference FP32_MODEL"
                        f"{_reference_hint(manifest)}")
    return f"the first artifact, {names[0]} (cosine of the first output)"


def _reference_hint(manifest) -> str:
    ref = (manifest.source.get("optimize") or {}).get("reference") if manifest else None
    if not ref:
        return ""
    return (f" (edgeai optimize compared it with {ref['artifact']}, kept in its OUTDIR/baseline/; "
            f"outputs sha256 {str(ref.get('outputs_sha256'))[:12]})")


def _recorded_reference_note(manifest, reference: dict) -> str:
    """Whether these reference outputs are the ones edgeai optimize recorded (same model, same data)."""
    ref = (manifest.source.get("optimize") or {}).get("reference") if manifest else None
    if not ref or not ref.get("outputs_sha256"):
        return ""
    from edgeai.optimize.builder import outputs_digest
    same = outputs_digest(reference) == ref["outputs_sha256"]
    return ("; they match the FP32 reference outputs edgeai optimize recorded (sha256)" if same else
            "; they differ from the FP32 reference outputs edgeai optimize recorded (other data or another model)")
