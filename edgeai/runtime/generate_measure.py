"""Time generation from a decoder export (TTFT, decode tokens/s, peak RSS), each backend in a fresh process.

Backends: `edgeai` (DecoderSession as `runtime.load` makes it: the shared in-place cache where the graph allows),
`iobinding` (the concatenating cache bound through onnxruntime's IO binding), `numpy` (the concatenating loop:
presents fed back through run() as numpy) and
`transformers` (generate() in PyTorch; workstation only, edgeai/exporters/_decoder_measure.py).
Every backend decodes the same seeded random prompt greedily and ignores end-of-sequence ids, so each
produces exactly `new_tokens` tokens. Command line: `python -m edgeai.runtime.generate_measure FOLDER`.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

BACKENDS = {"edgeai": "edgeai.runtime.generate_measure", "iobinding": "edgeai.runtime.generate_measure",
            "numpy": "edgeai.runtime.generate_measure",
            "transformers": "edgeai.exporters._decoder_measure"}


def prompt_ids(vocab: int, n: int, seed: int = 0) -> list[int]:
    """The benchmark prompt: `n` seeded random token ids (speed does not depend on which tokens)."""
    return [int(i) for i in np.random.default_rng(seed).integers(0, vocab, n)]


def measure(folder: str | Path, backend: str = "edgeai", *, artifact: str | None = None, prompt_tokens: int = 32,
            new_tokens: int = 128, threads: int = 1, seed: int = 0) -> dict:
    """Load the artifact and time one greedy generation after a short warm-up, in this process."""
    from edgeai import runtime
    from edgeai.bench.env import peak_rss_bytes
    from edgeai.runtime.generate import DecoderSession
    modes = {"edgeai": {}, "iobinding": {"io_binding": True, "kv_cache": "concat"},
             "numpy": {"io_binding": False, "kv_cache": "concat"}}
    if backend not in modes:
        raise ValueError(f"backend {backend!r} does not run in edgeai.runtime; use measure_fresh")
    t0 = time.perf_counter()
    session = runtime.load(folder, artifact=artifact, threads=threads, **modes[backend])
    load_s = time.perf_counter() - t0
    if not isinstance(session, DecoderSession):
        raise ValueError(f"{folder} holds no decoder")
    ids = prompt_ids(int(session.decoder["vocab_size"]), prompt_tokens, seed)
    session.reserve(prompt_tokens + new_tokens)   # as generate() does
    _greedy(session, ids[:8], 4)  # warm-up: first-run allocations stay out of the numbers
    ttft_s, decode_s, tokens = _greedy(session, ids, new_tokens)
    return _result(backend, ttft_s, decode_s, tokens, prompt_tokens, threads, load_s, peak_rss_bytes())


def _greedy(session, ids: list[int], new: int) -> tuple[float, float, list[int]]:
    t0 = time.perf_counter()
    logits = session.prefill(ids)
    tokens = [int(np.argmax(logits))]
    t1 = time.perf_counter()
    for _ in range(new - 1):
        tokens.append(int(np.argmax(session.step(tokens[-1]))))
    return t1 - t0, time.perf_counter() - t1, tokens


def _result(backend: str, ttft_s: float, decode_s: float, tokens: list[int], prompt_tokens: int, threads: int,
            load_s: float, peak_rss: int | None) -> dict:
    return {"backend": backend, "ttft_ms": ttft_s * 1e3, "prefill_tokens_per_s": prompt_tokens / ttft_s,
            "decode_tokens_per_s": (len(tokens) - 1) / decode_s if decode_s > 0 else 0.0,
            "new_tokens": len(tokens), "prompt_tokens": prompt_tokens, "threads": threads, "load_s": load_s,
            "peak_rss_bytes": peak_rss, "tokens": tokens}


def measure_fresh(target: str, backend: str, *, artifact: str | None = None, prompt_tokens: int = 32,
                  new_tokens: int = 128, threads: int = 1, seed: int = 0, timeout: float = 1800) -> dict:
    """`measure` in a fresh Python process (one backend cannot warm caches for the next); `target` is the
    export folder, or for `transformers` the model (hf:FOLDER or a factory spec)."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; known: {', '.join(BACKENDS)}")
    cmd = [sys.executable, "-m", BACKENDS[backend], target, "--backend", backend, "--prompt-tokens",
           str(prompt_tokens), "--new-tokens", str(new_tokens), "--threads", str(threads), "--seed", str(seed)]
    if artifact:
        cmd += ["--artifact", artifact]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"{backend} on {target} failed: {proc.stderr.strip().splitlines()[-1:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("target")
    p.add_argument("--backend", default="edgeai", choices=list(BACKENDS))
    p.add_argument("--artifact", default=None)
    p.add_argument("--prompt-tokens", type=int, default=32)
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    a = parse_args(argv)
    print(json.dumps(measure(a.target, a.backend, artifact=a.artifact, prompt_tokens=a.prompt_tokens,
                             new_tokens=a.new_tokens, threads=a.threads, seed=a.seed)))


if __name__ == "__main__":
    main()
