"""Every ONNX quantization scheme vs FP32 on the reference models, three edge-size architectures and the
real-shaped zoo models (BERT-shaped encoder, padded nn.TransformerEncoder, 3-layer speaker LSTM).

On the real-shaped models every INT8 variant runs under edgeai's default budget (output cosine to
FP32 >= 0.99 on the calibration samples, with the fallback), and the BERT-shaped encoder is also
quantized with per-tensor weights (the previous default) to show why per-channel is the default.

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


# (name, factory, inputs, kind, eval data, calibration data), full size; per-tensor compared on the encoder
REAL_MODELS = [
    ("bert-encoder", "edgeai.zoo.text:bert_encoder", ["input_ids:batch,seq=32:int64", "attention_mask:batch,seq=32:int64"],
     "transformer", "edgeai.zoo.text:sentences", "edgeai.zoo.text:sentences_calib"),
    ("padded-encoder", "edgeai.zoo.text:padded_encoder", ["input_ids:batch,seq=32:int64"], "transformer",
     "edgeai.zoo.text:topics", "edgeai.zoo.text:topics_calib"),
    ("speaker-lstm", "edgeai.zoo.speaker:speaker_lstm", ["mels:batch,frames=48,40"], "rnn",
     "edgeai.zoo.speaker:utterances", "edgeai.zoo.speaker:utterances_calib"),
]
PER_TENSOR = {"bert-encoder"}


def run(models, min_seconds: float, threads: int, folder: Path) -> list[dict]:
    import edgeai
    from edgeai.recipe import DataConfig, SummaryConfig

    rows = []
    for name, factory, inputs, kind, eval_data, calib in models:
        print(f"== {name}", flush=True)
        data = DataConfig(eval=eval_data, calibration=calib)
        out = edgeai.export(factory, folder / name, inputs=inputs, quantize=SCHEMES, data=data,
                            summary=SummaryConfig(bench=False))
        runs = [(out, "")]
        if name in PER_TENSOR:  # same model, per-tensor weights: a separate folder, compared on the same data
            runs.append((edgeai.export(factory, folder / f"{name}-per-tensor", inputs=inputs, data=data,
                                       quantize=({"int8-dynamic": {"per_channel": False}},),
                                       summary=SummaryConfig(bench=False)), " per-tensor"))
        rows += _rows(name, kind, runs, threads, min_seconds)
    return rows


def _rows(name, kind, runs, threads, min_seconds) -> list[dict]:
    """Time every artifact of every export of one model together; one row per variant and per failed one."""
    from edgeai.report import summary_rows

    targets = [(o, suffix, a) for o, suffix in runs for a in o.artifacts if not (suffix and a.name == "fp32")]
    times = C.timed([f"{o.out_dir}@{a.name}" for o, _, a in targets], threads, min_seconds)
    p50 = {(id(o), a.name): t for (o, _, a), t in zip(targets, times)}
    base = times[0]
    rows = []
    for out, suffix in runs:
        notes = {a.name: "; ".join(n[:120] for n in a.notes) for a in out.artifacts}
        for r in summary_rows(out.manifest):
            if suffix and r["variant"] == "fp32":
                continue
            t = p50[(id(out), r["variant"])]
            rows.append({"model": name, "kind": kind, "variant": r["variant"] + suffix, "size_mb": r["size_mb"],
                         "size_ratio": r["size_ratio"], "p50_ms": t, "speedup": base / t if t and base else None,
                         "metric": r.get("metric"), "value": r.get("metric_value"), "drop": r.get("drop"),
                         "max_abs_err": r["max_abs_err"], "notes": notes[r["variant"]]})
        for f in out.manifest.failed:  # variants edgeai had to leave out, with the reason
            rows.append({"model": name, "kind": kind, "variant": f["name"] + suffix, "notes": f"FAILED: {f['error']}"})
    return rows


if __name__ == "__main__":
    C.models_main("quantization", __doc__, run, COLUMNS, extra_models=REAL_MODELS)
