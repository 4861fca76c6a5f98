"""Decoder LMs: edgeai's weight-only variants vs transformers generate() and a plain onnxruntime KV-cache loop.

For each model (the LM trained in the repo, a GPT-2-small-shaped 124M and a Qwen2-0.5B-shaped random decoder):
export with edgeai (FP32, KV cache; the fused graph, and the traced one as a reference), export with Optimum
(`text-generation-with-past`: the plain ORT FP32 loop the ratios are against), quantize (int8-weight;
int4-weight under the LM budget checked on the zoo's test split, plain round-to-nearest and HQQ without a
budget, block 128; mixed), then time
every backend greedily (a prompt of --prompt tokens, --new-tokens new ones, batch 1, --threads threads), each
in a fresh process, the backends interleaved over --rounds rounds (medians reported): load time, TTFT, decode
tokens/s, peak RSS. Perplexity, top-1 agreement and KL to FP32 of the variants on the zoo's validation text
(the trained LM only: a random model's perplexity says nothing). Results: a table; JSON to --out, or to
benchmarks/results/llm.json and llm.md with --write-results.

    python benchmarks/llm.py                              # the trained LM and the 124M model
    python benchmarks/llm.py --models trained --rounds 3 --write-results
    python benchmarks/llm.py --models qwen-0.5b           # slow on a small machine: minutes per backend
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from statistics import median

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402  (puts the checkout first on sys.path)
import llm_llamacpp as LL  # noqa: E402

MODELS = {"trained": "edgeai.zoo.lm:tiny_gpt2", "gpt2-124m": "edgeai.zoo.lm:gpt2_small_random",
          "qwen-0.5b": "edgeai.zoo.lm:qwen2_05b_random"}
BUDGET_TEXT = "<zoo test split>"
VARIANTS = {"int8-weight": ("int8-weight", {}), "int4-weight": ("int4-weight", {"eval_text": BUDGET_TEXT}),
            "int4-weight-rtn": ("int4-weight", {}), "int4-weight-hqq": ("int4-weight", {"algorithm": "hqq"}),
            "int4-weight-b128": ("int4-weight", {"block_size": 128}), "mixed": ("mixed", {})}
# accuracy comparisons: on a random model int4-weight has no budget (it is int4-weight-rtn), and HQQ's float zero
# points make onnxruntime 1.31 skip its INT8 kernel (measured ~10x slower than RTN on the trained LM)
TRAINED_ONLY = ("int4-weight-rtn", "int4-weight-hqq")
CACHE = Path(os.environ.get("EDGEAI_LLM_BENCH_CACHE", Path.home() / ".cache" / "edgeai-bench-llm"))
COLUMNS = [("model", "model", ""), ("backend", "backend", ""), ("size_mb", "size MB", ".1f"),
           ("load_s", "load s", ".2f"), ("ttft_ms", "TTFT ms", ".2f"), ("decode_tok_s", "decode tok/s", ".1f"),
           ("vs_transformers", "x transformers", ".2f"), ("vs_ort", "x ORT FP32 loop", ".2f"),
           ("vs_traced", "x traced loop", ".2f"), ("vs_llamacpp_q4_0", "x llama.cpp Q4_0", ".2f"),
           ("peak_rss_mb", "peak RSS MB", ".0f"), ("rss_vs_fp32", "RSS x FP32", ".2f"),
           ("perplexity", "perplexity", ".3f"), ("ppl_increase_pct", "ppl +%", "+.2f"),
           ("top1_agreement", "top-1 agree", ".4f"), ("kl", "KL", ".5f")]


# ---- preparing: HF folder, edgeai export, variants (cached per model) ---------------------------------
def prepare(name: str, log, variants=tuple(VARIANTS), llama_cpp: str | None = None, notes: list | None = None) -> dict:
    """{backend: what its worker loads} for model `name`, built once under CACHE/name; with `llama_cpp` (the
    path of llama.cpp's convert_hf_to_gguf.py) also llama.cpp's F32, Q8_0 and Q4_0 GGUF files (notes: what
    its quantizer reported)."""
    import edgeai
    from edgeai.runtime.generate import decoder_details
    from edgeai.steps import StepContext, get_artifact_step
    folder = CACHE / name
    hf, out = folder / "hf", folder / "export"
    if not (hf / "config.json").is_file():
        log(f"{name}: building the Hugging Face folder")
        model = _load_factory(MODELS[name])
        model.save_pretrained(hf, safe_serialization=True)
        tok = getattr(model, "tokenizer_file", None)
        if tok:
            (hf / "tokenizer.json").write_bytes(Path(tok).read_bytes())
    if not (out / "manifest.json").is_file():
        log(f"{name}: exporting with edgeai (FP32, KV cache, fused graph)")
        edgeai.export(f"hf:{hf}", out, task="text-generation")
    traced = folder / "export-traced"   # the reference for the fused graph; torch.export of 124M+ takes too long
    if name == "trained" and not (traced / "manifest.json").is_file():
        log(f"{name}: exporting with edgeai (FP32, KV cache, traced graph)")
        edgeai.export(f"hf:{hf}", traced, task="text-generation", export={"decoder_graph": "traced"})
    optimum = folder / "optimum"
    if not (optimum / "model.onnx").is_file():
        log(f"{name}: exporting with Optimum (text-generation-with-past)")
        from optimum.exporters.onnx import main_export
        main_export(str(hf), output=str(optimum), task="text-generation-with-past")
    details = decoder_details(out, "fp32")
    backends = {"transformers": {"hf": str(hf)},
                "ort-fp32-loop": {"model": str(optimum / "model.onnx"), "decoder": details},
                "ort-fp32-traced-loop": {"model": str(traced / "model.onnx"), "decoder": details},
                "edgeai-fp32": {"model": str(out / "model.onnx"), "decoder": details, "folder": str(out)}}
    if name != "trained":
        del backends["ort-fp32-traced-loop"]
    for label in variants:
        if name != "trained" and label in TRAINED_ONLY:
            continue
        scheme, opts = VARIANTS[label]
        path = folder / f"model.{label}.onnx"
        if not path.is_file():
            log(f"{name}: quantizing {label}")
            step = get_artifact_step(f"onnx:{scheme}")
            if opts.get("eval_text") == BUDGET_TEXT:   # the LM budget, checked on text the scores never see
                opts = {**opts, "eval_text": str(_budget_text(name))} if name == "trained" else \
                    {k: v for k, v in opts.items() if k != "eval_text"}   # a random model has no budget
            step.fn(out / "model.onnx", path, step.config_cls(**opts), StepContext())
        backends[f"edgeai-{label}"] = {"model": str(path), "decoder": details, "folder": str(out)}
    if llama_cpp:
        ggufs, quant_notes = LL.build(hf, folder / "gguf", llama_cpp, log)
        backends.update({f"llamacpp-{q}": {"gguf": str(p)} for q, p in ggufs.items()})
        if notes is not None:
            notes += [f"{name}: {n}" for n in quant_notes]
    return backends


def _budget_text(name: str) -> Path:
    """The zoo LM's test split (the budget's text; perplexity is reported on the validation split)."""
    from edgeai.zoo import lm
    path = CACHE / "test.txt"
    if not path.is_file():
        lm.write_text(path, "test")
    return path


def _file_bytes(model: Path) -> int:
    """The model file and its external data (Optimum writes model.onnx_data past 2 GB)."""
    from edgeai.exporters.onnx import external_files
    return model.stat().st_size + sum((model.parent / f).stat().st_size for f in external_files(model))


def _load_factory(spec: str):
    import importlib
    module, _, fn = spec.partition(":")
    return getattr(importlib.import_module(module), fn)()


def prompt_ids(name: str, n: int, vocab: int) -> list[int]:
    """The first n tokens of the zoo's validation text for the trained LM; seeded random ids otherwise."""
    if name == "trained":
        from edgeai.evaluate.text import load_tokens
        from edgeai.zoo import lm
        path = CACHE / "valid.txt"
        if not path.is_file():
            lm.write_text(path, "valid")
        return [int(i) for i in load_tokens(path, CACHE / name / "export", n)]
    import numpy as np
    return [int(i) for i in np.random.default_rng(0).integers(0, vocab, n)]


# ---- the worker: one backend, one fresh process ----------------------------------------------------
def worker(job: dict) -> dict:
    """Load (timed), a warm-up generation, then prefill (TTFT) and `new` greedy decode steps, timed."""
    import numpy as np

    from edgeai.bench.env import peak_rss_bytes   # VmHWM: this process's own peak, not its parent's
    threads, ids, new, backend = job["threads"], job["ids"], job["new_tokens"], job["backend"]
    t0 = time.perf_counter()
    if backend == "transformers":
        import torch
        from transformers import AutoModelForCausalLM
        torch.set_num_threads(threads)
        model = AutoModelForCausalLM.from_pretrained(job["hf"]).eval()
        load_s = time.perf_counter() - t0
        x = torch.tensor([ids])
        run = {"max_new_tokens": None, "min_new_tokens": None, "do_sample": False, "pad_token_id": 0}

        def generate(n):
            with torch.inference_mode():
                return model.generate(x, attention_mask=torch.ones_like(x), **{**run, "max_new_tokens": n,
                                                                               "min_new_tokens": n})
        generate(4)
        t = time.perf_counter()
        generate(1)
        ttft = time.perf_counter() - t
        t = time.perf_counter()
        tokens = generate(new)[0, len(ids):].tolist()
        decode_s = time.perf_counter() - t - ttft
    else:
        prefill, step = LL.loop(job, threads) if backend.startswith("llamacpp-") else _onnx_loop(job, threads)
        load_s = time.perf_counter() - t0
        token = int(np.argmax(prefill(ids[:8])))   # warm-up
        for _ in range(4):
            token = int(np.argmax(step(token)))
        t = time.perf_counter()
        tokens = [int(np.argmax(prefill(ids)))]
        ttft = time.perf_counter() - t
        t = time.perf_counter()
        for _ in range(new - 1):
            tokens.append(int(np.argmax(step(tokens[-1]))))
        decode_s = time.perf_counter() - t
    return {"load_s": load_s, "ttft_ms": ttft * 1e3, "decode_tok_s": (new - 1) / decode_s, "tokens": tokens,
            "peak_rss_mb": peak_rss_bytes() / 2**20}


def _onnx_loop(job: dict, threads: int):
    """(prefill(ids) -> last logits, step(token) -> logits): edgeai's DecoderSession, or a plain onnxruntime
    loop that feeds the presents back as numpy arrays (the graph's own inputs: Optimum's has no logits_to_keep)."""
    import numpy as np
    if job["backend"].startswith("edgeai-"):
        from edgeai.runtime.generate import DecoderSession
        s = DecoderSession(job["model"], job["decoder"], job["folder"], threads=threads,
                           kv_cache=job.get("kv_cache", "auto"))
        s.reserve(len(job["ids"]) + job["new_tokens"])   # as generate() does: no step grows a shared cache
        return s.prefill, s.step
    import onnxruntime as ort
    d = job["decoder"]
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    sess = ort.InferenceSession(job["model"], opts, providers=["CPUExecutionProvider"])
    past = [n.format(i) for i in range(d["layers"]) for n in (d["past_key"], d["past_value"])]
    present = [n.format(i) for i in range(d["layers"]) for n in (d["present_key"], d["present_value"])]
    keep = "logits_to_keep" in {i.name for i in sess.get_inputs()}
    state = {}

    def run(ids):
        pos = state["pos"]
        feeds = {"input_ids": np.array([ids], np.int64), "attention_mask": np.ones((1, pos + len(ids)), np.int64),
                 "position_ids": np.arange(pos, pos + len(ids), dtype=np.int64)[None], **dict(zip(past, state["cache"]))}
        if keep:
            feeds["logits_to_keep"] = np.array([1], np.int64)
        out = sess.run(["logits", *present], feeds)
        state["cache"], state["pos"] = out[1:], pos + len(ids)
        return out[0][0, -1]

    def prefill(ids):
        state["cache"] = [np.zeros((1, d["kv_heads"], 0, d["head_dim"]), np.float32)] * len(past)
        state["pos"] = 0
        return run(list(ids))

    return prefill, lambda token: run([token])


def run_isolated(job: dict) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--worker"], input=json.dumps(job), capture_output=True,
                          text=True, env={**os.environ, "OMP_NUM_THREADS": str(job["threads"])})
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ---- accuracy ------------------------------------------------------------------------------------------
def accuracy(name: str, backends: dict) -> dict:
    """{backend: TextScore dict} of the edgeai variants and llama.cpp's GGUF files against edgeai's FP32 on the
    zoo validation text: the same token ids, the same windows (128, stride 64), each from an empty cache."""
    from edgeai.evaluate.text import load_tokens, score_sessions
    from edgeai.runtime.generate import DecoderSession
    ids = load_tokens(CACHE / "valid.txt", CACHE / name / "export", 4096)
    sessions = {b: DecoderSession(j["model"], j["decoder"], j["folder"], threads=1)
                for b, j in backends.items() if b.startswith("edgeai-")}
    sessions.update({b: LL.LlamaLogits(j["gguf"], window=128) for b, j in backends.items()
                     if b.startswith("llamacpp-")})
    return {s.artifact: s.to_dict() for s in score_sessions(sessions, ids, window=128, stride=64,
                                                            reference="edgeai-fp32")}


# ---- the run -------------------------------------------------------------------------------------------
def bench_model(name: str, args, log, llama_cpp: str | None = None, notes: list | None = None) -> list[dict]:
    backends = prepare(name, log, args.variants, llama_cpp, notes)
    vocab = backends["edgeai-fp32"]["decoder"]["vocab_size"]
    ids = prompt_ids(name, args.prompt, vocab)
    samples: dict[str, list[dict]] = {b: [] for b in backends}
    for r in range(args.rounds):
        for backend, spec in backends.items():   # interleaved: a burst of load hits every backend alike
            log(f"{name}: round {r + 1}/{args.rounds}: {backend}")
            samples[backend].append(run_isolated({**spec, "backend": backend, "ids": ids, "threads": args.threads,
                                                  "new_tokens": args.new_tokens}))
    scores = accuracy(name, backends) if name == "trained" else {}
    rows = []
    for backend, runs in samples.items():
        ok = [s for s in runs if "error" not in s]
        row = {"model": name, "backend": backend, "rounds": len(ok), "new_tokens": args.new_tokens,
               "errors": [s["error"] for s in runs if "error" in s]}
        if ok:
            row.update({k: median(s[k] for s in ok) for k in ("load_s", "ttft_ms", "decode_tok_s", "peak_rss_mb")})
            row["tokens"] = ok[0]["tokens"]
        path, gguf = backends[backend].get("model"), backends[backend].get("gguf")
        row["size_mb"] = _file_bytes(Path(path)) / 1e6 if path else Path(gguf).stat().st_size / 1e6 if gguf else None
        score = scores.get(backend)
        if score:
            row.update({"perplexity": score["perplexity"], "ppl_increase_pct": 100 * score["ppl_increase"],
                        "top1_agreement": score["top1_agreement"], "kl": score["kl"]})
        rows.append(row)
    by = {r["backend"]: r for r in rows}
    for r in rows:
        for key, base in (("vs_transformers", "transformers"), ("vs_ort", "ort-fp32-loop"),
                          ("vs_traced", "ort-fp32-traced-loop"), ("vs_llamacpp_q4_0", "llamacpp-q4_0")):
            if r.get("decode_tok_s") and by.get(base, {}).get("decode_tok_s"):
                r[key] = r["decode_tok_s"] / by[base]["decode_tok_s"]
        if r.get("peak_rss_mb") and by["edgeai-fp32"].get("peak_rss_mb"):
            r["rss_vs_fp32"] = r["peak_rss_mb"] / by["edgeai-fp32"]["peak_rss_mb"]
        for key, base in (("greedy_match_fp32", "edgeai-fp32"), ("greedy_match_transformers", "transformers")):
            ref = by.get(base, {}).get("tokens")
            if r.get("tokens") and ref:
                r[key] = sum(a == b for a, b in zip(r["tokens"], ref)) / len(ref)
    return rows


def kept(names: list[str]) -> tuple[list[dict], list[str], dict[str, str]]:
    """The written results' rows and llama.cpp quantizer notes of models other than `names` (each row says its
    own rounds and new tokens), and {model: when its rows were measured}."""
    path = C.result_path("llm", True)
    if not path.is_file():
        return [], [], {}
    old = json.loads(path.read_text())
    rows = [r for r in old["rows"] if r["model"] not in names]
    since = old.get("kept_rows_from", {})
    return (rows, [n for n in old.get("llama_cpp_quantize_notes", []) if n.split(":")[0] not in names],
            {r["model"]: since.get(r["model"], old["created"]) for r in rows})


def notes(rows: list[dict], extra: dict) -> str:
    """The lines under the table: llama.cpp's build and what its quantizer did, greedy sanity of its F32."""
    out = [f"{model}: rows kept from the run of {when} (--keep-rows)" for model, when in
           extra.get("kept_rows_from", {}).items()]
    out += [f"llama.cpp: {extra['llama_cpp']}."]
    out += [f"llama.cpp quantizer: {n}" for n in extra["llama_cpp_quantize_notes"]]
    for r in rows:
        if r["backend"] == "llamacpp-f32" and r.get("greedy_match_transformers") is not None:
            out.append(f"{r['model']}: llama.cpp F32 greedy tokens match transformers on "
                       f"{100 * r['greedy_match_transformers']:.1f}% of {r['new_tokens']} (edgeai FP32: "
                       f"{100 * r.get('greedy_match_fp32', 0):.1f}%).")
    return "\n".join(f"- {line}" for line in out)


def main() -> int:
    if sys.argv[1:] == ["--worker"]:
        print(json.dumps(worker(json.loads(sys.stdin.read()))))
        return 0
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="trained,gpt2-124m", help=f"comma-separated, of {', '.join(MODELS)}")
    ap.add_argument("--variants", type=lambda s: tuple(v for v in s.split(",") if v), default=tuple(VARIANTS),
                    help=f"edgeai variants besides FP32 (default all: {','.join(VARIANTS)})")
    ap.add_argument("--prompt", type=int, default=32, help="prompt tokens (default 32)")
    ap.add_argument("--new-tokens", type=int, default=128, help="greedy new tokens (default 128)")
    ap.add_argument("--rounds", type=int, default=2, help="interleaved rounds; medians reported (default 2)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--write-results", action="store_true", help="write benchmarks/results/llm.json and llm.md")
    ap.add_argument("--keep-rows", action="store_true",
                    help="with --write-results: keep the written results' rows of the models not run now")
    ap.add_argument("--llama-cpp-convert", default=None,
                    help=f"llama.cpp's convert_hf_to_gguf.py (default ${LL.CONVERT_ENV}): adds llama.cpp F32/Q8_0/Q4_0 "
                         "rows when llama-cpp-python is installed (see benchmarks/llm_llamacpp.py)")
    ap.add_argument("--out", default="llm-bench.json",
                    help="JSON path, rewritten after each model (default ./llm-bench.json); --write-results also "
                         "writes benchmarks/results/llm.json and llm.md")
    args = ap.parse_args()
    names = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in names if m not in MODELS] + [v for v in args.variants if v not in VARIANTS]
    if unknown:
        ap.error(f"unknown model(s) or variant(s) {unknown}; known: {', '.join(MODELS)}; {', '.join(VARIANTS)}")
    started = time.perf_counter()
    log = lambda msg: print(f"[{time.perf_counter() - started:7.1f}s] {msg}", file=sys.stderr, flush=True)  # noqa: E731
    skip = LL.unavailable(args.llama_cpp_convert)
    if skip:
        print(f"llama.cpp backends skipped: {skip}", file=sys.stderr)
    convert = None if skip else str(LL.convert_script(args.llama_cpp_convert))
    quant_notes: list[str] = []
    extra = {"prompt_tokens": args.prompt, "new_tokens": args.new_tokens, "rounds": args.rounds,
             "threads": args.threads, "llama_cpp": f"not run: {skip}" if skip else f"llama-cpp-python {LL.version()}",
             "llama_cpp_quantize_notes": quant_notes}
    env, rows = C.environment(), []
    for name in names:   # the JSON is rewritten after each model: a run cut short keeps what it measured
        rows += bench_model(name, args, log, convert, quant_notes)
        Path(args.out).write_text(json.dumps({"schema": "edgeai.benchmarks.llm/1", "env": env, "rows": rows,
                                              "models_done": names[:names.index(name) + 1], **extra}, indent=2) + "\n")
    if args.write_results and args.keep_rows:
        old_rows, old_notes, extra["kept_rows_from"] = kept(names)
        rows = old_rows + rows
        quant_notes[:0] = old_notes
        rows.sort(key=lambda r: list(MODELS).index(r["model"]))   # stable: each model's backends keep their order
    table = C.markdown_table(rows, COLUMNS)
    if args.write_results:
        C.write_results("llm", rows, table, env, extra, write_results=True, notes=notes(rows, extra))
    else:
        print(f"Machine: {C.machine_line(env)}\n\n{table}\n\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
