"""The LM accuracy budget of weight-only quantization: perplexity and top-1 agreement to FP32 on eval text;
over budget, the most sensitive MatMuls are raised one precision step (4 -> 8 bits -> float) until it fits."""
from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

from edgeai.steps import StepContext, VariantNotKept
from edgeai.steps import _onnx_graph as g

log = logging.getLogger(__name__)


def eval_text_for(config, ctx: StepContext) -> tuple[Path, Path] | None:
    """(eval text, tokenizer) from the config or ctx.extra ("eval_text", "tokenizer"), or None."""
    text = config.eval_text or ctx.extra.get("eval_text")
    if not text:
        return None
    return Path(text), ctx.extra.get("tokenizer")


def margin(score, config) -> float:
    """How far inside the budget a score is, in budget units (>= 0: within; 1: same as FP32)."""
    ppl = (config.max_ppl_increase - score.ppl_increase) / config.max_ppl_increase
    top1 = (score.top1_agreement - config.min_top1_agreement) / max(1.0 - config.min_top1_agreement, 1e-9)
    return min(ppl, top1)


def _ranking_feeds(session, window) -> dict:
    """Feeds for the sensitivity ranking: the window after its first token, with the FP32 cache of that token
    as the past (edgeai's sessions refuse the empty past of a first call: a zero-size dimension)."""
    import numpy as np
    empty = np.zeros((1, session.kv_heads, 0, session.head_dim), session.decoder.get("cache_dtype", "float32"))
    first = {"input_ids": window[None, :1], "attention_mask": np.ones((1, 1), np.int64),
             "position_ids": np.zeros((1, 1), np.int64), "logits_to_keep": np.array([1], np.int64),
             **{name: empty for name in session.past_names}}
    present = session.inference_session.run(session.present_names, first)
    n = len(window) - 1
    return {"input_ids": window[None, 1:], "attention_mask": np.ones((1, n + 1), np.int64),
            "position_ids": np.arange(1, n + 1, dtype=np.int64)[None], "logits_to_keep": np.array([0], np.int64),
            **dict(zip(session.past_names, present))}


def _ranker(src: Path, feeds: dict, candidates: list[str]):
    """onnx_ranker's order (the output error each node adds), with lm_head and the embeddings first: their
    error moves the logits' argmax far more than its size says (on the zoo LM, INT4 with every transformer
    MatMul raised to 8 bits still agreed with FP32 on only 93.6% of tokens; lm_head and embeddings at 8 bits
    gave 95.6% alone)."""
    from edgeai.steps import _weight_graph as wg
    from edgeai.steps.quant_fallback import node_sensitivity
    model = g.load_model(src, with_weights=False)
    first = [n for n in [wg.lm_head_node(model), *(x.name for x in wg.embedding_gathers(model))] if n in candidates]

    def ranked(quant_path: Path):
        scores = dict(node_sensitivity(src, quant_path, feeds, candidates))
        rest = sorted((n for n in candidates if n not in first), key=lambda n: -(scores.get(n) or 0.0))
        return {n: [n] for n in candidates}, [(n, scores.get(n)) for n in first + rest]   # one node per unit
    return ranked


def _raised(config, plan: dict[str, int], excluded: tuple[str, ...]):
    """`config` with the `excluded` nodes one precision step up from where `plan` put them."""
    int8 = [n for n in excluded if plan.get(n) == 4]
    flt = [n for n in excluded if plan.get(n) == 8]
    return replace(config, int8_nodes=tuple(config.int8_nodes) + tuple(int8),
                   float_nodes=tuple(config.float_nodes) + tuple(flt))


def quantize_within_lm_budget(src: Path, out: Path, config, text: tuple[Path, Path | None]):
    """Quantize `src` into `out` holding the LM budget; returns (details, the config that made `out`, notes)."""
    from edgeai.bench.kv import open_decoder
    from edgeai.evaluate.text import budget_check, load_tokens, score_sessions
    from edgeai.runtime.generate import DecoderSession
    from edgeai.steps.quant_fallback import fallback_until_within
    from edgeai.steps.quantize_weight import plan_bits, quantize_file
    text_file, tokenizer = text
    ids = load_tokens(text_file, tokenizer or src, config.max_tokens)
    reference = open_decoder(src, verify_digest=False)
    plan = plan_bits(g.load_model(src, with_weights=False), config)
    scores, details = {}, {}
    budget = (f"perplexity <= FP32 +{100 * config.max_ppl_increase:g}% and top-1 agreement >= "
              f"{100 * config.min_top1_agreement:g}% on {len(ids)} tokens of {text_file.name}")
    with g.work_dir() as work:
        def quantize(excluded: tuple[str, ...]) -> Path:
            path = work / f"try{len(details)}.onnx"
            details[str(path)] = (quantize_file(src, path, _raised(config, plan, excluded)),
                                  _raised(config, plan, excluded))
            return path

        def evaluate(path: Path) -> float:
            variant = DecoderSession(path, reference.decoder, threads=1)   # the same cache layout as FP32's
            _, score = score_sessions({"fp32": reference, "q": variant}, ids, config.window, config.stride)
            scores[str(path)] = score
            log.info("LM budget try %s: perplexity %+.3f%%, top-1 agreement %.2f%%, KL %.5f", path.name,
                     100 * score.ppl_increase, 100 * score.top1_agreement, score.kl)
            return margin(score, config)

        feeds = _ranking_feeds(reference, ids[:config.window])
        candidates = [n for n, b in plan.items() if b]
        fb = fallback_until_within(quantize, evaluate, 1.0, 0.0, _ranker(src, feeds, candidates),
                                   config.max_tries, budget=budget)
        chosen = fb.chosen_try.path
        made, made_config = details[chosen]
        score = scores[chosen]
        if not fb.within:
            why = "; ".join(budget_check(score, config.max_ppl_increase, config.min_top1_agreement))
            raise VariantNotKept(f"over the LM accuracy budget ({budget}) after {len(fb.tries)} tries: {why} "
                                 f"with {len(fb.chosen_try.excluded)} node(s) raised; use mixed or int8-weight")
        made["extra_files"] = g.save_model(g.load_model(chosen), out,
                                           external=g.stores_external_data(chosen) or None)
    notes = []
    raised = fb.chosen_try.excluded
    if raised:
        notes.append(f"LM accuracy budget: raised {len(raised)} node(s) one precision step "
                     f"({g.short_list(list(raised))}) to hold {budget}")
    else:
        notes.append(f"LM accuracy budget held: {budget}")
    made = {**made, "lm_budget": {"text": budget, "within": fb.within, "perplexity": score.perplexity,
                                  "fp32_perplexity": score.perplexity / (1 + score.ppl_increase),
                                  "ppl_increase": score.ppl_increase, "top1_agreement": score.top1_agreement,
                                  "kl": score.kl, "tokens": score.tokens, "tries": len(fb.tries),
                                  "raised_nodes": list(raised)}}
    return made, made_config, notes
