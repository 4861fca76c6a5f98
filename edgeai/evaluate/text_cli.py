"""`edgeai eval OUT --text FILE.txt`: perplexity, top-1 agreement and KL to FP32 of each decoder artifact."""
from __future__ import annotations

import json
from pathlib import Path

from edgeai.argtypes import positive_int
from edgeai.errors import DataError
from edgeai.manifest import MANIFEST_NAME


def add_text_options(p) -> None:
    g = p.add_argument_group("decoders (language models): --text instead of --data")
    g.add_argument("--text", metavar="FILE.txt",
                   help="score each decoder artifact on this UTF-8 text: perplexity over windows of --window tokens "
                        "moved by --stride, and teacher-forced top-1 agreement and KL divergence to the first "
                        "artifact (FP32) or --reference")
    g.add_argument("--tokenizer", metavar="FOLDER|tokenizer.json",
                   help="the tokenizer (default: tokenizer.json in the export folder, or beside the model file)")
    g.add_argument("--window", type=positive_int, default=128, help="tokens per window (default 128)")
    g.add_argument("--stride", type=positive_int, default=64,
                   help="tokens a window moves on; each token is scored once, with up to window - stride tokens "
                        "of context carried over (default 64)")
    g.add_argument("--max-tokens", type=positive_int, default=8192,
                   help="score at most this many tokens of the text (default 8192)")
    g.add_argument("--threads", type=positive_int, default=1, help="onnxruntime intra-op threads (default 1)")


def run_text(args) -> int:
    from rich.console import Console
    from rich.table import Table

    from edgeai.console import print_table
    from edgeai.evaluate.text import load_tokens, score_artifacts, summary
    from edgeai.fsutil import check_output_file, write_output
    from edgeai.manifest import Manifest
    from edgeai.vocabulary import split_artifacts

    if not args.text:
        raise DataError("edgeai eval needs the data to score on: --eval-data FILE.npz|module:function (inputs), "
                        "or for a decoder --text FILE.txt")
    if args.eval_data or args.metric:
        raise DataError("--text scores a language model on text; it takes no --eval-data or --metric")
    if args.stride > args.window:
        raise DataError(f"--stride {args.stride} is larger than --window {args.window}: tokens would be skipped")
    target, chosen = split_artifacts(args.artifact, getattr(args, "artifact_name", None))
    path = Path(target)
    manifest = Manifest.read(path) if path.is_dir() and (path / MANIFEST_NAME).is_file() else None
    names = (chosen or [a.name for a in manifest.artifacts]) if manifest else [None]
    paths = {}
    if args.reference:
        paths[f"reference ({args.reference})"] = (args.reference, None)
    paths.update({name or str(path): (path, name) for name in names})
    if len(paths) == 1:
        what = f"{path} holds one artifact" if manifest else f"{path} is one artifact"
        print(f"note: {what}; top-1 agreement and KL compare it with itself (pass --reference FP32_MODEL)")
    tokenizer = args.tokenizer or (path if path.is_dir() else path.parent)
    ids = load_tokens(args.text, tokenizer, args.max_tokens)
    scores = score_artifacts(paths, ids, args.window, args.stride, threads=args.threads,
                             verify_digest=not args.no_verify_digest)
    reference = scores[0].artifact
    table = Table(title=f"edgeai eval --text {args.text}: {scores[0].tokens} tokens, window {args.window}, "
                        f"stride {args.stride}; compared with {reference}", title_justify="left")
    for col in ("artifact", "perplexity", "ppl vs ref", "top-1 agree", "KL (nats)"):
        table.add_column(col, justify="left" if col == "artifact" else "right")
    for s in scores:
        table.add_row(s.artifact, f"{s.perplexity:.3f}", f"{100 * s.ppl_increase:+.2f}%",
                      f"{100 * s.top1_agreement:.2f}%", f"{s.kl:.5f}")
    print_table(table, Console(), fold=("artifact",))
    if args.json:
        doc = {"schema": "edgeai.eval/1", "mode": "text", "text": str(args.text), "window": args.window,
               "stride": args.stride, "reference": reference, **summary(scores),
               "results": [s.to_dict() for s in scores]}
        write_output(check_output_file(args.json), (json.dumps(doc, indent=2) + "\n").encode())
    return 0
