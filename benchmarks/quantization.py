"""Every ONNX quantization scheme vs FP32 on the reference models and three edge-size architectures.

For each model: export FP32 + fp16 + int8-dynamic + int8-static through `edgeai export` (each
artifact verified), evaluate each artifact in onnxruntime (top-1 on the digits test split for
the trained reference models; cosine similarity to FP32 PyTorch for the random-weight ones),
and time each in a fresh process (1 thread, batch 1), median p50 over 3 interleaved rounds.
Ratios are within one model's run.

    python benchmarks/quantization.py [--only NAME ...] [--min-seconds 2]
"""
from __future__ import annotations

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
                            data=DataConfig(eval=eval_data, calibration=calib), summary=SummaryConfig(bench=False))
        notes = {a.name: "; ".join(n[:120] for n in a.notes) for a in out.artifacts}
        p50 = C.timed([f"{out.out_dir}@{a.name}" for a in out.artifacts], threads, min_seconds)
        for r, t in zip(summary_rows(out.manifest), p50):
            rows.append({"model": name, "kind": kind, "variant": r["variant"], "size_mb": r["size_mb"],
                         "size_ratio": r["size_ratio"], "p50_ms": t, "speedup": p50[0] / t if t and p50[0] else None,
                         "metric": r.get("metric"), "value": r.get("metric_value"), "drop": r.get("drop"),
                         "max_abs_err": r["max_abs_err"], "notes": notes[r["variant"]]})
        for f in out.manifest.failed:  # variants edgeai had to leave out, with the reason
            rows.append({"model": name, "kind": kind, "variant": f["name"], "notes": f"FAILED: {f['error']}"})
    return rows


if __name__ == "__main__":
    C.models_main("quantization", __doc__, run, COLUMNS)
