"""Model step "distill": train a (pruned) student to match a teacher's outputs (knowledge distillation).

loss = alpha * KD(student, teacher) + (1 - alpha) * LABEL(student, labels)  (+ MSE of feature pairs)
KD is chosen from what the teacher's outputs are (see _distill_loss.py): KL with temperature for
logits, binary cross-entropy for sigmoid probabilities, cosine for normalised embeddings, MSE for
regression; `loss:` overrides it. Labels that do not fit the loss (e.g. f0 in Hz for a 360-bin
head) are left to the eval metric. BatchNorm layers train as usual by default ("train"; measured:
zoo CNN 70% pruned, 3 epochs: 98.3% top-1 vs 87.5% frozen); `batchnorm: freeze` keeps the running
statistics re-estimated after pruning (pitch CNN: 6.18 vs 6.37 cents, a small gain).
The teacher runs once over the data; its outputs are cached. The best student state by the eval
metric is kept: the user metric (`metric:`, FUNC(outputs, labels) -> float, higher is better),
else top-1 with class labels, else the label loss, else the distillation loss on eval data.
A student whose metric does not recover to the teacher's is reported with the numbers.
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
from edgeai.steps import _distill_loss as losses

log = logging.getLogger(__name__)

OPTIMIZERS = ("adamw", "adam", "sgd")
SCHEDULES = ("cosine", "constant")
BATCHNORM = ("train", "freeze")
RECOVERED = 0.9          # fraction of the teacher-student metric gap that distillation should close


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
    loss: str = "auto"                  # "auto" (from the teacher's outputs) | "kl" | "bce" | "cosine" | "mse"
    batchnorm: str = "train"            # "train": batch statistics, running ones updated | "freeze": running ones fixed
    metric: str | None = None           # "file.py:FUNC" | "module:FUNC", FUNC(outputs, labels) -> float, higher better


def _validate(config: DistillConfig) -> None:
    if config.optimizer not in OPTIMIZERS:
        raise UnknownNameError(f"distill: no optimizer named {config.optimizer!r}; known: {', '.join(OPTIMIZERS)}")
    if config.schedule not in SCHEDULES:
        raise UnknownNameError(f"distill: no schedule named {config.schedule!r}; known: {', '.join(SCHEDULES)}")
    if config.loss not in losses.LOSSES:
        raise UnknownNameError(f"distill: no loss named {config.loss!r}; known: {', '.join(losses.LOSSES)}")
    if config.batchnorm not in BATCHNORM:
        raise UnknownNameError(f"distill: no batchnorm mode {config.batchnorm!r}; known: {', '.join(BATCHNORM)}")
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


def _user_metric(config: DistillConfig, ctx: StepContext) -> Any:
    """The eval metric (edgeai.metrics: FUNC(outputs, labels) -> float, higher is better) or None:
    the step's own `metric:`, else the recipe's (ctx.extra["metric"])."""
    from edgeai.metrics import load_metric

    return load_metric(config.metric or ctx.extra.get("metric"))


def _output_name(model: Any, arrays: dict, dtype: Any) -> str:
    """The name the exported artifact gives the output distillation trains (the metric sees this name)."""
    import torch

    from edgeai.exporters import output_names

    with torch.no_grad():
        return output_names(model(**_batch(arrays, slice(0, 1), dtype)))[0][0]


def _outputs(model: Any, arrays: dict, n: int, bs: int, dtype: Any) -> Any:
    import torch

    model.eval()
    with torch.no_grad():
        return torch.cat([_first_tensor(model(**_batch(arrays, slice(s, s + bs), dtype))).float()
                          for s in range(0, n, bs)])


def _set_train(model: Any, batchnorm: str) -> None:
    """Training mode; with batchnorm="freeze" the BatchNorm layers keep (and use) their running statistics."""
    import torch

    model.train()
    if batchnorm == "freeze":
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.eval()


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
    metric = _user_metric(config, ctx)
    torch.manual_seed(config.seed)
    gen = torch.Generator().manual_seed(config.seed)
    model = copy.deepcopy(student)
    teacher, teacher_was_training = ctx.teacher, ctx.teacher.training
    teacher.eval()
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    bs = int(config.batch_size)
    start, cpu_start = time.monotonic(), time.process_time()

    pairs = [tuple(p) for p in config.feature_layers]
    s_feats = _Features(model, [s for s, _ in pairs]) if pairs else None
    t_feats = _Features(teacher, [t for _, t in pairs]) if pairs else None
    try:
        t_train, t_train_f = _teacher_pass(teacher, train_x, n, bs, dtype, t_feats)
        t_eval = _teacher_pass(teacher, eval_x, n_eval, bs, dtype, None)[0] if n_eval else None
        out_name = _output_name(teacher, train_x, dtype)
    finally:
        if t_feats:
            t_feats.close()
        teacher.train(teacher_was_training)
    choice = losses.chosen(config.loss, t_train, train_y if train_y is not None else eval_y, out_name)
    shape = tuple(t_train.shape)
    losses.check_labels(choice, shape, train_y, metric is not None)
    losses.check_labels(choice, shape, eval_y, metric is not None)
    adapters = _adapters(model, train_x, dtype, pairs, s_feats, t_feats, t_train_f)

    params = list(model.parameters()) + list(adapters.parameters())
    if config.optimizer == "sgd":
        opt = torch.optim.SGD(params, lr=config.lr, momentum=0.9, nesterov=True, weight_decay=config.weight_decay)
    else:
        cls = torch.optim.AdamW if config.optimizer == "adamw" else torch.optim.Adam
        opt = cls(params, lr=config.lr, weight_decay=config.weight_decay)
    total_steps = math.ceil(n / bs) * config.epochs
    sched = (torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total_steps) if config.schedule == "cosine"
             else torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0))
    train_labels = torch.as_tensor(train_y) if losses.labels_fit(choice, shape, train_y) else None
    alpha = config.alpha if train_labels is not None else 1.0
    scorer = losses.Scorer(metric, choice, t_eval, eval_y, out_name, config.temperature) if n_eval else None
    out_of_time = (lambda: config.max_minutes is not None and time.monotonic() - start > 60 * config.max_minutes)

    initial = scorer(_outputs(model, eval_x, n_eval, bs, dtype)) if scorer else math.inf
    best_metric, metric_name = initial, scorer.name if scorer else "train_loss"
    best_state, best_epoch, stale, epochs_run, history = copy.deepcopy(model.state_dict()), 0, 0, 0, []
    trained = 0                                   # samples the student was trained on, over all epochs
    checkpoint = ctx.extra.get("checkpoint")
    progress = _progress(config.epochs)
    task = progress.add_task("distill", total=config.epochs, info="") if progress else None
    if progress:
        progress.start()
    try:
        for epoch in range(1, config.epochs + 1):
            _set_train(model, config.batchnorm)
            order = torch.randperm(n, generator=gen)
            total, seen = 0.0, 0
            for s in range(0, n, bs):
                idx = order[s:s + bs]
                if len(idx) < 2 and n > 1:      # a single-sample batch breaks BatchNorm in train mode
                    continue
                out = _first_tensor(model(**_batch(train_x, idx.numpy(), dtype)))
                loss = alpha * losses.kd_loss(choice, out, t_train[idx], config.temperature)
                if train_labels is not None and alpha < 1.0:
                    loss = loss + (1 - alpha) * losses.label_loss(choice, out, train_labels[idx])
                for i, (sn, tn) in enumerate(pairs):
                    sf = _adapt(s_feats.values[sn], adapters[str(i)] if str(i) in adapters else None,
                                s_feats.channel_dim[sn])
                    loss = loss + torch.nn.functional.mse_loss(sf.float(), t_train_f[tn][idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                total, seen = total + float(loss.detach()) * len(idx), seen + len(idx)
                if out_of_time():
                    break
            epochs_run, trained = epoch, trained + seen
            train_loss = total / max(seen, 1)
            value = scorer(_outputs(model, eval_x, n_eval, bs, dtype)) if scorer else train_loss
            history.append({"epoch": epoch, "train_loss": round(train_loss, 5), metric_name: round(value, 5)})
            if scorer.better(value, best_metric) if scorer else value < best_metric:
                best_metric, best_epoch, stale = value, epoch, 0
                best_state = copy.deepcopy(model.state_dict())
                if checkpoint:
                    _save_checkpoint(checkpoint, best_state, epoch, value)
            else:
                stale += 1
            info = f"loss {train_loss:.4f}  {metric_name} {value:.4f}  best {best_metric:.4f}"
            if progress:
                progress.update(task, advance=1, info=info)
            else:
                log.info("distill epoch %d/%d: %s", epoch, config.epochs, info)
            if stale >= config.patience:
                log.info("distill: no improvement for %d epochs; stopping", stale)
                break
            if out_of_time():
                log.info("distill: max_minutes=%s reached; stopping", config.max_minutes)
                break
    finally:
        if progress:
            progress.stop()
        if s_feats:
            s_feats.close()
    model.load_state_dict(best_state)
    model.eval()

    teacher_metric = scorer(t_eval) if scorer and scorer.higher else None
    minutes, cpu_minutes = (time.monotonic() - start) / 60, (time.process_time() - cpu_start) / 60
    notes = [f"distillation loss: {choice.kind} ({choice.reason})",
             f"{epochs_run} epoch(s) on {n} samples in {minutes:.1f} min ({cpu_minutes:.1f} CPU min)"]
    if train_y is not None and train_labels is None:
        notes.append(f"training labels do not fit the {choice.kind} loss: used by the metric only")
    if train_labels is None:
        notes.append("trained on the teacher's outputs only (no labels used in the loss)")
    if out_of_time():
        notes.append(f"stopped at max_minutes={config.max_minutes:g} after {epochs_run} of {config.epochs} epoch(s)")
    if not n_eval:
        notes.append("no eval data: the best epoch was chosen by training loss")
    if best_epoch == 0:
        notes.append("distillation did not improve the student's eval metric; the input student is returned")
    recovered = _recovered(initial, best_metric, teacher_metric)
    if recovered is not None and recovered < RECOVERED:
        notes.append(f"the student did not recover: {metric_name} {initial:.4g} before distillation, "
                     f"{best_metric:.4g} after, teacher {teacher_metric:.4g} ({recovered:.0%} of the gap closed) "
                     f"with {n} training samples; give more training data, more epochs, or prune less")
        log.warning("distill: %s", notes[-1])
    details = {"loss": choice.kind, "loss_reason": choice.reason, "batchnorm": config.batchnorm,
               "epochs_run": epochs_run, "best_epoch": best_epoch, "metric": metric_name,
               "initial_metric": None if math.isinf(initial) else initial,
               "best_metric": best_metric, "teacher_metric": teacher_metric, "recovered": recovered,
               "seconds": round(60 * minutes, 2), "cpu_minutes": round(cpu_minutes, 3),
               "train_samples": n, "samples_trained": trained, "eval_samples": n_eval, "history": history}
    log.info("distill: %d epochs, %s loss, best %s %.4f at epoch %d (teacher %s)", epochs_run, choice.kind,
             metric_name, best_metric, best_epoch, teacher_metric)
    return model, StepReport("distill", config_to_dict(config), notes, details)


def _recovered(initial: float, best: float, teacher: float | None) -> float | None:
    """Fraction of the (teacher - initial) metric gap closed, or None when there is no gap to close."""
    if teacher is None or math.isinf(initial) or teacher - initial <= 1e-9 * max(abs(teacher), 1.0):
        return None
    return (best - initial) / (teacher - initial)


def _adapters(model: Any, train_x: dict, dtype: Any, pairs: list, s_feats: Any, t_feats: Any, t_train_f: dict) -> Any:
    """Linear maps from student to teacher feature widths, for feature pairs whose widths differ."""
    import torch

    adapters = torch.nn.ModuleDict()
    if not pairs:
        return adapters
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
    return adapters


MODEL_STEPS.add("distill", ModelStep(DistillConfig, distill))
