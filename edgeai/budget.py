"""The accuracy budget an INT8 variant must meet: --max-drop on the eval data, else a default output-cosine floor."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeai.steps import VariantNotKept

# Without --max-drop an INT8 variant must keep the mean per-sample cosine between its first output
# and the FP32 model's at or above this, on the eval inputs, else the calibration samples, else the
# example inputs. The previous guard (parity cosine >= 0.9) let a 0.94-cosine BERT encoder ship as
# int8-dynamic; at 0.99 the all-INT8 zoo models that lose quality (BERT-shaped encoder with per-tensor
# weights 0.86, speaker LSTM 0.76) are caught and sent through the fallback (benchmarks/quantization.py).
DEFAULT_MIN_COSINE = 0.99


@dataclass(frozen=True)
class Budget:
    """How a quantized variant is judged: its metric on `feeds` (higher is better) against a drop or a floor."""

    feeds: dict                     # model inputs in the PyTorch layout, samples on axis 0
    metric: Any                     # a user edgeai.metrics.Metric, or None: top-1 / cosine
    labels: Any                     # top-1 against these, or None: cosine to `reference`
    reference: dict | None          # FP32 reference outputs for the cosine metric
    max_drop: float | None          # metric may fall this much below the FP32 artifact's
    min_metric: float | None        # or: metric must be at least this
    text: str                       # the budget in words, for the summary and the manifest
    samples: Any = None             # inputs for the fallback's sensitivity ranking (None: calibration/eval)

    def evaluate(self, path: Path, layout: dict | None = None) -> float:
        """The metric of the artifact at `path`; `layout` says which inputs it takes channels-last."""
        from edgeai.evaluate import evaluate
        from edgeai.verify import to_artifact_layout
        return evaluate(path, to_artifact_layout(self.feeds, layout), labels=self.labels,
                        reference=self.reference, metric=self.metric).value

    def to_dict(self) -> dict[str, Any]:
        return {"max_drop": self.max_drop, "min_metric": self.min_metric, "text": self.text}


def quantization_budget(source, ctx, max_drop: float | None, metric: str | None = None) -> Budget:
    """The user's budget (`max_drop` in the eval metric: the user `metric` when given, top-1 with labels,
    else cosine to FP32) or the default cosine floor on sample inputs."""
    from edgeai.data import num_samples, split_labels
    from edgeai.measure import reference_outputs
    from edgeai.metrics import load_metric
    from edgeai.recipe import RecipeError

    if max_drop is not None:
        if ctx.eval_data is None:
            raise RecipeError("max_drop needs evaluation data (--eval-data or data.eval in the recipe)")
        feeds, labels = split_labels(ctx.eval_data)
        user = load_metric(metric)
        what = (f"metric {user.name}" if user else "top-1 (points)" if labels is not None
                else "output cosine to FP32")
        reference = None if labels is not None or user else reference_outputs(source, feeds)
        return Budget(feeds, user, labels, reference, max_drop, None,
                      f"{what} drop <= {max_drop:g} on {num_samples(feeds)} eval samples (--max-drop)")
    for what, data in (("eval", ctx.eval_data), ("calibration", ctx.calibration),
                       ("example", source.example_inputs)):
        if data is not None:
            feeds, _ = split_labels(data)
            break
    return Budget(feeds, None, None, reference_outputs(source, feeds), None, DEFAULT_MIN_COSINE,
                  f"output cosine to FP32 >= {DEFAULT_MIN_COSINE:g} on {num_samples(feeds)} {what} samples "
                  "(default budget; --max-drop sets another)", feeds)


def quantize_within_budget(key: str, step, src: Path, dst: Path, config: Any, ctx, budget: Budget):
    """Run artifact step `step` (registry key `key`) searching for the budget (ONNX and TFLite INT8).

    Raises VariantNotKept when the best try is still over budget or when nothing was quantized.
    """
    from edgeai.data import num_samples
    kwargs = dict(min_metric=budget.min_metric, budget=budget.text, samples=budget.samples,
                  budget_samples=num_samples(budget.feeds))
    if hasattr(config, "exclude_nodes"):
        from edgeai.steps.quant_fallback import quantize_with_fallback
        report, fb = quantize_with_fallback(key, src, dst, config, ctx, budget.evaluate, budget.max_drop, **kwargs)
    elif hasattr(config, "exclude_ops"):
        from edgeai.steps.quant_fallback_tflite import quantize_tflite_with_fallback
        layout = {"channels_last_inputs": ctx.extra.get("channels_last_inputs", [])}
        report, fb = quantize_tflite_with_fallback(key, src, dst, config, ctx,
                                                   lambda p: budget.evaluate(p, layout), budget.max_drop, **kwargs)
    else:
        return step.fn(src, dst, config, ctx)
    if not fb.within:
        best = fb.chosen_try
        raise VariantNotKept(f"over its accuracy budget ({budget.text}): best metric {best.metric:.6g} "
                              f"with {len(best.excluded)} part(s) kept in float after {len(fb.tries)} tries"
                              + ("; the export's max_minutes ended the search" if fb.stopped_at_deadline else ""))
    report.details["budget"] = budget.to_dict()
    if not fb.chosen_try.excluded:  # else the fallback's note states the budget
        report.notes.append(f"accuracy budget: {budget.text}; metric {fb.chosen_try.metric:.6g}")
    if report.details.get("quantized_nodes") == 0:
        raise VariantNotKept("nothing to quantize: no node of this model was quantized "
                              f"({'; '.join(report.notes) or 'no supported op'}); the FP32 artifact is the same model")
    return report
