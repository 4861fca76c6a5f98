"""Decoder timing for `edgeai bench`: TTFT and prefill tokens/s per prompt length, decode tokens/s per context
depth, on the KV-cache loop (edgeai.bench.kv); the result's `decoder` section (SCHEMA.md)."""
from __future__ import annotations

import gc
import time
from dataclasses import dataclass
import numpy as np

from edgeai.bench.env import peak_rss_bytes
from edgeai.bench.kv import details_from_specs
from edgeai.bench.results import BenchConfig, BenchResult
from edgeai.bench.stats import TimingStats
from edgeai.bench.targets import Target
from edgeai.errors import InputSpecError


@dataclass(frozen=True)
class DecoderOptions:
    """What a decoder bench measures (BenchConfig.decoder, `--prompt-lengths`, `--depths`, `--new-tokens`)."""

    prompt_lengths: tuple[int, ...] = (32, 128)   # TTFT and prefill tokens/s at each prompt length
    depths: tuple[int, ...] = (32, 128)           # decode tokens/s after a prompt of this many tokens
    new_tokens: int = 64                          # decode steps timed at each depth
    repeats: int = 5                              # prefills timed per prompt length (the median is reported)

    @classmethod
    def from_config(cls, config: BenchConfig) -> "DecoderOptions":
        d = dict(config.decoder or {})
        opts = cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})
        if config.runs:
            opts = cls(opts.prompt_lengths, opts.depths, opts.new_tokens, config.runs)
        if min(opts.prompt_lengths + opts.depths) < 1 or opts.new_tokens < 1 or opts.repeats < 1:
            raise InputSpecError(f"decoder bench needs positive prompt lengths, depths, new tokens and repeats, "
                                 f"got {opts}")
        return opts


def _fit(opts: DecoderOptions, limit: int | None) -> tuple[DecoderOptions, str]:
    """The options without prompt lengths and depths (+ new tokens) past `limit` positions, and what was dropped."""
    if not limit:
        return opts, ""
    prompts = tuple(n for n in opts.prompt_lengths if n <= limit)
    depths = tuple(d for d in opts.depths if d + opts.new_tokens <= limit)
    if not prompts or not depths:
        raise InputSpecError(f"the decoder has {limit} positions: prompt lengths {list(opts.prompt_lengths)} and depths "
                             f"{list(opts.depths)} + {opts.new_tokens} new tokens do not fit; pass smaller "
                             "--prompt-lengths, --depths or --new-tokens")
    gone = [f"prompt {n}" for n in opts.prompt_lengths if n not in prompts] + \
        [f"depth {d}" for d in opts.depths if d not in depths]
    return DecoderOptions(prompts, depths, opts.new_tokens, opts.repeats), ", ".join(gone)


def _median_ms(samples_ns: list[int]) -> float:
    return float(np.median(samples_ns)) / 1e6


def reopen(session, load_ms: float) -> tuple:
    """(DecoderSession, its load ms, a note or None): a bare .onnx decoder file loads as a plain session first
    (its inputs give the cache layout), then again as a DecoderSession, timed; an export folder's is kept."""
    from edgeai.runtime.generate import DecoderSession
    if isinstance(session, DecoderSession):
        return session, load_ms, None
    path, threads, details = session.path, session.threads, details_from_specs(session.inputs, session.outputs)
    del session
    gc.collect()
    t0 = time.perf_counter()
    decoder = DecoderSession(path, details, threads=threads)
    return decoder, (time.perf_counter() - t0) * 1e3, (
        "a bare .onnx decoder is loaded twice (the first load reads its cache layout) and peak RSS may include "
        "both; bench its export folder for one load")


def measure_decoder(target: Target, config: BenchConfig, decoder, import_ms: float | None, load_ms: float,
                    rss_before: int | None, isolated: bool, load_note: str | None = None) -> BenchResult:
    """Time `decoder` (a DecoderSession) as a generator; `timing` holds the per-token decode
    latencies at the first depth, so p50_ms is milliseconds per new token."""
    opts = DecoderOptions.from_config(config)
    if config.provider != "cpu" or target.format != "onnx":
        raise InputSpecError("decoder benchmarks run on onnxruntime's CPU provider")
    notes = [] if load_note is None else [load_note]
    opts, dropped = _fit(opts, decoder.max_positions)
    if dropped:
        notes.append(f"decoder: skipped {dropped}: past the model's {decoder.max_positions} positions")
    clock = time.perf_counter_ns
    rng = np.random.default_rng(config.seed)
    t0 = clock()
    vocab = decoder.prefill(np.zeros(4, dtype=np.int64)).shape[-1]
    first_ms = (clock() - t0) / 1e6
    longest = max(opts.prompt_lengths + opts.depths)
    ids = rng.integers(0, vocab, size=longest + opts.new_tokens, dtype=np.int64)
    decoder.reserve(longest + opts.new_tokens)   # a shared cache is allocated once, as generate() does
    for _ in range(min(config.warmup, 3)):  # warm the kernels
        token = int(np.argmax(decoder.prefill(ids[:min(opts.prompt_lengths)])))
        for _ in range(4):
            token = int(np.argmax(decoder.step(token)))
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        prompts = []
        for n in opts.prompt_lengths:
            samples = []
            for _ in range(opts.repeats):
                t0 = clock()
                int(np.argmax(decoder.prefill(ids[:n])))   # time to the first new token
                samples.append(clock() - t0)
            ttft = _median_ms(samples)
            prompts.append({"tokens": n, "ttft_ms": ttft, "prefill_tokens_per_s": n / ttft * 1e3,
                            "runs": opts.repeats})
        decode, first_depth = [], None
        for depth in opts.depths:
            token = int(np.argmax(decoder.prefill(ids[:depth])))
            steps = []
            for _ in range(opts.new_tokens):
                t0 = clock()
                token = int(np.argmax(decoder.step(token)))
                steps.append(clock() - t0)
            ms = np.asarray(steps, dtype=np.float64) / 1e6
            first_depth = ms if first_depth is None else first_depth
            decode.append({"depth": depth, "new_tokens": opts.new_tokens,
                           "decode_tokens_per_s": float(opts.new_tokens / ms.sum() * 1e3),
                           "ms_per_token_p50": float(np.median(ms))})
    finally:
        if gc_was_enabled:
            gc.enable()
    section = {"vocab_size": int(vocab), "layers": decoder.layers, "kv_heads": decoder.kv_heads,
               "head_dim": decoder.head_dim, "cache_dtype": str(decoder.decoder.get("cache_dtype", "float32")),
               "io_binding": decoder.io_binding, "kv_cache": decoder.kv_cache, "prompts": prompts, "decode": decode,
               "ttft_ms": prompts[0]["ttft_ms"], "prefill_tokens_per_s": prompts[-1]["prefill_tokens_per_s"],
               "decode_tokens_per_s": decode[0]["decode_tokens_per_s"]}
    notes += [f"decoder: timing is per new token at depth {opts.depths[0]} (greedy, batch 1, random prompt ids); "
             "TTFT and decode tokens/s are in the result's decoder section"]
    if not isolated:
        notes.append("measured in-process: earlier targets may have warmed caches, and peak RSS is the whole process's")
    info = decoder.describe()
    size = target.size_bytes
    return BenchResult(
        target=target.label, kind=target.kind, path=target.path, artifact=target.artifact, format=target.format,
        status="ok", isolated=isolated, runtime=info.get("runtime", target.format),
        runtime_version=info.get("runtime_version"), size_bytes=size, import_ms=import_ms, load_ms=load_ms,
        first_ms=first_ms, warmup=min(config.warmup, 3), timing=TimingStats.from_samples(first_depth),
        inputs=tuple({"name": "input_ids", "shape": [1, n], "dtype": "int64"} for n in opts.prompt_lengths),
        rss_before_load_bytes=rss_before, peak_rss_bytes=peak_rss_bytes(), notes=tuple(notes), decoder=section)


def decoder_lines(results) -> list[str]:
    """One line per decoder result, from (row number, BenchResult) pairs, for the printed report."""
    out = []
    for i, r in results:
        d = r.decoder
        if not d:
            continue
        ttft = ", ".join(f"{p['tokens']}: {p['ttft_ms']:.2f} ms" for p in d["prompts"])
        pre = ", ".join(f"{p['tokens']}: {p['prefill_tokens_per_s']:.0f}" for p in d["prompts"])
        dec = ", ".join(f"{x['depth']}: {x['decode_tokens_per_s']:.1f}" for x in d["decode"])
        out.append(f"decoder #{i}: TTFT at prompt {ttft}; prefill tok/s {pre}; decode tok/s at depth {dec}")
    return out


def _lengths(text: str) -> tuple[int, ...]:
    from edgeai.argtypes import is_count
    parts = [p for p in text.split(",") if p.strip()]
    if not parts or not all(is_count(p.strip()) and int(p) > 0 for p in parts):
        raise InputSpecError(f"expected comma-separated positive token counts, e.g. 32,128; got {text!r}")
    return tuple(int(p) for p in parts)


def add_decoder_options(p) -> None:
    g = p.add_argument_group("decoders with a KV cache (timed as generators: TTFT, prefill and decode tokens/s)")
    g.add_argument("--prompt-lengths", metavar="N,N", help="prompt lengths for TTFT and prefill tokens/s "
                   "(default 32,128)")
    g.add_argument("--depths", metavar="N,N", help="context depths for decode tokens/s (default 32,128)")
    g.add_argument("--new-tokens", type=int, metavar="N", help="decode steps timed per depth (default 64)")


def decoder_options(args) -> dict:
    """The --prompt-lengths/--depths/--new-tokens given, as BenchConfig.decoder (checked)."""
    out = {}
    if args.prompt_lengths:
        out["prompt_lengths"] = list(_lengths(args.prompt_lengths))
    if args.depths:
        out["depths"] = list(_lengths(args.depths))
    if args.new_tokens is not None:
        if args.new_tokens < 1:
            raise InputSpecError(f"--new-tokens must be >= 1, got {args.new_tokens}")
        out["new_tokens"] = args.new_tokens
    return out
