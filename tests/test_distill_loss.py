"""The distillation loss follows the teacher's outputs (logits, sigmoid probabilities, embeddings, regression)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from edgeai.errors import DataError, UnknownNameError
from edgeai.steps import StepContext
from edgeai.steps import _distill_loss as losses
from edgeai.steps.distill import DistillConfig, distill

torch.set_num_threads(1)


class Head(nn.Module):
    """MLP with a chosen output: "logits", "softmax", "sigmoid" (multi-bin), "embedding" / "relu-embedding"
    (unit norm), "scalar"."""

    def __init__(self, kind: str, hidden: int = 64, out: int = 40):
        super().__init__()
        self.kind = kind
        self.f = nn.Sequential(nn.Linear(16, hidden), nn.BatchNorm1d(hidden), nn.ReLU(),
                               nn.Linear(hidden, 1 if kind == "scalar" else out))

    def forward(self, x):
        y = self.f(x)
        if self.kind == "softmax":
            return y.softmax(-1)
        if self.kind == "sigmoid":
            return torch.sigmoid(6 * y - 6)          # mostly-off bins, a few on: a pitch-style head
        if self.kind == "embedding":
            return F.normalize(y, dim=-1)
        if self.kind == "relu-embedding":             # a speaker encoder's normalize(relu(proj(h))): in [0, 1]
            return F.normalize(F.relu(y), dim=-1)
        return y


def _task(kind, n_train=1500, n_eval=300):
    torch.manual_seed(0)
    teacher = Head(kind).eval()
    x = np.random.default_rng(0).standard_normal((n_train + n_eval, 16)).astype(np.float32)
    with torch.no_grad():
        teacher.f[1].running_mean.uniform_(-0.3, 0.3)
    return teacher, {"x": x[:n_train]}, {"x": x[n_train:]}


def _cosine_gap(student, teacher, data):
    """1 - mean cosine similarity of the student's and the teacher's outputs."""
    x = torch.from_numpy(data["x"])
    with torch.no_grad():
        return 1 - float(F.cosine_similarity(student(x), teacher(x), dim=-1).mean())


@pytest.mark.parametrize("kind,loss,log_probs", [("logits", "kl", False), ("softmax", "kl", True),
                                                 ("sigmoid", "bce", False), ("embedding", "cosine", False),
                                                 ("relu-embedding", "cosine", False),
                                                 ("scalar", "mse", False)])
def test_loss_is_detected_from_the_teachers_outputs(kind, loss, log_probs):
    teacher, train, _ = _task(kind)
    with torch.no_grad():
        out = teacher(torch.from_numpy(train["x"]))
    choice = losses.detect(out, None)
    assert (choice.kind, choice.log_probs) == (loss, log_probs)


def test_float_labels_of_the_output_shape_make_unbounded_outputs_regression():
    out = torch.randn(10, 3) * 5
    assert losses.detect(out, np.zeros((10, 3), np.float32)).kind == "mse"
    assert losses.detect(out, np.zeros(10, np.int64)).kind == "kl"


def test_sigmoid_head_is_distilled_with_bce_and_gets_far_closer_than_kl():
    """The issue's failure: KL over softmax(p / T) of sigmoid probabilities is a near-uniform target."""
    teacher, train, evald = _task("sigmoid")
    gaps = {}
    for loss in ("auto", "kl"):
        torch.manual_seed(1)
        student = Head("sigmoid", hidden=24)
        out, rep = distill(student, {"x": torch.zeros(1)}, DistillConfig(epochs=6, lr=1e-2, loss=loss),
                           StepContext(teacher=teacher, train_data=train, eval_data=evald))
        gaps[loss] = (_cosine_gap(out, teacher, evald), rep)
    rep = gaps["auto"][1]
    assert rep.details["loss"] == "bce" and "sigmoid" in rep.details["loss_reason"]
    assert any(n.startswith("distillation loss: bce") for n in rep.notes)
    assert gaps["kl"][1].details["loss"] == "kl" and gaps["kl"][1].details["loss_reason"] == "set in the config"
    assert gaps["auto"][0] < 0.6 * gaps["kl"][0], (gaps["auto"][0], gaps["kl"][0])    # measured 0.087 vs 0.189


def test_normalised_embeddings_are_distilled_with_cosine():
    teacher, train, evald = _task("embedding")
    torch.manual_seed(1)
    out, rep = distill(Head("embedding", hidden=32), {"x": torch.zeros(1)}, DistillConfig(epochs=8, lr=1e-2),
                       StepContext(teacher=teacher, train_data=train, eval_data=evald))
    gap = _cosine_gap(out, teacher, evald)
    assert rep.details["loss"] == "cosine" and rep.details["metric"] == "kd_loss"
    assert rep.details["best_metric"] == pytest.approx(gap, abs=1e-4)
    assert gap < 0.3 * rep.details["initial_metric"], (gap, rep.details["initial_metric"])


def test_loss_override_is_used_and_unknown_loss_names_the_known_ones():
    teacher, train, evald = _task("sigmoid", 200, 50)
    _, rep = distill(Head("sigmoid", 24), {"x": torch.zeros(1)}, DistillConfig(epochs=1, loss="mse"),
                     StepContext(teacher=teacher, train_data=train, eval_data=evald))
    assert rep.details["loss"] == "mse"
    with pytest.raises(UnknownNameError, match="known: auto, kl, bce, cosine, mse"):
        distill(teacher, {"x": torch.zeros(1)}, DistillConfig(loss="huber"), StepContext())


def test_batchnorm_statistics_update_in_train_mode_and_stay_frozen_when_asked():
    assert DistillConfig().batchnorm == "auto"  # chosen by a screen: tests/test_distill_auto.py
    teacher, train, evald = _task("logits", 300, 50)
    stats = {}
    for mode in ("train", "freeze"):
        student = Head("logits")
        student.load_state_dict(teacher.state_dict())
        cfg = DistillConfig(epochs=1, batchnorm=mode)
        out, rep = distill(student, {"x": torch.zeros(1)}, cfg, StepContext(teacher=teacher, train_data=train))
        stats[rep.details["batchnorm"]] = float((out.f[1].running_mean - teacher.f[1].running_mean).abs().max())
    assert stats["freeze"] == 0.0 and stats["train"] > 0.01


def _cents_like_metric(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("import numpy as np\n"
                 "def peak_error(outputs, labels):\n"
                 "    out = next(iter(outputs.values()))\n"
                 "    return -float(np.abs(out.argmax(1) - labels).mean())\n")
    return f"{f}:peak_error"


def test_user_metric_drives_early_stopping_and_labels_that_only_it_reads_are_accepted(tmp_path):
    teacher, train, evald = _task("sigmoid")
    with torch.no_grad():                                    # labels: a float per sample (like f0 in Hz)
        for d in (train, evald):
            d["labels"] = teacher(torch.from_numpy(d["x"])).argmax(1).numpy().astype(np.float32)
    torch.manual_seed(1)
    cfg = DistillConfig(epochs=6, lr=1e-2, metric=_cents_like_metric(tmp_path))
    out, rep = distill(Head("sigmoid", 24), {"x": torch.zeros(1)}, cfg,
                       StepContext(teacher=teacher, train_data=train, eval_data=evald))
    d = rep.details
    assert d["metric"] == "peak_error" and d["teacher_metric"] == 0.0
    assert d["best_metric"] == max(h["peak_error"] for h in d["history"]) > d["initial_metric"]
    assert any("used by the metric only" in n for n in rep.notes)
    with pytest.raises(DataError, match="fit neither"):
        distill(Head("sigmoid", 24), {"x": torch.zeros(1)}, DistillConfig(epochs=1),
                StepContext(teacher=teacher, train_data=train, eval_data=evald))


def test_a_student_that_does_not_recover_is_reported_with_before_and_after_metric(tmp_path):
    teacher, train, evald = _task("sigmoid", 300, 100)
    with torch.no_grad():
        for d in (train, evald):
            d["labels"] = teacher(torch.from_numpy(d["x"])).argmax(1).numpy().astype(np.float32)
    torch.manual_seed(1)
    cfg = DistillConfig(epochs=2, lr=1e-5, metric=_cents_like_metric(tmp_path))
    _, rep = distill(Head("sigmoid", 24), {"x": torch.zeros(1)}, cfg,
                     StepContext(teacher=teacher, train_data=train, eval_data=evald))
    d = rep.details
    assert d["recovered"] < 0.9
    note = next(n for n in rep.notes if n.startswith("the student did not recover"))
    assert f"{d['initial_metric']:.4g} before distillation" in note and "teacher 0" in note and "300 training" in note


def sigmoid_head():
    torch.manual_seed(0)
    return Head("sigmoid").eval()


def test_the_recipes_metric_scores_distillation_in_the_pipeline(tmp_path):
    import edgeai
    from edgeai.recipe import DataConfig, SummaryConfig

    _, train, evald = _task("sigmoid", 600, 200)
    teacher = sigmoid_head()                        # what the pipeline loads
    with torch.no_grad():
        for d in (train, evald):
            d["labels"] = teacher(torch.from_numpy(d["x"])).argmax(1).numpy().astype(np.float32)
    np.savez(tmp_path / "train.npz", **train)
    np.savez(tmp_path / "eval.npz", **evald)
    out = edgeai.export("tests.test_distill_loss:sigmoid_head", tmp_path / "out", inputs=["x:batch,16"],
                        steps=({"prune": {"ratio": 0.5, "round_to": 8}}, {"distill": {"epochs": 2}}),
                        metric=_cents_like_metric(tmp_path), summary=SummaryConfig(bench=False),
                        data=DataConfig(train=str(tmp_path / "train.npz"), eval=str(tmp_path / "eval.npz")))
    fp32 = next(a for a in out.artifacts if a.name == "fp32")
    d = next(s for s in fp32.steps if s["type"] == "model.distill")["details"]
    assert d["metric"] == "peak_error" and d["loss"] == "bce" and d["teacher_metric"] == 0.0
    assert fp32.metrics["peak_error"] == pytest.approx(d["best_metric"], abs=1e-6)   # same metric on the artifact
