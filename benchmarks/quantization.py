"""Every ONNX quantization scheme vs FP32 on the reference models and three edge-size architectures.

For each model: export FP32 + fp16 + int8-dynamic + int8-static through `edgeai export` (each
artifact verified), evaluate each artifact in onnxruntime (top-1 on the digits test split for
the trained reference models; cosine similarity to FP32 PyTorch for the random-weight ones),
and time each in a fresh process (1 thread, batch 1). Ratios are within one model's run.

    python benchmarks/quantization.py [--only NAME ...] [--min-seconds 2]
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

import _common as C

SCHEMES = ({"fp16": {}}, {"int8-dynamic": {}}, {"int8-static": {}})
COLUMNS = [("model", "model", ""), ("kind", "kind", ""), ("variant", "variant", ""),
           ("size_mb", "size MB", ".3f"), ("size_ratio", "size ×", ".2f"), ("p50_ms", "p50 ms", ".3f"),
           ("speedup", "speedup vs FP32", ".2f"), ("metric", "metric", ""), ("value", "value", ".4f"),
           ("drop", "drop", "+.4f"), ("max_abs_err", "max abs err", ".2e"), ("notes", "notes", "")]


def run(models, min_seconds: float, threads: int, folder: Path) -> list[dict]:
    import edgeai
    from edgeai.recipe import DataConfig, SummaryConfig
    from edgeai.report import summary_rows

    rows = []
    for name, factory, inputs, kind, eval_data, calib in models:
        print(f"== {name}", flush=True)
        out = edgeai.export(factory, folder / name, inputs=inputs, quantize=SCHEMES,
                            data=DataConfig(eval=eval_data, calibration=calib),
                            summary=SummaryConfig(bench=True, threads=threads, min_seconds=min_seconds))
        notes = {a.name: "; ".join(n[:120] for n in a.notes) for a in out.artifacts}
        for r in summary_rows(out.manifest):
            rows.append({"model": name, "kind": kind, "variant": r["variant"], "size_mb": r["size_mb"],
                         "size_ratio": r["size_ratio"], "p50_ms": r.get("p50_ms"), "speedup": r.get("speedup"),
                         "metric": r.get("metric"), "value": r.get("metric_value"), "drop": r.get("drop"),
                         "max_abs_err": r["max_abs_err"], "notes": notes[r["variant"]]})
        for f in out.manifest.failed:  # variants edgeai had to leave out, with the reason
            rows.append({"model": name, "kind": kind, "variant": f["name"], "notes": f"FAILED: {f['error']}"})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", nargs="*", help="model names to run (default: all)")
    ap.add_argument("--min-seconds", type=float, default=2.0, help="timed seconds per variant (default 2)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    with C.workdir() as tmp:
        folder = Path(tmp)
        models = C.reference_models() + C.edge_models(folder)
        if args.only:
            models = [m for m in models if m[0] in args.only]
        rows = run(models, args.min_seconds, args.threads, folder)
    C.write_results("quantization", rows, C.markdown_table(rows, COLUMNS), C.environment(),
                    {"threads": args.threads, "batch": 1, "min_seconds": args.min_seconds})


if __name__ == "__main__":
    main()
