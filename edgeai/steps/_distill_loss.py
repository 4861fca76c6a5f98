"""Which distillation loss fits a teacher's outputs, the losses themselves, and how the student is scored (torch, lazily).

What the teacher's outputs on the training data look like decides the loss:
- rows of values in [0, 1] summing to 1: softmax probabilities -> "kl" on their logs
- rows of unit L2 norm: normalised embeddings -> "cosine" (1 - cosine similarity), also when a
  ReLU before the normalisation keeps them in [0, 1]
- values in [0, 1] otherwise: sigmoid / multi-label probabilities -> "bce" against the teacher's
  probabilities (KL over softmax(p / T) of probabilities is a near-uniform target with no signal)
- one value per sample, or float labels of the output's shape: regression -> "mse"
- an output named as hidden states (Hugging Face `last_hidden_state`, `pooler_output`): features -> "mse"
  (a softmax over hidden units is no distribution, and KL ignores a shift of each row)
- anything else with a class dimension: logits -> "kl" with temperature T
`loss: kl|bce|cosine|mse` in the distill config overrides the detection.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from edgeai.errors import DataError

LOSSES = ("auto", "kl", "bce", "cosine", "mse")
UNIT_NORM_TOLERANCE = 1e-3
EPS = 1e-7
FEATURE_OUTPUTS = ("last_hidden_state", "pooler_output", "hidden_states")   # Hugging Face feature outputs


@dataclass(frozen=True)
class LossChoice:
    kind: str                    # "kl" | "bce" | "cosine" | "mse"
    reason: str                  # why, for the report
    log_probs: bool = False      # "kl" on softmax probabilities: their logs are the logits


def detect(teacher_out: Any, labels: np.ndarray | None, output_name: str = "") -> LossChoice:
    """The loss that fits `teacher_out` (N, ..., C) (teacher outputs on the training data, output `output_name`)."""
    t = teacher_out.float()
    if t.dim() < 2 or t.shape[-1] == 1:
        return LossChoice("mse", "one value per sample: regression")
    rows = t.reshape(-1, t.shape[-1])
    if output_name in FEATURE_OUTPUTS and float((rows.norm(dim=-1) - 1).abs().max()) >= UNIT_NORM_TOLERANCE:
        return LossChoice("mse", f"output {output_name!r} holds hidden states: features, matched value for value")
    in_unit_interval = float(rows.min()) >= 0.0 and float(rows.max()) <= 1.0
    if in_unit_interval and float((rows.sum(-1) - 1).abs().max()) < UNIT_NORM_TOLERANCE:
        return LossChoice("kl", "rows are probabilities summing to 1 (softmax): KL on their logs", True)
    if float((rows.norm(dim=-1) - 1).abs().max()) < UNIT_NORM_TOLERANCE:   # before bce: ReLU'd embeddings are >= 0
        return LossChoice("cosine", "rows have unit L2 norm: normalised embeddings, matched by cosine")
    if in_unit_interval:
        return LossChoice("bce", "values in [0, 1] whose rows do not sum to 1: sigmoid (multi-label) "
                                 "probabilities, matched with binary cross-entropy")
    if labels is not None and labels.dtype.kind == "f" and labels.shape[1:] == tuple(t.shape[1:]):
        return LossChoice("mse", "float labels of the output's shape: regression")
    return LossChoice("kl", "unbounded rows with a class dimension: logits, KL with temperature")


def chosen(name: str, teacher_out: Any, labels: np.ndarray | None, output_name: str = "") -> LossChoice:
    """`name` ("auto" detects); a forced "kl" still takes logs of softmax probabilities."""
    auto = detect(teacher_out, labels, output_name)
    if name == "auto":
        return auto
    return LossChoice(name, "set in the config", log_probs=name == "kl" and auto.log_probs)


def labels_fit(choice: LossChoice, out_shape: tuple, labels: np.ndarray | None) -> bool:
    """Whether `labels` can train the student directly with this loss (class ids for kl, targets otherwise)."""
    if labels is None:
        return False
    if choice.kind == "kl":
        return labels.dtype.kind in "iu" and labels.shape[1:] == tuple(out_shape[1:-1])
    return labels.shape[1:] == tuple(out_shape[1:]) and labels.dtype.kind in "fiu"


def kd_loss(choice: LossChoice, s: Any, t: Any, temperature: float) -> Any:
    """Student output `s` against teacher output `t`."""
    import torch
    import torch.nn.functional as F

    s = s.float()
    if choice.kind == "mse":
        return F.mse_loss(s.reshape(t.shape), t)
    if choice.kind == "bce":
        return F.binary_cross_entropy(s.clamp(EPS, 1 - EPS), t)
    if choice.kind == "cosine":
        return 1 - F.cosine_similarity(s.reshape(-1, s.shape[-1]), t.reshape(-1, t.shape[-1]), dim=-1).mean()
    s, t = s.reshape(-1, s.shape[-1]), t.reshape(-1, t.shape[-1])
    if choice.log_probs:
        s, t = torch.log(s.clamp_min(EPS)), torch.log(t.clamp_min(EPS))
    return F.kl_div(F.log_softmax(s / temperature, -1), F.log_softmax(t / temperature, -1),
                    reduction="batchmean", log_target=True) * temperature ** 2


def label_loss(choice: LossChoice, s: Any, labels: Any) -> Any:
    """Student output `s` against labels that fit (see labels_fit)."""
    import torch
    import torch.nn.functional as F

    s = s.float()
    if choice.kind == "kl":
        s = s.reshape(-1, s.shape[-1])
        y = labels.reshape(-1).long()
        return F.nll_loss(torch.log(s.clamp_min(EPS)), y) if choice.log_probs else F.cross_entropy(s, y)
    return kd_loss(choice, s, labels.float(), 1.0)


def top1(logits: Any, labels: np.ndarray) -> float:
    import torch

    pred = logits.argmax(-1).reshape(-1)
    lab = torch.as_tensor(labels).reshape(-1).long()
    return float((pred == lab).float().mean())


class Scorer:
    """Scores outputs on the eval data: (value, name, higher is better), with the same rule for teacher and student."""

    def __init__(self, metric: Any, choice: LossChoice, t_eval: Any, eval_y: np.ndarray | None,
                 output_name: str, temperature: float):
        self.metric, self.choice, self.t_eval, self.eval_y = metric, choice, t_eval, eval_y
        self.output_name, self.temperature = output_name, temperature
        if metric is not None:
            self.name, self.higher = metric.name, True
        elif eval_y is not None and choice.kind == "kl" and labels_fit(choice, tuple(t_eval.shape), eval_y):
            self.name, self.higher = "top1", True
        elif labels_fit(choice, tuple(t_eval.shape), eval_y):
            self.name, self.higher = choice.kind, False      # the loss to the eval labels
        else:
            self.name, self.higher = "kd_loss", False

    def __call__(self, out: Any) -> float:
        import torch

        if self.metric is not None:
            return self.metric({self.output_name: out.numpy()}, self.eval_y) + 0.0   # + 0.0: no -0.0
        if self.name == "top1":
            return top1(out, self.eval_y)
        if self.name == "kd_loss":
            return float(kd_loss(self.choice, out, self.t_eval, self.temperature))
        return float(label_loss(self.choice, out, torch.as_tensor(self.eval_y)))

    def better(self, a: float, b: float) -> bool:
        return a > b if self.higher else a < b


def check_labels(choice: LossChoice, shape: tuple, labels: np.ndarray | None, scorer_uses: bool) -> None:
    if labels is None or scorer_uses or labels_fit(choice, shape, labels):
        return
    raise DataError(f"distill: labels of shape {labels.shape} ({labels.dtype}) fit neither the model's output "
                    f"{shape} as {'class ids' if choice.kind == 'kl' else 'targets'} for the {choice.kind} loss; "
                    f"give labels that do, or a metric (metric: FILE.py:FUNC) that reads them")
