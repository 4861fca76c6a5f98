"""The accuracy budget an INT8 variant must meet: --max-drop on the eval data, else a default output-cosine floor."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from edgeai.errors import EdgeAIError

log = logging.getLogger(__name__)

# Without --max-drop an INT8 variant must keep the mean per-sample cosine between its first output
# and the FP32 model's at or above this, on the eval inputs, else the calibration samples, else the
# example inputs. 0.99 is where a sentence embedding or a speaker embedding still ranks neighbours
# like FP32 does; a 0.94-cosine BERT encoder (per-tensor dynamic INT8) is rejected by it.
DEFAULT_MIN_COSINE = 0.99


class VariantRejected(EdgeAIError):
    """A quantized variant is not written: over its accuracy budget, or nothing in it was quantized."""


@dataclass(frozen=True)
class Budget:
    """How a quantized variant is judged: `evaluate(path)` (higher is better) against a drop or a floor."""

    evaluate: Callable[[Path], float]
    max_drop: float | None          # metric may fall this much below the FP32 artifact's
    min_metric: float | None        # or: metric must be at least this
    text: str                       # the budget in words, for the summary and the manifest
    samples: Any = None             # inputs for the fallback's sensitivity ranking (None: calibration/eval)

    def to_dict(self) -> dict[str, Any]:
        return {"max_drop": self.max_drop, "min_metric": self.min_metric, "text": self.text}


def quantization_budget(source, ctx, max_drop: float | None, user_metric: str | None = None) -> Budget:
    """The user's budget (`max_drop` in the eval metric: `user_metric` when given) or the default cosine
    floor on sample inputs."""
    from edgeai.data import num_samples, split_labels
    from edgeai.evaluate import evaluate
    from edgeai.measure import metric_fn, reference_outputs

    if max_drop is not None:
        _, labels = split_labels(ctx.eval_data or {})
        metric = user_metric or ("top-1 (points)" if labels is not None else "output cosine to FP32")
        n = num_samples(split_labels(ctx.eval_data)[0]) if ctx.eval_data else 0
        return Budget(metric_fn(source, ctx.eval_data, user_metric), max_drop, None,
                      f"{metric} drop <= {max_drop:g} on {n} eval samples (--max-drop)")
    for what, data in (("eval", ctx.eval_data), ("calibration", ctx.calibration),
                       ("example", source.example_inputs)):
        if data is not None:
            feeds, _ = split_labels(data)
            break
    reference = reference_outputs(source, feeds)
    return Budget(lambda path: evaluate(path, feeds, reference=reference).value, None, DEFAULT_MIN_COSINE,
                  f"output cosine to FP32 >= {DEFAULT_MIN_COSINE:g} on {num_samples(feeds)} {what} samples "
                  "(default budget; --max-drop sets another)", feeds)


def quantize_within_budget(key: str, step, src: Path, dst: Path, config: Any, ctx, budget: Budget):
    """Run artifact step `step` (registry key `key`); INT8 steps with exclude_nodes search for the budget.

    Raises VariantRejected when the best try is still over budget or when nothing was quantized.
    """
    if hasattr(config, "exclude_nodes"):
        from edgeai.steps.quant_fallback import quantize_with_fallback
        report, fb = quantize_with_fallback(key, src, dst, config, ctx, budget.evaluate, budget.max_drop,
                                            min_metric=budget.min_metric, budget=budget.text,
                                            samples=budget.samples)
        if not fb.within:
            best = fb.chosen_try
            raise VariantRejected(f"over its accuracy budget ({budget.text}): best metric {best.metric:.4g} "
                                  f"with {len(best.excluded)} node(s) in FP32 after {len(fb.tries)} tries")
        report.details["budget"] = budget.to_dict()
        report.notes.append(f"accuracy budget: {budget.text}; metric {fb.chosen_try.metric:.4g}")
    else:
        report = step.fn(src, dst, config, ctx)
    if report.details.get("quantized_nodes") == 0:
        raise VariantRejected("nothing to quantize: no node of this model was quantized "
                              f"({'; '.join(report.notes) or 'no supported op'}); the FP32 artifact is the same model")
    return report
