"""Every TFLite variant vs ONNX Runtime FP32 and vs LiteRT FP32, on the reference, edge-size and real-shaped models.

For each model: `edgeai export` to ONNX (FP32) and to TFLite (FP32 + fp16 + int8-dynamic +
int8-static; for RNNs also the fused-LSTM FP32 graph), every artifact verified against PyTorch
and evaluated in its own runtime (top-1 on the digits test split for the trained reference
models; cosine to FP32 PyTorch for the random-weight ones). Then all artifacts of the model
are timed together (each in a fresh process, 1 thread, batch 1; median p50 of 3 interleaved
rounds), so the ratios come from one run.

The real-shaped zoo models (CREPE-tiny-shaped pitch CNN, 3-layer speaker LSTM, BERT-shaped
encoder) also get ONNX INT8 (static for the CNN, dynamic for the LSTM and the encoder), and
their INT8 variants run under edgeai's budget with the fallback (ONNX and TFLite alike): the
pitch CNN in its task metric (minus mean cents error, `max_drop` 1 cent as in
recipes/pitch_cnn.yaml), the others by the default budget (output cosine >= 0.99 to FP32).

    python benchmarks/tflite.py [--only NAME ...] [--min-seconds 2]
    python benchmarks/tflite.py --only pitch-cnn speaker-lstm bert-encoder --results tflite_real
"""
from __future__ import annotations

from pathlib import Path

import _common as C

TFLITE_SCHEMES = ({"fp16": {}}, {"int8-dynamic": {}}, {"int8-static": {}})
COLUMNS = [("model", "model", ""), ("variant", "variant", ""), ("ops", "ops", ""), ("transposes", "TRANSPOSE", ""),
           ("size_mb", "size MB", ".3f"), ("p50_ms", "p50 ms", ".3f"), ("vs_ort", "speedup vs ORT FP32", ".2f"),
           ("vs_litert", "speedup vs LiteRT FP32", ".2f"), ("metric", "metric", ""), ("value", "value", ".4f"),
           ("drop", "drop vs ORT FP32", "+.4f"), ("max_abs_err", "max abs err", ".2e"), ("kept_float", "kept float", ""),
           ("failed", "failed", "")]

# (name, factory, inputs, kind, eval data, calibration data) at full size, and per model the user
# metric, the accuracy budget (None: the default cosine budget) and the ONNX INT8 scheme compared
REAL_MODELS = [
    ("pitch-cnn", "edgeai.zoo.pitch:pitch_cnn", ["audio:batch,1024"], "cnn",
     "edgeai.zoo.pitch:test_tones", "edgeai.zoo.pitch:calib_tones"),
    ("speaker-lstm", "edgeai.zoo.speaker:speaker_lstm", ["mels:batch,frames=48,40"], "rnn",
     "edgeai.zoo.speaker:utterances", "edgeai.zoo.speaker:utterances_calib"),
    ("bert-encoder", "edgeai.zoo.text:bert_encoder", ["input_ids:batch,seq=32:int64", "attention_mask:batch,seq=32:int64"],
     "transformer", "edgeai.zoo.text:sentences", "edgeai.zoo.text:sentences_calib"),
]
REAL = {
    "pitch-cnn": {"metric": "edgeai.zoo.pitch:pitch_error", "max_drop": 1.0, "onnx_int8": "int8-static"},
    "speaker-lstm": {"metric": None, "max_drop": None, "onnx_int8": "int8-dynamic"},
    "bert-encoder": {"metric": None, "max_drop": None, "onnx_int8": "int8-dynamic"},
}
REAL_TFLITE_SCHEMES = ({"int8-dynamic": {}}, {"int8-static": {}})


def _exports(name, factory, inputs, kind, eval_data, calib, folder: Path):
    """(label, export folder, artifact entry) for every variant of one model."""
    import edgeai
    from edgeai.recipe import DataConfig, SummaryConfig

    data = DataConfig(eval=eval_data, calibration=calib)
    no_bench = SummaryConfig(bench=False)
    real = REAL.get(name)
    opts = {"metric": real["metric"], "max_drop": real["max_drop"]} if real else {}
    onnx_q = ({real["onnx_int8"]: {}},) if real else ()
    out = [("onnx", edgeai.export(factory, folder / f"{name}-onnx", inputs=inputs, data=data, summary=no_bench,
                                  quantize=onnx_q, **opts))]
    out.append(("tflite", edgeai.export(factory, folder / f"{name}-tflite", inputs=inputs, format="tflite",
                                        quantize=REAL_TFLITE_SCHEMES if real else TFLITE_SCHEMES, data=data,
                                        summary=no_bench, **opts)))
    if kind == "rnn" and not real:
        out.append(("tflite fused-lstm", edgeai.export(factory, folder / f"{name}-fused", inputs=inputs,
                                                       format="tflite", export={"fuse_lstm": True}, data=data,
                                                       summary=no_bench)))
    rows = []
    for label, res in out:
        for a in res.artifacts:
            variant = f"{label} {a.name}" if label in ("onnx", "tflite") else label
            rows.append((variant, f"{res.out_dir}@{a.name}", a))
    return rows


def run(models, min_seconds: float, threads: int, folder: Path) -> list[dict]:
    rows = []
    for name, factory, inputs, kind, eval_data, calib in models:
        print(f"== {name}", flush=True)
        variants = _exports(name, factory, inputs, kind, eval_data, calib, folder)
        times = C.timed([t for _, t, _ in variants], threads, min_seconds)
        p50 = {t: p for (_, t, _), p in zip(variants, times)}
        first_tflite = next(t for _, t, a in variants if a.format == "tflite")
        ort, litert = p50[variants[0][1]], p50[first_tflite]
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
                         "max_abs_err": a.parity.get("max_abs"), "notes": a.notes, **_fallback(a)})
        for fmt, f in _failed(variants):  # variants edgeai had to leave out, with the reason
            rows.append({"model": name, "kind": kind, "variant": f"{fmt} {f['name']}", "failed": f["error"]})
    return rows


def _failed(variants) -> list[tuple[str, dict]]:
    from edgeai.manifest import Manifest
    folders = {t.split("@")[0]: a.format for _, t, a in variants}
    return [(fmt, f) for folder, fmt in folders.items() for f in Manifest.read(folder).failed]


def _metric(a):
    name = a.metrics.get("metric_name")
    return (name, a.metrics[name]) if name in a.metrics else None


def _fallback(a) -> dict:
    """How many weighted ops/nodes the accuracy fallback kept in float, and the metric with every one INT8."""
    fb = a.details.get("fallback") or {}
    if not fb.get("tries"):
        return {}
    return {"kept_float": len(fb["tries"][fb["chosen"]]["excluded"]), "all_int8": fb["tries"][0]["metric"],
            "tries": len(fb["tries"])}


if __name__ == "__main__":
    C.models_main("tflite", __doc__, run, COLUMNS, extra_models=REAL_MODELS)
