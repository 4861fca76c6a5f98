"""`edgeai export MODEL --task text-generation`: a causal LM as one ONNX graph with a KV cache, verified.

The export folder holds model.onnx (+ model.onnx.data past 2 GB), tokenizer.json when the model has
one, and manifest.json whose FP32 artifact has `details.decoder` (kind causal-lm, cache layout,
input/output names); see docs/decoders.md. Imports nothing heavy until an export runs.
"""
from __future__ import annotations

import logging
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from edgeai.errors import ConfigError, EdgeAIError

log = logging.getLogger(__name__)

MODEL_FILE = "model.onnx"
TOKENIZER_FILE = "tokenizer.json"


def is_decoder_task(task: str | None) -> bool:
    from edgeai.exporters._decoder_torch import TASKS
    return task in TASKS


def decoder_details(source, normalized: dict) -> dict:
    """The manifest's description of a decoder artifact: what the runtime needs to drive the cache."""
    from edgeai.exporters._decoder_graph import LOGITS_TO_KEEP
    from edgeai.exporters._decoder_torch import PAST_KEY, PAST_VALUE, PRESENT_KEY, PRESENT_VALUE
    lay = source.layout
    return {"kind": "causal-lm", "layers": lay.layers, "kv_heads": lay.kv_heads, "head_dim": lay.head_dim,
            "vocab_size": lay.vocab_size, "max_positions": lay.max_positions, "cache_dtype": "float32",
            "past_key": PAST_KEY, "past_value": PAST_VALUE, "present_key": PRESENT_KEY,
            "present_value": PRESENT_VALUE, "logits_to_keep": LOGITS_TO_KEEP,
            "tokenizer": TOKENIZER_FILE if source.tokenizer else None,
            "eos_token_ids": source.eos_token_ids, "bos_token_id": source.bos_token_id,
            "tied_embedding": normalized["tied_embedding"]}


def export_fp32(source, stage: Path, *, opset: int = 18, external_data: bool = False, tolerance=None,
                graph: str = "auto", progress: Callable[[str], None] = log.info):
    """Write `source`'s decoder graph into `stage`/model.onnx (fused from the weights where supported, else
    traced and normalized), verify it against PyTorch; return its ArtifactEntry (the tokenizer file, when
    there is one, is written beside it and listed as an extra file)."""
    from edgeai.exporters._decoder_fused import unsupported_reason
    from edgeai.exporters.onnx import external_files, op_histogram
    from edgeai.fsutil import atomic_write_text
    from edgeai.verify import FP32_TOLERANCE
    path = stage / MODEL_FILE
    tolerance = tolerance or FP32_TOLERANCE
    reason = unsupported_reason(source.hf_model) if graph != "traced" else "--decoder-graph traced"
    if graph == "fused" and reason:
        raise ConfigError(f"--decoder-graph fused: not for this model ({reason}); use auto or traced")
    built = None
    if reason is None:
        built, reason = _fused(source, path, opset, external_data, tolerance, strict=graph == "fused",
                               progress=progress)
    if built is None:
        built = _traced(source, path, opset, external_data, tolerance, progress)
    facts, decoder, parity = built
    files = [MODEL_FILE, *external_files(path)]
    if source.tokenizer:
        atomic_write_text(stage / TOKENIZER_FILE, source.tokenizer)
        files.append(TOKENIZER_FILE)
    if reason and graph == "auto":
        facts["fused_skipped"] = reason
    details = {"opset": opset, "export_path": facts.get("graph", "dynamo"), "op_histogram": op_histogram(path),
               "decoder": decoder, "normalize": facts}
    return _entry("fp32", stage, files, details, parity, [{"type": "export.onnx-decoder",
                                                          "config": {"opset": opset, "external_data": external_data,
                                                                     "graph": facts.get("graph", "traced")}}])


def _fused(source, path: Path, opset: int, external_data: bool, tolerance, *, strict: bool, progress):
    """((facts, decoder, parity), None) of the fused graph, or (None, why) when it does not verify and
    `strict` is off (the traced graph is used then; the reason is logged and kept in the manifest)."""
    from edgeai.exporters._decoder_fused import build
    from edgeai.exporters._decoder_verify import verify_decoder
    from edgeai.exporters.onnx import external_files
    progress("writing the fused decoder graph from the weights (GroupQueryAttention, SkipLayerNorm, KV cache)")
    facts = build(source.hf_model, source.layout, path, opset=opset, external_data=external_data)
    # GroupQueryAttention reads the valid length from the mask: the runtime may share past and present buffers
    decoder = {**decoder_details(source, facts), "past_present_share_buffer": True}
    progress(f"verifying {MODEL_FILE} against PyTorch (prefill, decode steps, greedy tokens)")
    try:
        return (facts, decoder, verify_decoder(source, path, decoder, tolerance)), None
    except EdgeAIError as e:
        if strict:
            raise
        log.warning("the fused decoder graph did not verify (%s); exporting the traced graph instead", e)
        for f in external_files(path):
            (path.parent / f).unlink(missing_ok=True)
        path.unlink(missing_ok=True)
        return None, f"the fused graph did not verify: {e}"


def _traced(source, path: Path, opset: int, external_data: bool, tolerance, progress):
    from edgeai.exporters._decoder_graph import normalize
    from edgeai.exporters._decoder_torch import trace_onnx
    from edgeai.exporters._decoder_verify import verify_decoder
    progress("exporting the decoder to onnx (torch.export, KV cache)")
    trace_onnx(source, path, opset)
    progress("normalizing the graph (Gemm->MatMul, tied embedding, logits_to_keep)")
    facts = {"graph": "traced", **normalize(path, source.layout, external_data=external_data)}
    decoder = decoder_details(source, facts)
    progress(f"verifying {MODEL_FILE} against PyTorch (prefill, decode steps, greedy tokens)")
    return facts, decoder, verify_decoder(source, path, decoder, tolerance)


def _entry(name: str, stage: Path, files: list[str], details: dict, parity: dict, steps: list[dict]):
    from edgeai.fsutil import sha256_file
    from edgeai.manifest import ArtifactEntry
    from edgeai.runtime.onnx import OnnxSession
    session = OnnxSession(stage / files[0], optimization="none")
    digests = {f: sha256_file(stage / f) for f in files}
    return ArtifactEntry(name=name, file=files[0], format="onnx", precision="fp32", sha256=digests[files[0]],
                         size_bytes=sum((stage / f).stat().st_size for f in files),
                         inputs=[s.to_dict() for s in session.inputs], outputs=[s.to_dict() for s in session.outputs],
                         exporter="torch.onnx (torch.export), edgeai decoder", extra_files=files[1:], parity=parity,
                         steps=steps, details=details, digests=digests)


def export_decoder(recipe: Any, out_dir: Path, progress: Callable[[str], None]):
    """The decoder branch of edgeai.pipeline.run: load, export FP32, verify, write the folder."""
    from edgeai.exporters._decoder_torch import load_decoder
    from edgeai.exporters.onnx import OnnxExportConfig
    from edgeai.fsutil import check_output_target, locked_staging, publish
    from edgeai.manifest import MANIFEST_NAME, Manifest
    from edgeai.outdir import check_overwrites, removable_old_files
    from edgeai.pipeline import ExportOutcome, _tolerance, versions
    from edgeai.recipe import make_config
    _check_recipe(recipe)
    config = make_config(OnnxExportConfig, recipe.export, "onnx export")
    if config.exporter == "torchscript":
        raise ConfigError("decoders export with torch.export only; drop --exporter torchscript")
    check_output_target(out_dir)
    with locked_staging(out_dir) as stage:  # locked before the model loads: of two exports, the first started wins
        progress(f"loading {recipe.model}")
        source = load_decoder(recipe.model, trust_pickle=recipe.trust_pickle)
        entry = export_fp32(source, stage, opset=config.opset, external_data=config.external_data,
                            tolerance=_tolerance(recipe), graph=config.decoder_graph, progress=progress)
        variants, failed = [], []
        if recipe.quantize:  # weight-only variants, each checked against its LM budget (edgeai/steps)
            from edgeai.steps.decoder_variants import decoder_variants
            variants, failed = decoder_variants(recipe, stage, entry, progress)
        src = {"kind": "causal-lm", "origin": recipe.model, "task": "text-generation", **source.provenance,
               "recipe": recipe.name or None}
        manifest = Manifest(source=src, artifacts=[entry, *variants], versions=versions(), failed=failed,
                            created=datetime.now(timezone.utc).isoformat(timespec="seconds"))
        manifest.write(stage)
        files = list(dict.fromkeys(f for e in manifest.artifacts for f in e.files))  # the tokenizer once
        check_overwrites(out_dir, files + [MANIFEST_NAME])  # never a file edgeai did not write
        stale = removable_old_files(out_dir, set(files), set())
        publish(stage, out_dir, files + [MANIFEST_NAME])
        for name in stale:
            (out_dir / name).unlink(missing_ok=True)
    progress(f"wrote {out_dir / MANIFEST_NAME}")
    return ExportOutcome(out_dir, manifest)


def _check_recipe(recipe) -> None:
    what = {"format": recipe.format != "onnx", "steps": bool(recipe.steps),
            "inputs": bool(recipe.inputs), "example_inputs": bool(recipe.example_inputs), "arch": bool(recipe.arch)}
    bad = [k for k, v in what.items() if v]
    if bad:
        raise ConfigError(f"--task text-generation exports an ONNX decoder with fixed inputs; it does not take "
                          f"{', '.join(bad)} (the inputs are fixed: see docs/decoders.md)")

