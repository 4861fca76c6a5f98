"""prune (attention heads, FFN width) and distill on a Hugging Face encoder: MACs, ORT FP32 latency, cosine.

A random-weight BERT-mini-shaped folder (hidden 256, 4 layers, 4 heads, FFN 1024; weights drawn at
initializer_range 0.1, so attention and FFN weigh in the output and pruning costs something) is
exported with `edgeai export hf:FOLDER` three ways: unpruned, `prune: {ratio: R}`, and prune +
`distill` on random token data (the detected loss on last_hidden_state). Every artifact is verified
by edgeai. Cosine: per real token, student last_hidden_state vs the unpruned artifact's, on held-out
token data. Timing: ONNX Runtime FP32, 1 thread, batch 1, seq 128, each variant in a fresh process,
median p50 of 3 interleaved rounds.

    python benchmarks/hf_prune.py [--ratio 0.5] [--epochs 6] [--min-seconds 1]
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

import _common as C

SEQ, DATA_SEQ = 128, 64
COLUMNS = [("variant", "variant", ""), ("heads", "heads per layer", ""), ("ffn", "FFN width", ""),
           ("mmacs", "MMACs (batch 2, seq 16)", ".1f"), ("macs_cut", "MACs cut", ".1%"),
           ("p50_ms", "p50 ms (seq 128)", ".3f"), ("speedup", "speedup vs unpruned", ".2f"),
           ("cosine", "cosine to unpruned (mean / min per token)", "")]


def build(folder: Path) -> Path:
    import torch
    import transformers as t
    torch.manual_seed(0)
    model = t.BertModel(t.BertConfig(vocab_size=1000, hidden_size=256, num_hidden_layers=4, num_attention_heads=4,
                                     intermediate_size=1024, initializer_range=0.1))
    with torch.no_grad():  # fresh models have zero biases and unit LayerNorm scales; trained ones do not
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    model.save_pretrained(folder / "bert-mini")
    return folder / "bert-mini"


def tokens(path: Path, n: int, seed: int) -> str:
    """Random token ids, per-row lengths 8..DATA_SEQ, right padding."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(8, DATA_SEQ + 1, size=n)
    mask = (np.arange(DATA_SEQ)[None, :] < lengths[:, None]).astype(np.int64)
    np.savez(path, input_ids=rng.integers(5, 1000, size=(n, DATA_SEQ)).astype(np.int64) * mask,
             attention_mask=mask, token_type_ids=np.zeros_like(mask))
    return str(path)


def _hidden(outcome, feeds: dict) -> np.ndarray:
    """The last artifact's (the student's) last_hidden_state on `feeds`."""
    from edgeai.runtime import load
    return load(outcome.out_dir, artifact=outcome.artifacts[-1].name, threads=1).run(feeds)["last_hidden_state"]


def run(ratio: float, epochs: int, min_seconds: float, threads: int, folder: Path) -> list[dict]:
    from statistics import median

    import edgeai
    from edgeai.bench import bench
    from edgeai.recipe import DataConfig, SummaryConfig

    model = build(folder)
    train, test = tokens(folder / "train.npz", 1024, 0), tokens(folder / "test.npz", 128, 1)
    variants = {"unpruned": (), f"prune {ratio}": ({"prune": {"ratio": ratio}},),
                f"prune {ratio} + distill": ({"prune": {"ratio": ratio}}, {"distill": {"epochs": epochs, "lr": 2e-3}})}
    outs = {}
    for name, steps in variants.items():
        print(f"== {name}", flush=True)
        outs[name] = edgeai.export(f"hf:{model}", folder / name.replace(" ", "_"), steps=steps,
                                   data=DataConfig(train=train if len(steps) > 1 else None),
                                   summary=SummaryConfig(bench=False))
    feeds = dict(np.load(test))
    real = feeds["attention_mask"].astype(bool)
    ref = _hidden(outs["unpruned"], feeds)
    samples: list[list[float]] = [[] for _ in outs]
    targets = [f"{o.out_dir}@{o.artifacts[-1].name}" for o in outs.values()]
    for _ in range(3):
        report = bench(targets, threads=threads, min_seconds=min_seconds, batch=1, dims={"seq": SEQ})
        for i, r in enumerate(report.results):
            samples[i].append(r.timing.p50_ms if r.ok else float("nan"))
    p50 = [median(s) for s in samples]
    rows = []
    for (name, out), t in zip(outs.items(), p50):
        art = out.artifacts[-1]
        assert art.parity["passed"], (name, art.parity)
        got = _hidden(out, feeds).astype(np.float64)
        cos = (got * ref).sum(-1) / (np.linalg.norm(got, axis=-1) * np.linalg.norm(ref, axis=-1))
        layers = next((s["details"]["layers"] for s in art.steps if s["type"] == "model.prune"), [])
        heads = [la["units_after"] for la in layers if la["kind"] == "heads"]
        ffn = [la["after"] for la in layers if la["kind"] == "channels" and "intermediate" in la["name"]]
        rows.append({"variant": name, "heads": "/".join(map(str, heads)) or "4/4/4/4",
                     "ffn": "/".join(map(str, ffn)) or "1024", "mmacs": art.metrics["macs"] / 1e6,
                     "macs_cut": 1 - art.metrics["macs"] / outs["unpruned"].artifacts[-1].metrics["macs"],
                     "p50_ms": t, "speedup": p50[0] / t,
                     "cosine": f"{cos[real].mean():.4f} / {cos[real].min():.4f}"})
    return rows


def main() -> None:
    import logging
    ap = C.parser(__doc__)
    ap.add_argument("--ratio", type=float, default=0.5)
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--min-seconds", type=float, default=1.0)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with C.workdir() as tmp:
        rows = run(args.ratio, args.epochs, args.min_seconds, args.threads, Path(tmp))
    C.write_results("hf_prune", rows, C.markdown_table(rows, COLUMNS), C.environment(),
                    {"threads": args.threads, "batch": 1, "seq": SEQ, "ratio": args.ratio, "epochs": args.epochs},
                    write_results=args.write_results)


if __name__ == "__main__":
    main()
