"""Structured pruning sweep, with and without distillation, on the three reference models.

For each model: `edgeai export` of the unpruned model, then for each ratio (fraction of MACs
removed) a pruned-only export and a prune -> distill export (student trained on the digits
training split against the original as teacher), plus a 50%-zeros (unstructured sparsity)
variant for contrast. Every artifact is verified and evaluated (top-1 on the held-out split)
in onnxruntime; then all artifacts of a model are timed together (each in a fresh process,
1 thread, batch 1; median p50 of 3 interleaved rounds), so speedups are ratios within one run
against the unpruned ORT FP32 model.

    python benchmarks/pruning.py [--only digits-cnn ...] [--ratios 0.25 0.5 0.75] [--epochs 40]
    python benchmarks/pruning.py --real [--only pitch_cnn speaker_lstm_pruned text_encoder]

--real runs the real-shaped recipes in recipes/ (prune -> distill, their quantization left out):
the pitch CNN (sigmoid bins, permute/reshape head), the LSTM speaker embedding (cosine) and the
small BERT-shaped encoder (cosine). Each distilled student is timed against its unpruned FP32
ONNX export in the same interleaved rounds; the table gives the speedup, the MACs cut, the task
metric (the recipe's, or cosine to the original) before and after, distillation minutes, and the
speedup / MAC-reduction ratio (1.0: speed tracks the MACs removed). Written to pruning_real.*.
"""
from __future__ import annotations

import logging
from dataclasses import replace
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


REAL = ("pitch_cnn", "speaker_lstm_pruned", "text_encoder")
REAL_COLUMNS = [("model", "model", ""), ("ratio", "MACs cut asked", ""), ("macs_cut", "MACs cut", ".1%"),
                ("speedup", "speedup vs unpruned FP32", ".2f"), ("ratio_speed_macs", "speedup / MAC reduction", ".2f"),
                ("metric", "metric", ""), ("metric_before", "unpruned", ".4g"), ("metric_after", "pruned+distilled", ".4g"),
                ("drop", "drop", "+.4g"), ("loss", "distill loss", ""), ("distill_min", "distill min", ".1f"),
                ("cpu_min", "CPU min", ".1f"), ("auto_pinned", "pinned automatically", "")]


def run_real(names, min_seconds: float, folder: Path, batchnorm: str | None = None) -> list[dict]:
    """The real-shaped recipes, without their quantization; original vs distilled student.

    `batchnorm` overrides the distill step's (freeze: statistics fixed; train: updated by each batch).
    """
    import edgeai
    from edgeai.recipe import SummaryConfig, load_recipe

    rows = []
    recipes = Path(__file__).resolve().parent.parent / "recipes"
    for name in names:
        print(f"== {name}", flush=True)
        recipe = load_recipe(recipes / f"{name}.yaml")
        if batchnorm:
            recipe = replace(recipe, steps=tuple({k: {**v, "batchnorm": batchnorm} if k == "distill" else v
                                                  for k, v in step.items()} for step in recipe.steps))
        out = edgeai.export(recipe=recipe, out_dir=folder / name, quantize=(), max_drop=None,
                            summary=SummaryConfig(bench=False))
        base, student = out.artifacts[0], out.artifacts[1]
        times = C.timed([f"{out.out_dir}@{base.name}", f"{out.out_dir}@{student.name}"], 1, min_seconds)
        steps = {s["type"]: s for s in student.steps}
        prune, distill = steps["model.prune"], steps["model.distill"]["details"]
        metric = student.metrics["metric_name"]
        cut = 1 - student.metrics["macs"] / base.metrics["macs"]
        speedup = times[0] / times[1] if None not in times else None
        rows.append({"model": name, "ratio": prune["config"]["ratio"], "macs_cut": cut,
                     "macs_m_before": base.metrics["macs"] / 1e6, "macs_m_after": student.metrics["macs"] / 1e6,
                     "p50_ms_before": times[0], "p50_ms_after": times[1], "speedup": speedup,
                     "ratio_speed_macs": speedup * (1 - cut) if speedup else None, "metric": metric,
                     "metric_before": base.metrics[metric], "metric_after": student.metrics[metric],
                     "drop": base.metrics[metric] - student.metrics[metric], "loss": distill["loss"],
                     "distill_min": distill["seconds"] / 60, "cpu_min": distill["cpu_minutes"],
                     "epochs": distill["epochs_run"], "train_samples": distill["train_samples"],
                     "batchnorm": distill["batchnorm"],
                     "auto_pinned": ", ".join(b["name"] for b in prune["details"]["auto_pinned"]) or "-"})
    return rows


def main() -> None:
    ap = C.parser(__doc__)
    ap.add_argument("--only", nargs="*", choices=["digits-cnn", "digits-lstm", "digits-vit", *REAL])
    ap.add_argument("--real", action="store_true", help="the real-shaped recipes instead of the digits sweep")
    ap.add_argument("--batchnorm", choices=["freeze", "train"], help="--real: override distill's BatchNorm mode")
    ap.add_argument("--ratios", nargs="*", type=float, default=[0.25, 0.5, 0.75])
    ap.add_argument("--epochs", type=int, default=40, help="max distillation epochs (early stop, patience 8)")
    ap.add_argument("--round-to", type=int, default=8, help="channel counts rounded to a multiple of this")
    ap.add_argument("--min-seconds", type=float, default=2.0)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.real:
        with C.workdir() as tmp:
            rows = run_real(args.only or REAL, args.min_seconds, Path(tmp), args.batchnorm)
        C.write_results("pruning_real" + (f"_bn_{args.batchnorm}" if args.batchnorm else ""), rows, C.markdown_table(rows, REAL_COLUMNS), C.environment(),
                        {"threads": 1, "batch": 1, "min_seconds": args.min_seconds, "rounds": 3},
                        write_results=args.write_results)
        return
    models = [m.removeprefix("digits-") for m in (args.only or ["digits-cnn", "digits-lstm", "digits-vit"])]
    with C.workdir() as tmp:
        rows = run(models, args.ratios, args.epochs, args.round_to, args.min_seconds, Path(tmp))
    C.write_results("pruning", rows, C.markdown_table(rows, COLUMNS), C.environment(),
                    {"ratios": args.ratios, "epochs": args.epochs, "round_to": args.round_to, "threads": 1,
                     "batch": 1, "min_seconds": args.min_seconds}, write_results=args.write_results)


if __name__ == "__main__":
    main()
