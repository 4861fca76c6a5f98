"""onnx:fuse on Hugging Face encoders: FP32 vs fused vs int8-dynamic, through both ONNX export paths.

Random-weight models built from configs (BERT-mini shape, DistilBERT shape at 4 layers, ViT-tiny
shape at 4 layers), exported with `edgeai export hf:FOLDER` through torch.export (dynamo) and
TorchScript, each with `fuse` (keep: always, so both are timed here) and `int8-dynamic`. Every
artifact is verified by edgeai. Timing: 1 thread, batch 1, text at seq 128, each variant in a
fresh process, median p50 of 3 interleaved rounds; ratios are within one model and export path.

    python benchmarks/hf_fusion.py [--only NAME ...] [--min-seconds 1]
"""
from __future__ import annotations

import os
from pathlib import Path

import _common as C

SEQ = 128
MODELS = ("bert-mini", "distilbert-4l", "vit-tiny-4l")
COLUMNS = [("model", "model", ""), ("exporter", "export path", ""), ("variant", "variant", ""),
           ("size_mb", "size MB", ".2f"), ("p50_ms", "p50 ms", ".3f"), ("speedup", "speedup vs FP32", ".2f"),
           ("max_abs_err", "max abs err", ".2e"), ("fused", "fused ops", "")]


def build(name: str, folder: Path) -> Path:
    import torch
    import transformers as t
    torch.manual_seed(0)
    if name == "bert-mini":
        model = t.BertModel(t.BertConfig(hidden_size=256, num_hidden_layers=4, num_attention_heads=4,
                                         intermediate_size=1024))
    elif name == "distilbert-4l":
        model = t.DistilBertForSequenceClassification(t.DistilBertConfig(n_layers=4, num_labels=2))
    else:
        model = t.ViTForImageClassification(t.ViTConfig(hidden_size=192, num_hidden_layers=4, num_attention_heads=3,
                                                        intermediate_size=768, num_labels=10))
    with torch.no_grad():  # fresh models have zero biases and unit LayerNorm scales; trained ones do not
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    model.save_pretrained(folder / name)
    return folder / name


def run(names: list[str], min_seconds: float, threads: int, folder: Path) -> list[dict]:
    from statistics import median

    import edgeai
    from edgeai.bench import bench
    from edgeai.recipe import SummaryConfig

    rows = []
    for name in names:
        model = build(name, folder)
        for exporter in ("dynamo", "torchscript"):
            print(f"== {name} ({exporter})", flush=True)
            out = edgeai.export(f"hf:{model}", folder / f"{name}-{exporter}", export={"exporter": exporter},
                                quantize=({"fuse": {"keep": "always"}}, {"int8-dynamic": {}}),
                                summary=SummaryConfig(bench=False))
            targets = [f"{out.out_dir}@{a.name}" for a in out.artifacts]
            samples = [[] for _ in targets]
            for _ in range(3):
                report = bench(targets, threads=threads, min_seconds=min_seconds, batch=1, dims={"seq": SEQ})
                for i, r in enumerate(report.results):
                    samples[i].append(r.timing.p50_ms if r.ok else float("nan"))
            p50 = [median(s) for s in samples]
            for a, t in zip(out.artifacts, p50):
                fused = a.details.get("fused_ops", {})
                rows.append({"model": name, "exporter": exporter, "variant": a.name, "size_mb": a.size_bytes / 1e6,
                             "p50_ms": t, "speedup": p50[0] / t, "max_abs_err": a.parity["max_abs"],
                             "fused": ", ".join(f"{n} {op}" for op, n in fused.items())})
            for f in out.manifest.failed:
                rows.append({"model": name, "exporter": exporter, "variant": f["name"], "fused": f"FAILED: {f['error']}"})
    return rows


def main() -> None:
    import logging
    ap = C.parser(__doc__)
    ap.add_argument("--only", nargs="*", default=list(MODELS), help=f"models (default all): {', '.join(MODELS)}")
    ap.add_argument("--min-seconds", type=float, default=1.0)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    C.check_only(ap, args.only, MODELS)
    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with C.workdir() as tmp:
        rows = run(args.only, args.min_seconds, args.threads, Path(tmp))
    C.write_results("hf_fusion", rows, C.markdown_table(rows, COLUMNS), C.environment(),
                    {"threads": args.threads, "batch": 1, "seq": SEQ, "min_seconds": args.min_seconds},
                    write_results=args.write_results)


if __name__ == "__main__":
    main()
