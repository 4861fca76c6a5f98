"""Every TFLite variant vs ONNX Runtime FP32 and vs LiteRT FP32, on the reference and edge-size models.

For each model: `edgeai export` to ONNX (FP32) and to TFLite (FP32 + fp16 + int8-dynamic +
int8-static; for RNNs also the fused-LSTM FP32 graph), every artifact verified against PyTorch
and evaluated in its own runtime (top-1 on the digits test split for the trained reference
models; cosine to FP32 PyTorch for the random-weight ones). Then all artifacts of the model
are timed together (each in a fresh process, 1 thread, batch 1; median p50 of 3 interleaved
rounds), so the ratios come from one run.

    python benchmarks/tflite.py [--only NAME ...] [--min-seconds 2]
"""
from __future__ import annotations

from pathlib import Path

import _common as C

TFLITE_SCHEMES = ({"fp16": {}}, {"int8-dynamic": {}}, {"int8-static": {}})
COLUMNS = [("model", "model", ""), ("variant", "variant", ""), ("ops", "ops", ""), ("transposes", "TRANSPOSE", ""),
           ("size_mb", "size MB", ".3f"), ("p50_ms", "p50 ms", ".3f"), ("vs_ort", "speedup vs ORT FP32", ".2f"),
           ("vs_litert", "speedup vs LiteRT FP32", ".2f"), ("metric", "metric", ""), ("value", "value", ".4f"),
           ("drop", "drop vs ORT FP32", "+.4f"), ("max_abs_err", "max abs err", ".2e"), ("failed", "failed", "")]


def _exports(name, factory, inputs, kind, eval_data, calib, folder: Path):
    """(label, export folder, artifact entry) for every variant of one model."""
    import edgeai
    from edgeai.recipe import DataConfig, SummaryConfig

    data = DataConfig(eval=eval_data, calibration=calib)
    no_bench = SummaryConfig(bench=False)
    out = [("onnx fp32", edgeai.export(factory, folder / f"{name}-onnx", inputs=inputs, data=data, summary=no_bench))]
    out.append(("tflite", edgeai.export(factory, folder / f"{name}-tflite", inputs=inputs, format="tflite",
                                        quantize=TFLITE_SCHEMES, data=data, summary=no_bench)))
    if kind == "rnn":
        out.append(("tflite fused-lstm", edgeai.export(factory, folder / f"{name}-fused", inputs=inputs,
                                                       format="tflite", export={"fuse_lstm": True}, data=data,
                                                       summary=no_bench)))
    rows = []
    for label, res in out:
        for a in res.artifacts:
            variant = label if label != "tflite" else f"tflite {a.name}"
            rows.append((variant, f"{res.out_dir}@{a.name}", a))
    return rows


def run(models, min_seconds: float, threads: int, folder: Path) -> list[dict]:
    rows = []
    for name, factory, inputs, kind, eval_data, calib in models:
        print(f"== {name}", flush=True)
        variants = _exports(name, factory, inputs, kind, eval_data, calib, folder)
        times = C.timed([t for _, t, _ in variants], threads, min_seconds)
        p50 = {t: p for (_, t, _), p in zip(variants, times)}
        ort = p50[variants[0][1]]
        litert = p50[variants[1][1]]
        base_metric = _metric(variants[0][2])
        for variant, target, a in variants:
            metric = _metric(a)
            t = p50[target]
            rows.append({"model": name, "kind": kind, "variant": variant, "format": a.format,
                         "ops": a.details.get("op_count"), "transposes": a.details.get("transpose_count"),
                         "size_mb": a.size_bytes / 1e6, "p50_ms": t,
                         "vs_ort": ort / t if t and ort else None,
                         "vs_litert": litert / t if t and litert and a.format == "tflite" else None,
                         "metric": metric[0] if metric else None, "value": metric[1] if metric else None,
                         "drop": base_metric[1] - metric[1] if metric and base_metric else None,
                         "max_abs_err": a.parity.get("max_abs"), "notes": a.notes})
        for f in _failed(variants):  # variants edgeai had to leave out, with the reason
            rows.append({"model": name, "kind": kind, "variant": f"tflite {f['name']}", "failed": f["error"]})
    return rows


def _failed(variants) -> list[dict]:
    from edgeai.manifest import Manifest
    folders = dict.fromkeys(t.split("@")[0] for _, t, _ in variants)
    return [f for folder in folders for f in Manifest.read(folder).failed]


def _metric(a):
    for m in ("top1", "cosine"):
        if m in a.metrics:
            return m, a.metrics[m]
    return None


if __name__ == "__main__":
    C.models_main("tflite", __doc__, run, COLUMNS)
