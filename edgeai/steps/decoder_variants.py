"""Quantized variants of a decoder export (`edgeai export --task text-generation --quantize int4-weight ...`):
each scheme's artifact step on the FP32 model, checked against it, as manifest entries beside it."""
from __future__ import annotations

import logging
import re
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

import numpy as np

from edgeai.errors import ConfigError, EdgeAIError, VerificationError
from edgeai.steps import StepContext, VariantNotKept, canonical_scheme, config_to_dict, get_artifact_step

log = logging.getLogger(__name__)

PROBE_TOKENS = 32     # a broken graph check without eval text: logits on this many random token ids ...
MIN_PROBE_COSINE = 0.9  # ... must keep this cosine to FP32's (as QUANTIZED_TOLERANCE)


def eval_text_of(recipe) -> str | None:
    """The recipe's eval data when it is a text file (a decoder's eval data is text)."""
    data = recipe.data.eval
    return data if data and str(data).lower().endswith(".txt") else None


def _config(step, opts: dict, recipe, name: str):
    from edgeai.recipe import make_config
    config = make_config(step.config_cls, opts, f"quantization {name!r}")
    if recipe.max_drop is not None and hasattr(config, "max_ppl_increase") and "max_ppl_increase" not in opts:
        config = replace(config, max_ppl_increase=recipe.max_drop / 100)   # --max-drop: perplexity points in %
    return config


def probe_cosine(fp32: Path, variant: Path, decoder: dict, seed: int = 0) -> float:
    """Mean per-position cosine of the variant's logits to FP32's on random token ids."""
    from edgeai.runtime.generate import DecoderSession
    ids = np.random.default_rng(seed).integers(0, int(decoder.get("vocab_size") or 2), PROBE_TOKENS)
    a, b = (DecoderSession(p, decoder).logits(ids).astype(np.float64) for p in (fp32, variant))
    cos = (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1) + 1e-12)
    return float(cos.mean())


def lm_scores(fp32: Path, variant: Path, ctx: StepContext, recipe) -> dict:
    """The LM budget's numbers for a variant its step did not score; VariantNotKept when over the default budget."""
    from edgeai.bench.kv import open_decoder
    from edgeai.evaluate.text import budget_check, load_tokens, score_sessions
    from edgeai.steps.quantize_weight import WeightOnlyConfig
    limits = WeightOnlyConfig()
    max_ppl = recipe.max_drop / 100 if recipe.max_drop is not None else limits.max_ppl_increase
    ids = load_tokens(ctx.extra["eval_text"], ctx.extra.get("tokenizer") or fp32, limits.max_tokens)
    ref, score = score_sessions({"fp32": open_decoder(fp32, verify_digest=False),
                                 "q": open_decoder(variant, verify_digest=False)}, ids, limits.window, limits.stride)
    broken = budget_check(score, max_ppl, limits.min_top1_agreement)
    if broken:
        raise VariantNotKept(f"over the LM accuracy budget: {'; '.join(broken)}")
    return {"within": True, "perplexity": score.perplexity, "fp32_perplexity": ref.perplexity,
            "ppl_increase": score.ppl_increase, "top1_agreement": score.top1_agreement, "kl": score.kl,
            "tokens": score.tokens}


def decoder_variants(recipe, stage: Path, fp32, progress: Callable[[str], None]) -> tuple[list, list[dict]]:
    """(entries, failed) for recipe.quantize on the FP32 decoder entry `fp32` in `stage`."""
    entries, failed = [], []
    decoder = fp32.details["decoder"]
    tokenizer = [f for f in fp32.extra_files if f == decoder.get("tokenizer")]
    ctx = StepContext(extra={"eval_text": eval_text_of(recipe),
                             "tokenizer": str(stage / tokenizer[0]) if tokenizer else None})
    for item in recipe.quantize:
        (scheme, opts), = item.items()
        opts = dict(opts or {})
        scheme = canonical_scheme(scheme)
        name = str(opts.pop("name", scheme))   # `name:` tells two variants of one scheme apart (block sizes)
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name) or name == "fp32":
            raise ConfigError(f"variant name {name!r}: use letters, digits, '.', '_' and '-' (and not fp32)")
        key = f"onnx:{scheme}"
        dst = stage / f"model.{name}.onnx"
        try:
            step = get_artifact_step(key)
            config = _config(step, opts, recipe, name)
            progress(f"quantizing: {name}")
            report = step.fn(stage / fp32.file, dst, config, ctx)
            cosine = probe_cosine(stage / fp32.file, dst, decoder)
            if cosine < MIN_PROBE_COSINE:
                raise VerificationError(f"{name} logits have cosine {cosine:.3f} to FP32's on random ids "
                                        f"(< {MIN_PROBE_COSINE}): the graph computes something else")
            if ctx.extra["eval_text"] and "lm_budget" not in report.details:  # e.g. int8-dynamic
                report.details["lm_budget"] = lm_scores(stage / fp32.file, dst, ctx, recipe)
        except (VerificationError, VariantNotKept) as e:
            failed.append(_failure(name, key, e, stage, dst))
            continue
        except EdgeAIError:
            raise
        except Exception as e:  # a quantizer bug on this graph: leave the variant out, keep the others
            failed.append(_failure(name, key, e, stage, dst))
            continue
        entries.append(_entry(name, dst, fp32, report, step.precision, cosine, tokenizer, config))
    return entries, failed


def _failure(name: str, key: str, error: Exception, stage: Path, dst: Path) -> dict:
    log.warning("variant %s left out: %s", name, error)
    for p in stage.glob(f"{dst.name}*"):
        p.unlink()
    text = str(error) if isinstance(error, EdgeAIError) else f"{type(error).__name__}: {error}"
    return {"name": name, "step": key, "error": " ".join(text.split())[:400].replace(f"{stage}/", "")}


def _entry(name: str, dst: Path, fp32, report, precision: str, cosine: float, tokenizer: list[str], config: Any):
    from edgeai.fsutil import sha256_file
    from edgeai.manifest import ArtifactEntry
    from edgeai.runtime.onnx import OnnxSession
    stage = dst.parent
    files = [dst.name, *report.details.get("extra_files", []), *tokenizer]
    session = OnnxSession(dst, optimization="none")
    digests = {f: sha256_file(stage / f) for f in files}
    budget = report.details.get("lm_budget")
    metrics = {k: budget[k] for k in ("perplexity", "fp32_perplexity", "ppl_increase", "top1_agreement", "kl",
                                      "tokens")} if budget else {}
    details = {"decoder": dict(fp32.details["decoder"]), **{k: v for k, v in report.details.items()
                                                           if k not in ("extra_files", "bits_per_node")},
               "bits_per_node": report.details.get("bits_per_node")}
    return ArtifactEntry(name=name, file=dst.name, format="onnx", precision=precision, sha256=digests[dst.name],
                         size_bytes=sum((stage / f).stat().st_size for f in files),
                         inputs=[s.to_dict() for s in session.inputs], outputs=[s.to_dict() for s in session.outputs],
                         exporter=fp32.exporter, extra_files=files[1:], parity={"probe_logits_cosine": cosine},
                         steps=fp32.steps + [{"type": report.step, "config": report.config or config_to_dict(config)}],
                         metrics=metrics, notes=list(report.notes), details=details, digests=digests)
