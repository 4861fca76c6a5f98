"""One-shot GPU check: edgeai's torch runtime on CUDA against the same bench on the CPU, outputs and bookkeeping.

Prepared on a CPU machine, run once where a GPU is lent (one H200, CUDA PyTorch, the CPU build of
onnxruntime, nothing fetchable). From the repository root:

    python benchmarks/gpu_check.py --out $OUT                  # on the GPU machine (about 6 minutes)
    python benchmarks/gpu_check.py --provider cpu --quick      # rehearsal on a CPU machine

What it does, each step bounded by --budget-seconds (work not started in time is listed as skipped;
what was measured is always written):
  0. makes this checkout importable (`pip install --no-deps --no-build-isolation -e .`; else PYTHONPATH);
  1. trains/loads the models once in this process (digits CNN, speaker LSTM, BERT-shaped encoder,
     a causal LM) and saves their weights, so bench processes load weights instead of retraining;
  2. times each with `edgeai bench --runtime torch --provider P` at batch 1 and 32, FP32, FP16 and
     BF16 on the device, and FP32 on the CPU, each target in a fresh process;
  3. checks outputs on the device (fp32/fp16/bf16) against CPU FP32 (cosine >= 0.999 for fp32/fp16);
  4. checks the timed path's bookkeeping: memcpys and syncs counted with the profiler over edgeai's
     timed calls, and edgeai's p50 against a bare loop of the same module (within 5%);
  5. decoder: TTFT and decode tok/s with transformers generate(), dynamic and static KV cache.
Writes gpu.json and gpu.md to --out (default: a new folder under /tmp; --write-results writes
benchmarks/results/gpu.{json,md}).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
WEIGHTS_ENV = "EDGEAI_GPU_CHECK_WEIGHTS"   # where step 1 saved the weights the factories below load
COSINE_FLOOR = 0.999                       # fp32 and fp16 on the device vs CPU FP32
OVERHEAD_PCT = 5.0                         # edgeai's p50 vs the bare loop's

# name: (factory in this file, bench input specs, batch-32 check data)
MODELS = {
    "digits-cnn": ("gpu_digits_cnn", ["image:batch,1,32,32"]),
    "speaker-lstm": ("gpu_speaker_lstm", ["mels:batch,frames=48,40"]),
    "bert-encoder": ("gpu_bert_encoder", ["input_ids:batch,seq=32:int64", "attention_mask:batch,seq=32:int64"]),
    "causal-lm": ("gpu_causal_lm", ["input_ids:batch,seq=32:int64"]),
}
QUICK = ("digits-cnn", "causal-lm")


# ---------------------------------------------------------------- factories (bench processes import these)

def _load(module, name: str):
    import torch
    state = torch.load(Path(os.environ[WEIGHTS_ENV]) / f"{name}.pt", map_location="cpu", weights_only=True)
    module.load_state_dict(state)
    return module.eval()


def gpu_digits_cnn():
    from edgeai.zoo import digits_cnn
    return digits_cnn()


def gpu_speaker_lstm():
    from edgeai.zoo.speaker import FULL, _module
    return _load(_module()(FULL), "speaker-lstm")


def gpu_bert_encoder():
    from edgeai.zoo.text import FULL, _modules
    return _load(_modules()[0](FULL), "bert-encoder")


def _lm_config():
    from transformers import GPT2Config
    # the 6.9M GPT-2 shape of the decoder issue's measurements (weights do not change speed)
    return GPT2Config(vocab_size=8192, n_positions=512, n_embd=256, n_layer=4, n_head=4)


def gpu_causal_lm():
    import torch
    from transformers import GPT2LMHeadModel

    class LogitsOnly(torch.nn.Module):
        def __init__(self, lm):
            super().__init__()
            self.lm = lm

        def forward(self, input_ids):  # logits only: no cache object for the bench to flatten
            return self.lm(input_ids=input_ids, use_cache=False).logits

    lm = GPT2LMHeadModel(_lm_config())
    lm.load_state_dict(torch.load(Path(os.environ[WEIGHTS_ENV]) / "causal-lm.pt", map_location="cpu",
                                  weights_only=True))
    return LogitsOnly(lm.eval()).eval()


def _build_weights(names: list[str], folder: Path) -> dict[str, float]:
    """Train (or build) each model once here and save its state_dict; seconds per model."""
    import torch
    seconds = {}
    for name in names:
        t0 = time.perf_counter()
        if name == "speaker-lstm":
            from edgeai.zoo.speaker import speaker_lstm
            torch.save(speaker_lstm().state_dict(), folder / f"{name}.pt")
        elif name == "bert-encoder":
            from edgeai.zoo.text import bert_encoder
            torch.save(bert_encoder().state_dict(), folder / f"{name}.pt")
        elif name == "causal-lm":
            from transformers import GPT2LMHeadModel
            torch.manual_seed(0)
            torch.save(GPT2LMHeadModel(_lm_config()).state_dict(), folder / f"{name}.pt")
        seconds[name] = round(time.perf_counter() - t0, 1)
    return seconds


def _check_feeds(name: str, batch: int) -> dict[str, np.ndarray]:
    """Inputs for the output check: held-out digits, generated speech and sentences, random token ids."""
    if name == "digits-cnn":
        from edgeai.zoo import REFERENCE_MODELS
        data = np.load(REFERENCE_MODELS["cnn"].test_data)
        return {"image": data["image"][:batch].astype(np.float32)}
    if name == "speaker-lstm":
        from edgeai.zoo.speaker import speaker_mels
        return {"mels": speaker_mels(batch, 8, seed=7)[0].astype(np.float32)}
    if name == "bert-encoder":
        from edgeai.zoo.text import FULL, topic_sentences
        ids, mask = topic_sentences(batch, FULL.vocab, seed=7)[:2]
        return {"input_ids": ids.astype(np.int64), "attention_mask": mask.astype(np.int64)}
    rng = np.random.default_rng(7)
    return {"input_ids": rng.integers(0, _lm_config().vocab_size, (batch, 32), dtype=np.int64)}


# ---------------------------------------------------------------- steps

def ensure_importable(log: list[str]) -> dict[str, str]:
    """Install this checkout (no deps, no network) so `edgeai` is importable everywhere; else PYTHONPATH."""
    env = {**os.environ, WEIGHTS_ENV: os.environ.get(WEIGHTS_ENV, "")}
    probe = subprocess.run([sys.executable, "-c", "import edgeai, sys; sys.stdout.write(edgeai.__file__)"],
                           capture_output=True, text=True, cwd="/")
    if probe.returncode == 0:  # importable (maybe another checkout's: PYTHONPATH below puts this one first)
        log.append(f"edgeai importable (from {Path(probe.stdout).parent}); PYTHONPATH={ROOT} first")
    else:
        pip = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                              "-e", str(ROOT)], capture_output=True, text=True)
        log.append("pip install --no-deps -e .: " + ("ok" if pip.returncode == 0 else
                                                      f"failed ({pip.stderr.strip()[-200:]}); using PYTHONPATH"))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), str(ROOT / "benchmarks"),
                                                    env.get("PYTHONPATH", "")) if p)
    return env


def bench_one(name: str, provider: str, batch: int, precision: str, threads: int, env: dict,
              folder: Path, min_seconds: float) -> dict:
    """`edgeai bench --runtime torch` in its own process; the row it reports (or why it failed)."""
    factory, specs = MODELS[name]
    out = folder / f"bench-{name}-{provider}-b{batch}-{precision}.json"
    cmd = [sys.executable, "-c", "import sys; from edgeai.cli import main; sys.exit(main())", "bench",
           "--runtime", "torch", f"{ROOT / 'benchmarks' / 'gpu_check.py'}:{factory}",
           "--provider", provider, "--batch", str(batch), "--precision", precision, "--threads", str(threads),
           "--min-seconds", str(min_seconds), "--warmup", "10", "--json", str(out)]
    for spec in specs:
        cmd += ["--input", spec]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    row = {"model": name, "provider": provider, "batch": batch, "precision": precision,
           "wall_s": round(time.perf_counter() - t0, 1)}
    if not out.is_file():
        tail = (proc.stderr or proc.stdout).strip().splitlines()
        return {**row, "status": "failed", "error": tail[-1] if tail else f"exit {proc.returncode}"}
    result = json.loads(out.read_text())["results"][0]
    if result["status"] != "ok":
        return {**row, "status": "failed", "error": result.get("error")}
    t = result["timing"]
    return {**row, "status": "ok", "p50_ms": t["p50_ms"], "p90_ms": t["p90_ms"], "runs": t["n"],
            "samples_per_s": round(batch * 1000.0 / t["p50_ms"], 1),
            "peak_gpu_memory_mb": (round(result["peak_gpu_memory_bytes"] / 2**20, 1)
                                   if result.get("peak_gpu_memory_bytes") else None),
            "peak_rss_mb": round(result["peak_rss_bytes"] / 2**20, 1) if result.get("peak_rss_bytes") else None}


def check_outputs(name: str, provider: str, precisions: list[str], batch: int = 32) -> list[dict]:
    """Cosine and max abs error of the device's outputs against CPU FP32, on the same inputs."""
    import torch
    from edgeai.bench.torch_session import TorchSession, specs_from_examples
    feeds = _check_feeds(name, batch)
    specs = specs_from_examples({k: torch.from_numpy(v) for k, v in feeds.items()})
    factory = globals()[MODELS[name][0]]
    ref = TorchSession(factory(), specs, "cpu").run(feeds)
    rows = []
    for precision in precisions:
        got = TorchSession(factory(), specs, provider, precision=precision).run(feeds)
        a = np.concatenate([v.ravel() for v in ref.values()]).astype(np.float64)
        b = np.concatenate([v.ravel() for v in got.values()]).astype(np.float64)
        per_sample = [_cosine(r.reshape(batch, -1)[i], g.reshape(batch, -1)[i])
                      for r, g in zip(ref.values(), got.values()) for i in range(batch)]
        cos = float(min(per_sample))
        floor = COSINE_FLOOR if precision in ("fp32", "fp16") else None
        rows.append({"model": name, "provider": provider, "precision": precision, "batch": batch,
                     "min_cosine": round(cos, 6), "cosine_all": round(_cosine(a, b), 6),
                     "max_abs_err": float(np.max(np.abs(a - b))), "floor": floor,
                     "passed": None if floor is None else bool(cos >= floor)})
    return rows


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    denom = np.linalg.norm(a) * np.linalg.norm(b)
    return float(a @ b / denom) if denom else float(np.array_equal(a, b))


def check_bookkeeping(name: str, provider: str, batch: int, seconds: float) -> dict:
    """edgeai's timed path vs a bare loop of the same module; memcpys and syncs inside the timed calls."""
    import torch
    from edgeai.bench import BenchConfig
    from edgeai.bench.torch_session import TorchSession, measure_module, specs_from_examples
    factory = globals()[MODELS[name][0]]
    module = factory()
    example = {k: torch.from_numpy(v) for k, v in _check_feeds(name, batch).items()}
    specs = specs_from_examples(example)
    cuda = provider == "cuda"
    row: dict = {"model": name, "provider": provider, "batch": batch}

    # 1. what one timed call does: count host<->device copies and syncs over 20 calls
    session = TorchSession(module, specs, provider)
    feeds = session.prepare({k: v.numpy() for k, v in example.items()})
    syncs = [0]
    if cuda:
        real_sync = torch.cuda.synchronize

        def counting_sync(*a, **k):
            syncs[0] += 1
            return real_sync(*a, **k)
        torch.cuda.synchronize = counting_sync
    try:
        session.run_unchecked(feeds)
        syncs[0] = 0
        activities = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if cuda else [])
        with torch.profiler.profile(activities=activities) as prof:
            for _ in range(20):
                out = session.run_unchecked(feeds)
    finally:
        if cuda:
            torch.cuda.synchronize = real_sync
    names = [e.name for e in prof.events()]
    row.update(timed_calls=20, syncs=syncs[0], outputs_returned=len(out),
               memcpy_htod=sum("HtoD" in n for n in names), memcpy_dtoh=sum("DtoH" in n for n in names))
    if cuda:
        row["bookkeeping_ok"] = row["syncs"] == 20 and row["memcpy_htod"] == 0 and row["memcpy_dtoh"] == 0 \
            and row["outputs_returned"] == 0

    # 2. edgeai's p50 (in-process, same module) against a bare loop, interleaved 3 rounds
    config = BenchConfig(runtime="torch", isolate=False, provider=provider, batch=batch, min_seconds=seconds)
    dev = torch.device(provider)
    inputs = [t.to(dev) for t in example.values()]
    edge, bare, events = [], [], []
    for _ in range(3):
        r = measure_module(module, example, config, label=name)
        edge.append(r.timing.p50_ms)
        b, e = _bare_loop(module.to(dev), inputs, seconds, cuda)
        bare.append(b)
        events.append(e)
    row.update(edgeai_p50_ms=statistics.median(edge), bare_p50_ms=statistics.median(bare),
               bare_cuda_events_p50_ms=statistics.median(events) if cuda else None)
    row["overhead_pct"] = round(100.0 * (row["edgeai_p50_ms"] / row["bare_p50_ms"] - 1.0), 2)
    row["overhead_ok"] = abs(row["overhead_pct"]) <= OVERHEAD_PCT
    return row


def _bare_loop(module, inputs, seconds: float, cuda: bool) -> tuple[float, float | None]:
    """p50 wall ms of `module(*inputs)` + a device sync, and p50 of CUDA events around the same calls."""
    import torch
    walls, gpu = [], []
    with torch.inference_mode():
        for _ in range(10):
            module(*inputs)
        if cuda:
            torch.cuda.synchronize()
        end_at = time.perf_counter() + seconds
        while time.perf_counter() < end_at or len(walls) < 50:
            if cuda:
                start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                t0 = time.perf_counter()
                start.record()
                module(*inputs)
                stop.record()
                torch.cuda.synchronize()
                walls.append((time.perf_counter() - t0) * 1e3)
                gpu.append(start.elapsed_time(stop))
            else:
                t0 = time.perf_counter()
                module(*inputs)
                walls.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(walls), (statistics.median(gpu) if gpu else None)


def check_decoder(provider: str, prompt_len: int = 32, new_tokens: int = 128, repeats: int = 3) -> list[dict]:
    """TTFT and decode tok/s of transformers generate() (greedy), dynamic and static KV cache, FP32 and BF16."""
    import torch
    from transformers import GPT2LMHeadModel
    lm = GPT2LMHeadModel(_lm_config())
    lm.load_state_dict(torch.load(Path(os.environ[WEIGHTS_ENV]) / "causal-lm.pt", weights_only=True))
    dev = torch.device(provider)
    ids = torch.from_numpy(_check_feeds("causal-lm", 1)["input_ids"][:, :prompt_len]).to(dev)
    rows = []
    for precision, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        if provider == "cpu" and precision == "bf16":
            continue  # the CPU rehearsal checks the flow, not CPU BF16 speed
        model = lm.to(dev, dtype).eval()
        for cache in ("dynamic", "static"):
            kwargs = dict(do_sample=False, pad_token_id=0)
            if cache == "static":
                kwargs["cache_implementation"] = "static"
            row = {"model": "causal-lm", "provider": provider, "precision": precision, "cache": cache,
                   "prompt_tokens": prompt_len, "new_tokens": new_tokens}
            try:
                ttft, full = [], []
                with torch.inference_mode():
                    model.generate(ids, max_new_tokens=4, **kwargs)  # warm (static cache: allocation)
                    for _ in range(repeats):
                        ttft.append(_timed(lambda: model.generate(ids, max_new_tokens=1, **kwargs), dev))
                        full.append(_timed(lambda: model.generate(ids, max_new_tokens=new_tokens,
                                                                  min_new_tokens=new_tokens, **kwargs), dev))
                t1, tn = statistics.median(ttft), statistics.median(full)
                row.update(status="ok", ttft_ms=round(t1 * 1e3, 2),
                           decode_tokens_per_s=round((new_tokens - 1) / max(tn - t1, 1e-9), 1))
            except Exception as e:  # an older transformers without static cache: say so, keep going
                row.update(status="failed", error=f"{type(e).__name__}: {str(e).splitlines()[0][:160]}")
            rows.append(row)
    lm.to("cpu", torch.float32)
    return rows


def _timed(fn, dev) -> float:
    import torch
    if dev.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


# ---------------------------------------------------------------- report

def _num(v) -> str:
    return "-" if v is None else f"{v:.4g}"


def markdown(payload: dict) -> str:
    env, lines = payload["env"], []
    gpus = env.get("gpu") or []
    gpu = "; ".join(f"{g.get('name')} (driver {g.get('driver')}, {g.get('memory_total_mib')} MiB)" for g in gpus)
    lines += [f"Created {payload['created']} by `benchmarks/gpu_check.py` (provider {payload['provider']}).",
              f"GPU: {gpu or 'none'}. CPU: {env['cpu']['model']} ({env['logical_cores']} logical cores), "
              f"CPU runs with {payload['threads']} threads. torch {payload['torch']}.", ""]
    lines += ["## Latency (`edgeai bench --runtime torch`, each target in a fresh process)", "",
              "| model | device | batch | precision | p50 ms | p90 ms | samples/s | vs CPU FP32 | peak GPU MB | status |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    cpu = {(r["model"], r["batch"]): r for r in payload["bench"]
           if r["provider"] == "cpu" and r["precision"] == "fp32" and r["status"] == "ok"}
    for r in payload["bench"]:
        base = cpu.get((r["model"], r["batch"]))
        ratio = f"{base['p50_ms'] / r['p50_ms']:.2f}x" if base and r["status"] == "ok" else "-"
        lines.append(f"| {r['model']} | {r['provider']} | {r['batch']} | {r['precision']} | "
                     f"{_num(r.get('p50_ms'))} | {_num(r.get('p90_ms'))} | {_num(r.get('samples_per_s'))} | {ratio} | "
                     f"{r.get('peak_gpu_memory_mb') or '-'} | {r['status']}{': ' + r['error'] if r.get('error') else ''} |")
    lines += ["", f"## Outputs on the device vs CPU FP32 (batch 32; floor {COSINE_FLOOR} for fp32/fp16)", "",
              "| model | precision | min cosine per sample | max abs err | passed |", "|---|---|---|---|---|"]
    for r in payload["outputs"]:
        lines.append(f"| {r['model']} | {r['precision']} | {r['min_cosine']} | {r['max_abs_err']:.3g} | "
                     f"{'-' if r['passed'] is None else r['passed']} |")
    lines += ["", "## Timed-path bookkeeping (20 timed calls under the profiler; p50 vs a bare loop)", "",
              "| model | batch | syncs | memcpy HtoD | memcpy DtoH | edgeai p50 ms | bare p50 ms | CUDA events p50 ms | "
              "overhead % |", "|---|---|---|---|---|---|---|---|---|"]
    for r in payload["bookkeeping"]:
        lines.append(f"| {r['model']} | {r['batch']} | {r['syncs']} | {r['memcpy_htod']} | {r['memcpy_dtoh']} | "
                     f"{r['edgeai_p50_ms']:.4g} | {r['bare_p50_ms']:.4g} | {r.get('bare_cuda_events_p50_ms') or '-'} | "
                     f"{r['overhead_pct']} |")
    lines += ["", "## Decoder (transformers generate, greedy, 32-token prompt)", "",
              "| precision | KV cache | TTFT ms | decode tok/s | status |", "|---|---|---|---|---|"]
    for r in payload["decoder"]:
        lines.append(f"| {r['precision']} | {r['cache']} | {r.get('ttft_ms', '-')} | "
                     f"{r.get('decode_tokens_per_s', '-')} | {r['status']}{': ' + r['error'] if r.get('error') else ''} |")
    if payload["skipped"]:
        lines += ["", "Skipped at the budget: " + "; ".join(payload["skipped"])]
    lines += ["", "Log: " + "; ".join(payload["log"])]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--provider", choices=("cuda", "cpu"), default="cuda",
                   help="the device to check (cpu: a rehearsal of the whole flow on a CPU machine)")
    p.add_argument("--models", help=f"comma-separated subset of {', '.join(MODELS)} (default: all; "
                                    f"with --quick: {', '.join(QUICK)})")
    p.add_argument("--quick", action="store_true", help="batch 1, fp32, short runs (the CPU rehearsal in CI)")
    p.add_argument("--budget-seconds", type=float, default=420.0,
                   help="wall budget for the whole check; work that would start past it is skipped (default 420)")
    p.add_argument("--min-seconds", type=float, default=1.0, help="timed seconds per bench target (default 1)")
    p.add_argument("--out", metavar="DIR", help="folder for gpu.json/gpu.md and work files (default: a new temp folder)")
    p.add_argument("--write-results", action="store_true", help="also write benchmarks/results/gpu.{json,md}")
    args = p.parse_args(argv)
    if not (args.budget_seconds > 0 and args.min_seconds > 0):  # also refuses nan
        p.error("--budget-seconds and --min-seconds must be positive numbers")
    default = QUICK if args.quick else tuple(MODELS)
    names = [n.strip() for n in args.models.split(",") if n.strip()] if args.models else list(default)
    unknown = sorted(set(names) - set(MODELS))
    if unknown:
        p.error(f"unknown model(s) {', '.join(unknown)}; known: {', '.join(MODELS)}")
    t_start = time.perf_counter()
    deadline = t_start + args.budget_seconds
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="edgeai-gpu-check-"))
    out.mkdir(parents=True, exist_ok=True)
    weights = out / "weights"
    weights.mkdir(exist_ok=True)
    os.environ[WEIGHTS_ENV] = str(weights)
    import torch
    if args.provider == "cuda" and not torch.cuda.is_available():
        print(f"gpu_check: this torch ({torch.__version__}) sees no CUDA device; use --provider cpu to rehearse",
              file=sys.stderr)
        return 2
    sys.path.insert(0, str(ROOT))
    log: list[str] = []
    env = ensure_importable(log)
    from edgeai.bench.env import environment
    threads = min(os.cpu_count() or 1, 16)
    torch.set_num_threads(threads)
    log.append("weights built in " + json.dumps(_build_weights(names, weights)) + " s")
    payload = {"schema": "edgeai.benchmarks.gpu/1", "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
               "provider": args.provider, "threads": threads, "torch": torch.__version__,
               "env": environment(threads, args.provider), "bench": [], "outputs": [], "bookkeeping": [],
               "decoder": [], "skipped": [], "log": log}

    def write():
        payload["wall_s"] = round(time.perf_counter() - t_start, 1)
        text, md = json.dumps(payload, indent=2) + "\n", markdown(payload)
        targets = [out] + ([RESULTS] if args.write_results else [])
        for folder in targets:
            for fname, content in (("gpu.json", text), ("gpu.md", md)):
                tmp = folder / f".{fname}.tmp"
                tmp.write_text(content)
                os.replace(tmp, folder / fname)
        print(md)
        print(f"wrote {', '.join(str(f / 'gpu.json') for f in targets)} and gpu.md")

    def budget_left(what: str, need: float) -> bool:
        if time.perf_counter() + need <= deadline:
            return True
        payload["skipped"].append(what)
        return False

    batches = [1] if args.quick else [1, 32]
    device_precisions = ["fp32"] if args.quick else ["fp32", "fp16", "bf16"]
    plan = [(n, args.provider, b, pr) for n in names for b in batches for pr in device_precisions]
    if args.provider != "cpu":
        plan += [(n, "cpu", b, "fp32") for n in names for b in batches]
    try:
        # cheap, decisive checks first: outputs and bookkeeping, then the latency table, then the decoder
        for n in names:
            if budget_left(f"outputs {n}", 20):
                payload["outputs"] += check_outputs(n, args.provider, device_precisions, batch=4 if args.quick else 32)
        for n in [m for m in ("digits-cnn", "bert-encoder") if m in names]:
            for b in batches:
                if budget_left(f"bookkeeping {n} b{b}", 30):
                    payload["bookkeeping"].append(check_bookkeeping(n, args.provider, b, args.min_seconds / 2))
        for n, prov, b, pr in plan:
            if budget_left(f"bench {n} {prov} b{b} {pr}", 15 + args.min_seconds):
                row = bench_one(n, prov, b, pr, threads, env, out, args.min_seconds)
                payload["bench"].append(row)
                print(f"  {row['model']} {row['provider']} b{row['batch']} {row['precision']}: "
                      f"{row.get('p50_ms', row.get('error'))} ms ({row['wall_s']} s)", flush=True)
        if "causal-lm" in names and budget_left("decoder", 40):
            payload["decoder"] = check_decoder(args.provider, new_tokens=16 if args.quick else 128,
                                               repeats=1 if args.quick else 3)
    except KeyboardInterrupt:
        payload["skipped"].append("interrupted")
        write()
        return 130
    write()
    bad = [r for r in payload["outputs"] if r["passed"] is False] + \
          [r for r in payload["bookkeeping"] if r.get("bookkeeping_ok") is False] + \
          [r for r in payload["bench"] if r["status"] != "ok"]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
