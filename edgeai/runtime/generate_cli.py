"""The `edgeai generate` subcommand: stream text from a decoder export (torch-free)."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from edgeai.argtypes import count, finite_float, positive_int
from edgeai.errors import InputSpecError, RuntimeLoadError
from edgeai.manifest import NO_VERIFY_HELP

EPILOG = """\
examples:
  edgeai generate out/lm --prompt "the farmer carried" --max-new-tokens 40
  edgeai generate out/lm@fp32 --prompt "once" --temperature 0.8 --top-p 0.9 --seed 1 --json gen.json
JSON: tokens (new token ids), text, ttft_ms, decode_tokens_per_s, peak_rss_bytes, prompt_tokens, stop_reason"""


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("generate", help="generate text from a decoder export (--task text-generation)",
                       description="Stream the continuation of --prompt from a causal LM export folder, keeping "
                                   "the KV cache in onnxruntime. Greedy unless --temperature/--top-k/--top-p is given.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folder", metavar="OUT[@ARTIFACT]", help="an export folder (its first artifact) or FOLDER@ARTIFACT")
    p.add_argument("--prompt", required=True, help="the text to continue")
    p.add_argument("--max-new-tokens", type=positive_int, default=64, metavar="N", help="default 64")
    p.add_argument("--greedy", action="store_true", help="always take the most likely token (the default)")
    p.add_argument("--temperature", type=finite_float, default=None, metavar="T", help="sample at temperature T")
    p.add_argument("--top-k", type=count, default=None, metavar="K", help="sample from the K most likely tokens")
    p.add_argument("--top-p", type=finite_float, default=None, metavar="P",
                   help="sample from the smallest set of tokens whose probability reaches P")
    p.add_argument("--seed", type=int, default=None, help="random seed for sampling (reproducible output)")
    p.add_argument("--stop", action="append", default=[], metavar="TEXT",
                   help="end when the text contains TEXT (not printed); repeatable")
    p.add_argument("--threads", type=positive_int, default=None, metavar="N", help="intra-op threads")
    p.add_argument("--kv-cache", choices=("auto", "shared", "concat"), default="auto",
                   help="shared: one preallocated buffer per layer, both the past and the present (fused CPU "
                        "graphs; faster at long contexts); concat: the past is copied into a new present each "
                        "step; auto (default): shared where the graph supports it")
    p.add_argument("--json", metavar="FILE", help="also write the result as JSON")
    p.add_argument("--no-verify-digest", action="store_true", help=NO_VERIFY_HELP)
    p.set_defaults(func=run)
    return p


def _sampling(args):
    from edgeai.runtime.generate_sampling import Sampling
    sampled = any(v is not None for v in (args.temperature, args.top_k, args.top_p))
    if args.greedy and sampled:
        raise InputSpecError("--greedy cannot be combined with --temperature/--top-k/--top-p")
    if not sampled:
        return Sampling()
    return Sampling(greedy=False, temperature=1.0 if args.temperature is None else args.temperature,
                    top_k=args.top_k or 0, top_p=1.0 if args.top_p is None else args.top_p, seed=args.seed)


def _split(text: str) -> tuple[Path, str | None]:
    folder, sep, name = text.rpartition("@")
    if sep and folder and Path(folder).is_dir():
        return Path(folder), name
    return Path(text), None


def run(args) -> int:
    from edgeai import runtime
    from edgeai.bench.env import peak_rss_bytes
    from edgeai.fsutil import atomic_write_text
    from edgeai.runtime.generate import DecoderSession

    folder, artifact = _split(args.folder)
    if not folder.is_dir():
        raise RuntimeLoadError(f"{str(folder)!r} is not an export folder; edgeai generate takes the folder that "
                               "`edgeai export MODEL --task text-generation` wrote")
    sampling = _sampling(args)
    session = runtime.load(folder, artifact=artifact, threads=args.threads, kv_cache=args.kv_cache,
                           verify_digest=not args.no_verify_digest)
    if not isinstance(session, DecoderSession):
        raise RuntimeLoadError(f"{str(folder)!r} holds no causal LM (its manifest has no decoder); export one "
                               "with --task text-generation")

    def show(token) -> None:
        sys.stdout.write(token.text)
        sys.stdout.flush()

    result = session.generate(args.prompt, args.max_new_tokens, sampling, stop=args.stop, on_token=show)
    sys.stdout.write("\n")
    if args.json:
        data = {"tokens": result.tokens, "text": result.text, "ttft_ms": result.ttft_ms,
                "decode_tokens_per_s": result.decode_tokens_per_s, "peak_rss_bytes": peak_rss_bytes(),
                "prompt_tokens": len(result.prompt_ids), "stop_reason": result.stop_reason,
                "artifact": artifact, "threads": args.threads, "kv_cache": session.kv_cache}
        atomic_write_text(Path(args.json), json.dumps(data, indent=2) + "\n")
    return 0
