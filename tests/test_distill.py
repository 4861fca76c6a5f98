"""Knowledge distillation of pruned students (CNN, LSTM, two-input Transformer) on teacher-labelled data."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from edgeai.errors import DataError, UnknownNameError
from edgeai.steps import StepContext
from edgeai.steps.distill import DistillConfig, distill
from edgeai.steps.prune import PruneConfig, prune

torch.set_num_threads(1)


class SmallCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.f = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
                               nn.Conv2d(32, 64, 3, padding=1, stride=2), nn.BatchNorm2d(64), nn.ReLU(),
                               nn.Conv2d(64, 64, 3, padding=1, stride=2), nn.BatchNorm2d(64), nn.ReLU())
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        return self.fc(self.f(x).mean((2, 3)))


class SmallLSTM(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb, self.rnn, self.fc = nn.Embedding(30, 16), nn.LSTM(16, 64, batch_first=True), nn.Linear(64, 6)

    def forward(self, ids):
        return self.fc(self.rnn(self.emb(ids))[0][:, -1])


class Attn(nn.Module):
    """timm-style attention (qkv, proj, num_heads) whose forward reshapes with -1."""

    def __init__(self, dim, heads):
        super().__init__()
        self.num_heads, self.qkv, self.proj = heads, nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)

    def forward(self, x):
        b, n, _ = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        return self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, -1))


class TwoInputEncoder(nn.Module):
    """Token ids (int64) and a float padding mask into one attention + MLP block."""

    def __init__(self, dim=64, heads=4):
        super().__init__()
        self.emb, self.attn = nn.Embedding(40, dim), Attn(dim, heads)
        self.fc1, self.fc2, self.head = nn.Linear(dim, 4 * dim), nn.Linear(4 * dim, dim), nn.Linear(dim, 4)

    def forward(self, ids, mask):
        x = self.emb(ids)
        x = x + self.attn(x)
        x = x + self.fc2(F.gelu(self.fc1(x)))
        return self.head((x * mask[..., None]).sum(1) / mask.sum(1, keepdim=True))


def _balanced_teacher(model, x):
    """Centre the logits so the teacher's argmax labels use every class."""
    with torch.no_grad():
        logits = model(**x)
        model.head.bias -= logits.mean(0) if hasattr(model, "head") else 0
    return model


def _cnn_task(n_train=2000, n_eval=500):
    """10 noisy class templates; the teacher is trained on them for 3 epochs (~1 s)."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    templates = rng.standard_normal((10, 3, 8, 8)).astype(np.float32)
    y = rng.integers(0, 10, n_train + n_eval)
    x = (0.6 * templates[y] + rng.standard_normal((n_train + n_eval, 3, 8, 8))).astype(np.float32)
    teacher = SmallCNN()
    opt = torch.optim.Adam(teacher.parameters(), 3e-3)
    xt, yt = torch.from_numpy(x[:n_train]), torch.from_numpy(y[:n_train])
    for _ in range(3):
        order = torch.randperm(n_train)
        for s in range(0, n_train, 64):
            idx = order[s:s + 64]
            loss = F.cross_entropy(teacher(xt[idx]), yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    train = {"x": x[:n_train], "labels": y[:n_train]}
    evald = {"x": x[n_train:], "labels": y[n_train:]}
    return teacher.eval(), train, evald


def _top1(model, data):
    inputs = {k: torch.from_numpy(v) for k, v in data.items() if k != "labels"}
    with torch.no_grad():
        return float((model(**inputs).argmax(-1).numpy() == data["labels"]).mean())


def test_distillation_brings_a_pruned_cnn_back_towards_the_teacher(tmp_path):
    teacher, train, evald = _cnn_task()
    acc_teacher = _top1(teacher, evald)
    student, rep = prune(teacher, {"x": torch.from_numpy(train["x"][:4])}, PruneConfig(ratio=0.75))
    assert rep.details["achieved_ratio"] > 0.72
    acc_pruned = _top1(student, evald)
    assert acc_teacher > 0.95 and acc_pruned < acc_teacher - 0.2, (acc_teacher, acc_pruned)
    student_state = copy.deepcopy(student.state_dict())
    ckpt = tmp_path / "best.pt"
    ctx = StepContext(teacher=teacher, train_data=train, eval_data=evald, extra={"checkpoint": str(ckpt)})
    out, rep = distill(student, {"x": torch.zeros(1)}, DistillConfig(epochs=3, lr=3e-3), ctx)
    d = rep.details
    acc = _top1(out, evald)
    assert acc == pytest.approx(d["best_metric"], abs=1e-6)     # the returned model is the best epoch
    assert d["teacher_metric"] == pytest.approx(acc_teacher, abs=1e-6)
    assert d["initial_metric"] == pytest.approx(acc_pruned, abs=1e-6)
    assert acc >= acc_teacher - 0.03, (acc_teacher, acc_pruned, acc)
    saved = torch.load(ckpt, weights_only=True)
    assert saved["epoch"] == d["best_epoch"] >= 1
    assert all(torch.equal(saved["state_dict"][k], v) for k, v in out.state_dict().items())
    assert all(torch.equal(student_state[k], v) for k, v in student.state_dict().items())   # input untouched


def test_pruning_with_training_data_re_estimates_batchnorm_and_keeps_more_accuracy():
    teacher, train, evald = _cnn_task()
    example = {"x": torch.from_numpy(train["x"][:4])}
    plain, rep_plain = prune(teacher, example, PruneConfig(ratio=0.75))
    recal, rep = prune(teacher, example, PruneConfig(ratio=0.75), StepContext(train_data=train))
    assert rep.details["bn_recalibration_samples"] == 512 and rep_plain.details["bn_recalibration_samples"] == 0
    assert any("not re-estimated" in n for n in rep_plain.notes)
    assert _top1(recal, evald) > _top1(plain, evald) + 0.2             # measured 0.49 -> 0.93
    assert rep.details["macs_after"] == rep_plain.details["macs_after"]


def test_distillation_of_an_lstm_on_integer_inputs_without_labels_uses_soft_labels():
    torch.manual_seed(0)
    teacher = SmallLSTM().eval()
    ids = torch.randint(0, 30, (1200, 12), generator=torch.Generator().manual_seed(0)).numpy()
    student, _ = prune(teacher, {"ids": torch.from_numpy(ids[:4])}, PruneConfig(ratio=0.6))
    assert student.rnn.hidden_size < 64
    ctx = StepContext(teacher=teacher, train_data={"ids": ids[:1000]}, eval_data={"ids": ids[1000:]})
    out, rep = distill(student, {"ids": torch.from_numpy(ids[:2])}, DistillConfig(epochs=4, lr=3e-3), ctx)
    d = rep.details
    assert d["metric"] == "kd_loss" and d["best_metric"] < 0.7 * d["initial_metric"]
    assert any("teacher's outputs only" in n for n in rep.notes)
    with torch.no_grad():
        agree = (out(ids=torch.from_numpy(ids[1000:])).argmax(1) == teacher(ids=torch.from_numpy(ids[1000:])).argmax(1))
    assert float(agree.float().mean()) > 0.7


def test_distillation_with_two_named_inputs_and_a_feature_loss_improves_top1():
    torch.manual_seed(0)
    teacher = TwoInputEncoder().eval()
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 40, (1500, 10)).astype(np.int64)
    mask = np.ones((1500, 10), np.float32)
    mask[:, 7:] = rng.integers(0, 2, (1500, 3))
    _balanced_teacher(teacher, {"ids": torch.from_numpy(ids), "mask": torch.from_numpy(mask)})
    with torch.no_grad():
        labels = teacher(ids=torch.from_numpy(ids), mask=torch.from_numpy(mask)).argmax(1).numpy()
    example = {"ids": torch.from_numpy(ids[:2]), "mask": torch.from_numpy(mask[:2])}
    student, prep = prune(teacher, example, PruneConfig(ratio=0.85))
    assert student.fc1.out_features < 256 and student.attn.num_heads < 4
    train = {"ids": ids[:1200], "mask": mask[:1200], "labels": labels[:1200]}
    evald = {"ids": ids[1200:], "mask": mask[1200:], "labels": labels[1200:]}
    ctx = StepContext(teacher=teacher, train_data=train, eval_data=evald)
    cfg = DistillConfig(epochs=6, lr=2e-3, feature_layers=(("fc1", "fc1"),))   # widths differ: adapter
    out, rep = distill(student, example, cfg, ctx)
    assert rep.details["best_metric"] >= rep.details["initial_metric"] + 0.04   # measured 0.81 -> 0.88
    assert _top1(out, evald) == pytest.approx(rep.details["best_metric"], abs=1e-6)


def test_distillation_that_never_improves_returns_the_input_student_after_patience():
    teacher, train, evald = _cnn_task(400, 200)
    student, _ = prune(teacher, {"x": torch.from_numpy(train["x"][:4])}, PruneConfig(ratio=0.5))
    cfg = DistillConfig(epochs=10, lr=50.0, optimizer="sgd", patience=2, schedule="constant")
    out, rep = distill(student, {"x": torch.zeros(1)}, cfg, StepContext(teacher=teacher, train_data=train,
                                                                        eval_data=evald))
    assert rep.details["epochs_run"] == 2 and rep.details["best_epoch"] == 0
    assert all(torch.equal(student.state_dict()[k], v) for k, v in out.state_dict().items())
    assert any("did not improve" in n for n in rep.notes)


def test_distillation_stops_at_max_minutes():
    teacher, train, evald = _cnn_task(300, 100)
    out, rep = distill(teacher, {"x": torch.zeros(1)}, DistillConfig(epochs=50, max_minutes=1e-6),
                       StepContext(teacher=teacher, train_data=train))
    assert rep.details["epochs_run"] == 1


@pytest.mark.parametrize("ctx,error,match", [
    (StepContext(train_data={"x": np.zeros((4, 3, 8, 8), np.float32)}), DataError, "no teacher"),
    (StepContext(teacher=SmallCNN()), DataError, "no training data"),
    (StepContext(teacher=SmallCNN(), train_data={"x": np.zeros((0, 3, 8, 8), np.float32)}), DataError, "empty"),
    (StepContext(teacher=SmallCNN(), train_data={"x": np.zeros((4, 3, 8, 8), np.float32),
                                                 "labels": np.zeros(3)}), DataError, "different lengths"),
    (StepContext(teacher=SmallCNN(), train_data={"image": np.zeros((4, 3, 8, 8), np.float32)}), DataError,
     r"lacks input\(s\) \['x'\]"),
    (StepContext(teacher=SmallCNN(), train_data={"x": np.full((4, 3, 8, 8), np.nan, np.float32)}), DataError,
     "NaN"),
])
def test_distillation_with_bad_data_raises_data_error(ctx, error, match):
    with pytest.raises(error, match=match):
        distill(SmallCNN(), {"x": torch.zeros(1)}, DistillConfig(epochs=1), ctx)


def test_unknown_optimizer_is_named_with_the_known_ones():
    with pytest.raises(UnknownNameError, match="known: adamw, adam, sgd"):
        distill(SmallCNN(), {"x": torch.zeros(1)}, DistillConfig(optimizer="lion"), StepContext())


def test_float_targets_of_the_output_shape_are_distilled_as_regression():
    torch.manual_seed(0)
    teacher = nn.Sequential(nn.Linear(8, 64), nn.ReLU(), nn.Linear(64, 3)).eval()
    x = np.random.default_rng(0).standard_normal((600, 8)).astype(np.float32)
    with torch.no_grad():
        y = teacher(torch.from_numpy(x)).numpy()
    student = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    ctx = StepContext(teacher=teacher, train_data={"input": x[:500], "labels": y[:500]},
                      eval_data={"input": x[500:], "labels": y[500:]})
    out, rep = distill(student, {"input": torch.zeros(1)}, DistillConfig(epochs=5, lr=1e-2), ctx)
    assert rep.details["metric"] == "mse" and rep.details["best_metric"] < 0.5 * rep.details["initial_metric"]


def test_labels_that_fit_no_output_shape_raise_data_error():
    ctx = StepContext(teacher=SmallCNN(), train_data={"x": np.zeros((4, 3, 8, 8), np.float32),
                                                      "labels": np.zeros((4, 7), np.int64)})
    with pytest.raises(DataError, match="labels of shape"):
        distill(SmallCNN(), {"x": torch.zeros(1)}, DistillConfig(epochs=1), ctx)


def _zoo(name):
    import edgeai.zoo as zoo
    from edgeai.zoo import data as zoo_data

    ref = zoo.REFERENCE_MODELS[name]
    model = getattr(zoo, f"digits_{name}")()
    test = dict(np.load(ref.test_data))
    train = getattr(zoo_data, ref.train_data.split(":")[1])()
    key = next(k for k in test if k != "labels")
    return model, train, test, {key: torch.from_numpy(test[key][:2])}


@pytest.mark.parametrize("name,max_drop", [("lstm", 0.02), ("vit", 0.05)])
def test_zoo_model_pruned_by_half_recovers_its_accuracy_by_distillation(name, max_drop):
    """Measured: LSTM 0.972 -> pruned 0.621 -> distilled 0.967; ViT 0.981 -> 0.780 -> 0.953."""
    teacher, train, test, example = _zoo(name)
    acc_teacher = _top1(teacher, test)
    student, rep = prune(teacher, example, PruneConfig(ratio=0.5, round_to=8), StepContext(train_data=train))
    assert abs(rep.details["achieved_ratio"] - 0.5) < 0.03
    acc_pruned = _top1(student, test)
    out, drep = distill(student, example, DistillConfig(epochs=3, lr=2e-3),
                        StepContext(teacher=teacher, train_data=train, eval_data=test))
    acc = _top1(out, test)
    assert acc >= acc_teacher - max_drop and acc >= acc_pruned + 0.1, (acc_teacher, acc_pruned, acc)


@pytest.mark.slow
@pytest.mark.parametrize("allocation", ["macs", "uniform"])
def test_zoo_cnn_pruned_by_70_percent_of_macs_is_distilled_back_within_2_points(allocation):
    """Measured (3 epochs, ~20 s): 0.989 -> pruned+BN 0.37 (macs) / 0.30 (uniform) -> distilled 0.983 / 0.983."""
    teacher, train, test, example = _zoo("cnn")
    acc_teacher = _top1(teacher, test)
    student, rep = prune(teacher, example, PruneConfig(ratio=0.7, allocation=allocation),
                         StepContext(train_data=train))
    assert abs(rep.details["achieved_ratio"] - 0.7) < 0.02
    out, _ = distill(student, example, DistillConfig(epochs=3, lr=2e-3),
                     StepContext(teacher=teacher, train_data=train, eval_data=test))
    assert _top1(out, test) >= acc_teacher - 0.02
