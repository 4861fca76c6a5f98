"""Decoder KV cache: the in-place shared buffer (GroupQueryAttention past_present_share_buffer) vs concatenation.

For each model of benchmarks/llm.py (its cached exports; built there when missing) and each artifact (FP32 and
int4-weight), a prompt of D tokens then --new-tokens greedy tokens, batch 1, --threads threads, at two context
depths D (the trained LM has 256 positions: 32 and 128; the 124M model: 32 and 512). Each (artifact, depth, mode)
runs in a fresh process (benchmarks/llm.py's worker), the two modes interleaved over --rounds rounds, medians
reported; the greedy tokens of the two modes are compared. Results: a table; JSON to --out, or to
benchmarks/results/llm_kv_cache.json and .md with --write-results.

    python benchmarks/llm_kv_cache.py --rounds 3 --write-results
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from statistics import median

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402
import llm  # noqa: E402

DEPTHS = {"trained": (32, 128), "gpt2-124m": (32, 512), "qwen-0.5b": (32, 512)}
ARTIFACTS = ("edgeai-fp32", "edgeai-int4-weight")
MODES = ("concat", "shared")
COLUMNS = [("model", "model", ""), ("backend", "artifact", ""), ("prompt", "prompt", ""),
           ("new_tokens", "new", ""), ("concat_tok_s", "concat tok/s", ".1f"), ("shared_tok_s", "shared tok/s", ".1f"),
           ("speedup", "shared / concat", ".3f"), ("concat_ttft_ms", "concat TTFT ms", ".2f"),
           ("shared_ttft_ms", "shared TTFT ms", ".2f"), ("concat_rss_mb", "concat RSS MB", ".0f"),
           ("shared_rss_mb", "shared RSS MB", ".0f"), ("tokens_identical", "tokens identical", "")]


def bench_model(name: str, args, log) -> list[dict]:
    backends = llm.prepare(name, log, variants=("int4-weight",))
    rows = []
    for depth in DEPTHS[name]:
        vocab = backends["edgeai-fp32"]["decoder"]["vocab_size"]
        ids = llm.prompt_ids(name, depth, vocab)
        runs = {(b, m): [] for b in ARTIFACTS for m in MODES}
        for r in range(args.rounds):
            for backend in ARTIFACTS:
                for mode in MODES:
                    log(f"{name}: prompt {depth}: round {r + 1}/{args.rounds}: {backend} {mode}")
                    runs[backend, mode].append(llm.run_isolated({
                        **backends[backend], "backend": backend, "kv_cache": mode, "ids": ids,
                        "threads": args.threads, "new_tokens": args.new_tokens}))
        for backend in ARTIFACTS:
            row = {"model": name, "backend": backend, "prompt": depth, "new_tokens": args.new_tokens}
            for mode in MODES:
                ok = [s for s in runs[backend, mode] if "error" not in s]
                row[f"{mode}_errors"] = [s["error"] for s in runs[backend, mode] if "error" in s]
                if ok:
                    row[f"{mode}_tok_s"] = median(s["decode_tok_s"] for s in ok)
                    row[f"{mode}_ttft_ms"] = median(s["ttft_ms"] for s in ok)
                    row[f"{mode}_rss_mb"] = median(s["peak_rss_mb"] for s in ok)
                    row[f"{mode}_tokens"] = ok[0]["tokens"]
            if row.get("concat_tok_s") and row.get("shared_tok_s"):
                row["speedup"] = row["shared_tok_s"] / row["concat_tok_s"]
                row["tokens_identical"] = row["concat_tokens"] == row["shared_tokens"]
            rows.append(row)
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="trained,gpt2-124m", help=f"comma-separated, of {', '.join(DEPTHS)}")
    ap.add_argument("--new-tokens", type=int, default=128, help="greedy new tokens (default 128)")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds; medians reported (default 3)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--write-results", action="store_true",
                    help="write benchmarks/results/llm_kv_cache.json and .md")
    ap.add_argument("--out", default="llm-kv-cache.json", help="JSON path without --write-results")
    args = ap.parse_args()
    names = [m.strip() for m in args.models.split(",") if m.strip()]
    if [m for m in names if m not in DEPTHS]:
        ap.error(f"unknown model(s) {[m for m in names if m not in DEPTHS]}; known: {', '.join(DEPTHS)}")
    started = time.perf_counter()
    log = lambda msg: print(f"[{time.perf_counter() - started:7.1f}s] {msg}", file=sys.stderr, flush=True)  # noqa: E731
    env, rows = C.environment(), []
    extra = {"new_tokens": args.new_tokens, "rounds": args.rounds, "threads": args.threads}
    for name in names:
        rows += bench_model(name, args, log)
        Path(args.out).write_text(json.dumps({"schema": "edgeai.benchmarks.llm_kv_cache/1", "env": env,
                                              "rows": rows, **extra}, indent=2) + "\n")
    table = C.markdown_table(rows, COLUMNS)
    if args.write_results:
        C.write_results("llm_kv_cache", rows, table, env, extra, write_results=True)
    else:
        print(f"Machine: {C.machine_line(env)}\n\n{table}\n\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
