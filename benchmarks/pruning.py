"""Structured pruning sweep, with and without distillation, on the three reference models.

For each model: `edgeai export` of the unpruned model, then for each ratio (fraction of MACs
removed) a pruned-only export and a prune -> distill export (student trained on the digits
training split against the original as teacher), plus a 50%-zeros (unstructured sparsity)
variant for contrast. Every artifact is verified and evaluated (top-1 on the held-out split)
in onnxruntime; then all artifacts of a model are timed together (each in a fresh process,
1 thread, batch 1; median p50 of 3 interleaved rounds), so speedups are ratios within one run
against the unpruned ORT FP32 model.

    python benchmarks/pruning.py [--only digits-cnn ...] [--ratios 0.25 0.5 0.75] [--epochs 40]
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

import _common as C

COLUMNS = [("model", "model", ""), ("variant", "variant", ""), ("ratio", "MACs cut asked", ""),
           ("macs_m", "MMACs", ".2f"), ("params", "params", ","), ("size_mb", "size MB", ".3f"),
           ("p50_ms", "p50 ms", ".3f"), ("speedup", "speedup vs unpruned", ".2f"), ("top1", "top-1", ".2f"),
           ("drop", "drop (pts)", "+.2f"), ("distill_s", "distill s", ".0f")]


def run(models, ratios, epochs: int, round_to: int, min_seconds: float, folder: Path) -> list[dict]:
    import edgeai
    from edgeai.recipe import DataConfig, SummaryConfig
    from edgeai.zoo import REFERENCE_MODELS

    rows = []
    for key in models:
        ref = REFERENCE_MODELS[key]
        name = f"digits-{key}"
        print(f"== {name}", flush=True)
        data = DataConfig(eval=ref.test_data, train=ref.train_data)
        common = dict(inputs=ref.inputs, data=data, summary=SummaryConfig(bench=False))
        variants = [("unpruned", None, edgeai.export(ref.factory, folder / f"{key}-base", **common))]
        # zeros in dense weights, for contrast: same shapes, same kernels
        variants.append(("50% zeros (unstructured)", None, edgeai.export(
            ref.factory, folder / f"{key}-sparse", steps=({"sparsity": {"ratio": 0.5}},), **common)))
        for r in ratios:
            prune = {"prune": {"ratio": r, "round_to": round_to}}
            variants.append(("pruned", r, edgeai.export(ref.factory, folder / f"{key}-p{r}", steps=(prune,), **common)))
            distill = {"distill": {"epochs": epochs, "patience": 8, "seed": 0}}
            variants.append(("pruned+distilled", r, edgeai.export(ref.factory, folder / f"{key}-pd{r}",
                                                                  steps=(prune, distill), **common)))
        targets = [f"{out.out_dir}@{out.artifacts[-1].name}" for _, _, out in variants]
        times = C.timed(targets, 1, min_seconds)
        base_top1 = variants[0][2].artifacts[-1].metrics["top1"]
        for (label, ratio, out), t in zip(variants, times):
            a = out.artifacts[-1]
            distill = next((s["details"] for s in a.steps if s["type"] == "model.distill"), {})
            rows.append({"model": name, "variant": label, "ratio": ratio, "macs_m": a.metrics["macs"] / 1e6,
                         "params": a.metrics["params"], "size_mb": a.size_bytes / 1e6,
                         "p50_ms": t, "speedup": times[0] / t if t and times[0] else None,
                         "top1": a.metrics["top1"], "drop": base_top1 - a.metrics["top1"],
                         "distill_s": distill.get("seconds"), "distill_epochs": distill.get("epochs_run")})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", nargs="*", choices=["digits-cnn", "digits-lstm", "digits-vit"])
    ap.add_argument("--ratios", nargs="*", type=float, default=[0.25, 0.5, 0.75])
    ap.add_argument("--epochs", type=int, default=40, help="max distillation epochs (early stop, patience 8)")
    ap.add_argument("--round-to", type=int, default=8, help="channel counts rounded to a multiple of this")
    ap.add_argument("--min-seconds", type=float, default=2.0)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    models = [m.removeprefix("digits-") for m in (args.only or ["digits-cnn", "digits-lstm", "digits-vit"])]
    with C.workdir() as tmp:
        rows = run(models, args.ratios, args.epochs, args.round_to, args.min_seconds, Path(tmp))
    C.write_results("pruning", rows, C.markdown_table(rows, COLUMNS), C.environment(),
                    {"ratios": args.ratios, "epochs": args.epochs, "round_to": args.round_to, "threads": 1,
                     "batch": 1, "min_seconds": args.min_seconds})


if __name__ == "__main__":
    main()
