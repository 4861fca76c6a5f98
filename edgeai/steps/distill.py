"""Model step "distill": train a (pruned) student to match a teacher's outputs (knowledge distillation).

loss = alpha * T^2 * KL(softmax(teacher/T) || softmax(student/T)) + (1 - alpha) * CE(student, labels)
(+ the MSE of optional feature pairs). Without labels only the teacher's soft labels are used.
Outputs whose last dimension is 1, or float labels, are treated as regression (MSE instead of KL/CE).
The teacher runs once over the data; its outputs are cached. The best student state (by the eval
metric: top-1 with eval labels, else distillation loss on eval data, else training loss) is kept.
"""
from __future__ import annotations

import copy
import io
import logging
import math
import sys
import time
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from edgeai.errors import ConfigError, DataError, UnknownNameError
from edgeai.steps import MODEL_STEPS, ModelStep, StepContext, StepReport, config_to_dict

log = logging.getLogger(__name__)

OPTIMIZERS = ("adamw", "adam", "sgd")
SCHEDULES = ("cosine", "constant")


@dataclass(frozen=True)
class DistillConfig:
    """Knowledge distillation from ctx.teacher on ctx.train_data (early stopping on ctx.eval_data)."""

    epochs: int = 30
    lr: float = 1e-3
    batch_size: int = 64
    temperature: float = 4.0
    alpha: float = 0.7                  # weight of the KD loss; 1 - alpha weighs the label loss
    optimizer: str = "adamw"            # "adamw" | "adam" | "sgd"
    schedule: str = "cosine"            # "cosine" | "constant"
    weight_decay: float = 1e-4
    seed: int = 0
    patience: int = 5                   # epochs without eval improvement before stopping
    feature_layers: tuple[tuple[str, str], ...] = ()   # (student module, teacher module) pairs, MSE
    max_minutes: float | None = None


def _validate(config: DistillConfig) -> None:
    if config.optimizer not in OPTIMIZERS:
        raise UnknownNameError(f"distill: no optimizer named {config.optimizer!r}; known: {', '.join(OPTIMIZERS)}")
    if config.schedule not in SCHEDULES:
        raise UnknownNameError(f"distill: no schedule named {config.schedule!r}; known: {', '.join(SCHEDULES)}")
    for field, ok in (("epochs", config.epochs >= 1), ("batch_size", config.batch_size >= 1),
                      ("lr", config.lr > 0), ("temperature", config.temperature > 0),
                      ("alpha", 0.0 <= config.alpha <= 1.0), ("patience", config.patience >= 1)):
        if not ok:
            raise ConfigError(f"distill: {field}={getattr(config, field)} is out of range")


def _split(data: Mapping[str, Any] | None, names: list[str], what: str) -> tuple[dict, np.ndarray | None, int]:
    """(inputs, labels, N) from {input name: array (N, ...), optional "labels"}, with one-line errors."""
    if data is None:
        return {}, None, 0
    missing = [n for n in names if n not in data]
    if missing:
        raise DataError(f"distill: {what} lacks input(s) {missing}; it has {sorted(data)}")
    arrays = {n: np.asarray(data[n]) for n in names}
    labels = None if data.get("labels") is None else np.asarray(data["labels"])
    sizes = {n: a.shape[0] if a.ndim else 0 for n, a in arrays.items()}
    if labels is not None:
        sizes["labels"] = labels.shape[0] if labels.ndim else 0
    if len(set(sizes.values())) != 1:
        raise DataError(f"distill: {what} arrays have different lengths on axis 0: {sizes}")
    n = next(iter(sizes.values()))
    if n == 0:
        raise DataError(f"distill: {what} is empty; give at least one sample per input")
    for k, a in arrays.items():
        if a.dtype.kind == "f" and not np.isfinite(a).all():
            raise DataError(f"distill: {what} input {k!r} has NaN/Inf values; clean the data first")
    return arrays, labels, n


def _batch(arrays: dict, idx: Any, dtype: Any) -> dict:
    import torch

    out = {}
    for k, a in arrays.items():
        t = torch.from_numpy(np.ascontiguousarray(a[idx]))
        out[k] = t.to(dtype) if t.is_floating_point() else t
    return out


def _first_tensor(out: Any) -> Any:
    import torch

    leaves = [t for t in torch.utils._pytree.tree_leaves(out) if isinstance(t, torch.Tensor)]
    if not leaves:
        raise ConfigError("distill: the model returns no tensor")
    return leaves[0]


class _Features:
    """Forward hooks that keep the latest output of named modules (channel dim: 1 for convs, else last)."""

    def __init__(self, model: Any, names: list[str]):
        import torch.nn as nn

        self.values: dict[str, Any] = {}
        self.channel_dim: dict[str, int] = {}
        self.handles = []
        known = dict(model.named_modules())
        for n in names:
            if n not in known:
                import difflib

                close = difflib.get_close_matches(n, list(known), n=3)
                raise ConfigError(f"distill: feature layer {n!r} is not in the model"
                                  + (f"; did you mean {', '.join(close)}?" if close else ""))
            m = known[n]
            conv_like = isinstance(m, (nn.modules.conv._ConvNd, nn.modules.batchnorm._BatchNorm))
            self.channel_dim[n] = 1 if conv_like else -1
            self.handles.append(m.register_forward_hook(lambda mod, a, out, n=n: self.values.__setitem__(n, _first_tensor(out))))

    def close(self) -> None:
        for h in self.handles:
            h.remove()


def _teacher_pass(teacher: Any, arrays: dict, n: int, bs: int, dtype: Any, feats: _Features | None) -> tuple[Any, dict]:
    """Teacher outputs (and feature maps) for all samples, computed once."""
    import torch

    outs, fmaps = [], {}
    with torch.no_grad():
        for s in range(0, n, bs):
            out = _first_tensor(teacher(**_batch(arrays, slice(s, s + bs), dtype))).float()
            outs.append(out)
            for k, v in (feats.values.items() if feats else ()):
                fmaps.setdefault(k, []).append(v.detach().float())
    return torch.cat(outs), {k: torch.cat(v) for k, v in fmaps.items()}


def _is_regression(out: Any, labels: np.ndarray | None) -> bool:
    """Class labels have the output's shape minus its last (class) dim; regression targets its full shape."""
    shape = tuple(out.shape)
    if labels is None:
        return out.dim() == 1 or shape[-1] == 1
    if labels.shape[1:] == shape[1:] and (labels.dtype.kind == "f" or shape[-1] == 1):
        return True
    if labels.shape[1:] == shape[1:-1]:
        return False
    raise DataError(f"distill: labels of shape {labels.shape} fit neither the model's output {shape} "
                    f"(regression targets) nor its shape without the class dim (class ids)")


def _top1(logits: Any, labels: np.ndarray) -> float:
    import torch

    pred = logits.argmax(-1).reshape(-1)
    lab = torch.as_tensor(labels).reshape(-1).long()
    return float((pred == lab).float().mean())


def _kd_loss(s: Any, t: Any, temperature: float, regression: bool) -> Any:
    import torch.nn.functional as F

    if regression:
        return F.mse_loss(s.float(), t)
    s, t = s.float().reshape(-1, s.shape[-1]), t.reshape(-1, t.shape[-1])
    return F.kl_div(F.log_softmax(s / temperature, -1), F.log_softmax(t / temperature, -1),
                    reduction="batchmean", log_target=True) * temperature ** 2


def _label_loss(s: Any, labels: Any, regression: bool) -> Any:
    import torch.nn.functional as F

    if regression:
        return F.mse_loss(s.float().reshape(labels.shape), labels.float())
    return F.cross_entropy(s.float().reshape(-1, s.shape[-1]), labels.reshape(-1).long())


def _adapt(x: Any, adapter: Any, dim: int) -> Any:
    if adapter is None:
        return x
    return adapter(x.movedim(dim, -1)).movedim(-1, dim)


def _progress(total: int):
    """A rich progress bar on a terminal, else None (the loop logs instead)."""
    if not sys.stderr.isatty():
        return None
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("distill"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
                    TimeElapsedColumn(), console=Console(stderr=True), transient=False)


def _save_checkpoint(path: str, state: dict, epoch: int, metric: float) -> None:
    import torch

    from edgeai.fsutil import atomic_write_bytes

    buf = io.BytesIO()
    torch.save({"state_dict": state, "epoch": epoch, "metric": metric}, buf)
    atomic_write_bytes(path, buf.getvalue())


def distill(student: Any, example_inputs: Mapping[str, Any], config: DistillConfig,
            ctx: StepContext | None = None) -> tuple[Any, StepReport]:
    """Train a copy of `student` against ctx.teacher; returns (best student, report)."""
    import torch

    _validate(config)
    ctx = ctx or StepContext()
    if ctx.teacher is None:
        raise DataError("distill: no teacher model; pass the original (unpruned) model as the teacher")
    if ctx.train_data is None:
        raise DataError("distill: no training data; give an .npz with one array per input (labels optional)")
    names = list(example_inputs)
    train_x, train_y, n = _split(ctx.train_data, names, "training data")
    eval_x, eval_y, n_eval = _split(ctx.eval_data, names, "eval data")
    torch.manual_seed(config.seed)
    gen = torch.Generator().manual_seed(config.seed)
    model = copy.deepcopy(student)
    teacher, teacher_was_training = ctx.teacher, ctx.teacher.training
    teacher.eval()
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    bs = int(config.batch_size)

    pairs = [tuple(p) for p in config.feature_layers]
    s_feats = _Features(model, [s for s, _ in pairs]) if pairs else None
    t_feats = _Features(teacher, [t for _, t in pairs]) if pairs else None
    try:
        t_train, t_train_f = _teacher_pass(teacher, train_x, n, bs, dtype, t_feats)
        t_eval = _teacher_pass(teacher, eval_x, n_eval, bs, dtype, None)[0] if n_eval else None
    finally:
        if t_feats:
            t_feats.close()
        teacher.train(teacher_was_training)
    regression = _is_regression(t_train, train_y if train_y is not None else eval_y)
    adapters = torch.nn.ModuleDict()
    if pairs:
        with torch.no_grad():
            model.eval()
            model(**_batch(train_x, slice(0, 1), dtype))
        for i, (s, t) in enumerate(pairs):
            cs = s_feats.values[s].shape[s_feats.channel_dim[s]]
            ct = t_train_f[t].shape[t_feats.channel_dim[t]]
            if s_feats.values[s].shape[2:] != t_train_f[t].shape[2:] and s_feats.channel_dim[s] == 1:
                raise ConfigError(f"distill: feature maps of '{s}' {tuple(s_feats.values[s].shape[1:])} and "
                                  f"'{t}' {tuple(t_train_f[t].shape[1:])} differ in size; pair layers of equal resolution")
            if cs != ct:
                adapters[str(i)] = torch.nn.Linear(cs, ct).to(dtype)

    params = list(model.parameters()) + list(adapters.parameters())
    if config.optimizer == "sgd":
        opt = torch.optim.SGD(params, lr=config.lr, momentum=0.9, nesterov=True, weight_decay=config.weight_decay)
    else:
        cls = torch.optim.AdamW if config.optimizer == "adamw" else torch.optim.Adam
        opt = cls(params, lr=config.lr, weight_decay=config.weight_decay)
    steps_per_epoch = math.ceil(n / bs)
    total_steps = steps_per_epoch * config.epochs
    sched = (torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total_steps) if config.schedule == "cosine"
             else torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0))
    alpha = config.alpha if train_y is not None else 1.0
    train_labels = None if train_y is None else torch.as_tensor(train_y)

    def evaluate() -> tuple[float, str, bool]:
        """(metric, its name, higher is better) on eval data."""
        model.eval()
        outs = []
        with torch.no_grad():
            for s in range(0, n_eval, bs):
                outs.append(_first_tensor(model(**_batch(eval_x, slice(s, s + bs), dtype))).float())
        out = torch.cat(outs)
        if eval_y is not None and not regression:
            return _top1(out, eval_y), "top1", True
        if eval_y is not None:
            return float(_label_loss(out, torch.as_tensor(eval_y), True)), "mse", False
        return float(_kd_loss(out, t_eval, config.temperature, regression)), "kd_loss", False

    start = time.monotonic()
    best_metric, metric_name, higher = (evaluate() if n_eval else (math.inf, "train_loss", False))
    initial_metric = best_metric
    best_state, best_epoch, stale, epochs_run, history = copy.deepcopy(model.state_dict()), 0, 0, 0, []
    checkpoint = ctx.extra.get("checkpoint")
    progress = _progress(config.epochs)
    task = progress.add_task("distill", total=config.epochs, info="") if progress else None
    if progress:
        progress.start()
    try:
        for epoch in range(1, config.epochs + 1):
            model.train()
            order = torch.randperm(n, generator=gen)
            total = 0.0
            for s in range(0, n, bs):
                idx = order[s:s + bs]
                if len(idx) < 2 and n > 1:      # a single-sample batch breaks BatchNorm in train mode
                    continue
                out = _first_tensor(model(**_batch(train_x, idx.numpy(), dtype)))
                loss = alpha * _kd_loss(out, t_train[idx], config.temperature, regression)
                if train_labels is not None and alpha < 1.0:
                    loss = loss + (1 - alpha) * _label_loss(out, train_labels[idx], regression)
                for i, (sn, tn) in enumerate(pairs):
                    sf = _adapt(s_feats.values[sn], adapters[str(i)] if str(i) in adapters else None,
                                s_feats.channel_dim[sn])
                    loss = loss + torch.nn.functional.mse_loss(sf.float(), t_train_f[tn][idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                total += float(loss.detach()) * len(idx)
            epochs_run = epoch
            train_loss = total / n
            metric = evaluate()[0] if n_eval else train_loss
            history.append({"epoch": epoch, "train_loss": round(train_loss, 5), metric_name: round(metric, 5)})
            improved = metric > best_metric if higher else metric < best_metric
            if improved:
                best_metric, best_epoch, stale = metric, epoch, 0
                best_state = copy.deepcopy(model.state_dict())
                if checkpoint:
                    _save_checkpoint(checkpoint, best_state, epoch, metric)
            else:
                stale += 1
            info = f"loss {train_loss:.4f}  {metric_name} {metric:.4f}  best {best_metric:.4f}"
            if progress:
                progress.update(task, advance=1, info=info)
            else:
                log.info("distill epoch %d/%d: %s", epoch, config.epochs, info)
            if stale >= config.patience:
                log.info("distill: no improvement for %d epochs; stopping", stale)
                break
            if config.max_minutes is not None and time.monotonic() - start > 60 * config.max_minutes:
                log.info("distill: max_minutes=%s reached; stopping", config.max_minutes)
                break
    finally:
        if progress:
            progress.stop()
        if s_feats:
            s_feats.close()
    model.load_state_dict(best_state)
    model.eval()

    teacher_metric = None
    if eval_y is not None and not regression:
        teacher_metric = _top1(t_eval, eval_y)
    elif train_y is not None and not regression:
        teacher_metric = _top1(t_train, train_y)
    notes = []
    if train_y is None:
        notes.append("no training labels: trained on the teacher's soft labels only")
    if not n_eval:
        notes.append("no eval data: the best epoch was chosen by training loss")
    if best_epoch == 0:
        notes.append("distillation did not improve the student's eval metric; the input student is returned")
    details = {"epochs_run": epochs_run, "best_epoch": best_epoch, "metric": metric_name,
               "initial_metric": None if math.isinf(initial_metric) else initial_metric,
               "best_metric": best_metric, "teacher_metric": teacher_metric,
               "seconds": round(time.monotonic() - start, 2), "train_samples": n, "eval_samples": n_eval,
               "history": history}
    log.info("distill: %d epochs, best %s %.4f at epoch %d (teacher %s)", epochs_run, metric_name,
             best_metric, best_epoch, teacher_metric)
    return model, StepReport("distill", config_to_dict(config), notes, details)


MODEL_STEPS.add("distill", ModelStep(DistillConfig, distill))
