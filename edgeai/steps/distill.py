"""Model step "distill": train a (pruned) student to match a teacher's outputs (knowledge distillation).

loss = alpha * KD(student, teacher) + (1 - alpha) * LABEL(student, labels)  (+ MSE of feature pairs)
KD is chosen from what the teacher's outputs are (see _distill_loss.py): KL with temperature for
logits, binary cross-entropy for sigmoid probabilities, cosine for normalised embeddings, MSE for
regression; `loss:` overrides it. Labels that do not fit the loss (e.g. f0 in Hz for a 360-bin
head) are left to the eval metric. BatchNorm: "auto" (default) screens "train" (batch statistics)
against "freeze" (the running statistics re-estimated after pruning) on the first batches and keeps
"freeze" only when its held-out distillation loss is clearly lower (_distill_bn.py). The learning rate:
"auto" (default, `lr` unset) screens 1e-3, 3e-4 and 1e-4 the same way (_distill_lr.py). With a time
limit the cosine schedule is fitted to end at it once a few batches are timed.
The teacher runs once over the data (float16 disk cache with ctx.extra["teacher_cache"]); training
uses every core and runs (k, 1) convolutions as Conv1d (_distill_data.py). The best student state by the eval
metric is kept: the user metric (`metric:`, FUNC(outputs, labels) -> float, higher is better),
else top-1 with class labels, else the label loss, else the distillation loss on eval data.
A student whose metric does not recover to the teacher's is reported with the numbers.
"""
from __future__ import annotations

import copy
import io
import logging
import math
import time
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any, Mapping

from edgeai.errors import ConfigError, DataError, UnknownNameError
from edgeai.progress import Meter
from edgeai.steps import MODEL_STEPS, ModelStep, StepContext, StepReport, config_to_dict
from edgeai.steps import _distill_bn as bn
from edgeai.steps import _distill_data as dd
from edgeai.steps import _distill_loss as losses
from edgeai.steps import _distill_lr as lrs
from edgeai.steps import _distill_screen as screens
from edgeai.steps._distill_features import Features, adapt, adapters as make_adapters

log = logging.getLogger(__name__)

OPTIMIZERS = ("adamw", "adam", "sgd")
SCHEDULES = ("cosine", "constant")
RECOVERED = 0.9          # fraction of the teacher-student metric gap that distillation should close


@dataclass(frozen=True)
class DistillConfig:
    """Knowledge distillation from ctx.teacher on ctx.train_data (early stopping on ctx.eval_data)."""

    epochs: int = 30
    lr: float | None = None             # None: "auto", screened on the first batches (see _distill_lr.py)
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
    batchnorm: str = "auto"             # "auto": measured (see _distill_bn.py) | "train": batch statistics | "freeze": running ones
    metric: str | None = None           # "file.py:FUNC" | "module:FUNC", FUNC(outputs, labels) -> float, higher better


def _validate(config: DistillConfig) -> None:
    if config.optimizer not in OPTIMIZERS:
        raise UnknownNameError(f"distill: no optimizer named {config.optimizer!r}; known: {', '.join(OPTIMIZERS)}")
    if config.schedule not in SCHEDULES:
        raise UnknownNameError(f"distill: no schedule named {config.schedule!r}; known: {', '.join(SCHEDULES)}")
    if config.loss not in losses.LOSSES:
        raise UnknownNameError(f"distill: no loss named {config.loss!r}; known: {', '.join(losses.LOSSES)}")
    if config.batchnorm not in bn.MODES:
        raise UnknownNameError(f"distill: no batchnorm mode {config.batchnorm!r}; known: {', '.join(bn.MODES)}")
    for field, ok in (("epochs", config.epochs >= 1), ("batch_size", config.batch_size >= 1),
                      ("lr", config.lr is None or config.lr > 0), ("temperature", config.temperature > 0),
                      ("alpha", 0.0 <= config.alpha <= 1.0), ("patience", config.patience >= 1)):
        if not ok:
            raise ConfigError(f"distill: {field}={getattr(config, field)} is out of range")


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
        return output_names(model(**dd.batch(arrays, slice(0, 1), dtype)))[0][0]


def distill(student: Any, example_inputs: Mapping[str, Any], config: DistillConfig,
            ctx: StepContext | None = None) -> tuple[Any, StepReport]:
    """Train a copy of `student` against ctx.teacher; returns (best student, report)."""
    _validate(config)
    ctx = ctx or StepContext()
    if ctx.teacher is None:
        raise DataError("distill: no teacher model; pass the original (unpruned) model as the teacher")
    if ctx.train_data is None:
        raise DataError("distill: no training data; give an .npz with one array per input (labels optional)")
    model = copy.deepcopy(student)
    with ExitStack() as stack:
        cores = stack.enter_context(dd.all_cores())
        convs = stack.enter_context(dd.conv_as_1d(model, ctx.teacher))
        model, report = _distill(model, list(example_inputs), config, ctx)
    report.details.update({"threads": cores, "conv_as_1d": convs})
    report.notes.append(f"trained on {cores} thread(s) at {report.details['train_samples_per_s']:.0f} samples/s"
                        + (f"; {convs} (k, 1) Conv2d layer(s) ran as Conv1d" if convs else ""))
    return model, report


def _distill(model: Any, names: list[str], config: DistillConfig, ctx: StepContext) -> tuple[Any, StepReport]:
    import torch

    start_t, cpu_start = time.monotonic(), time.process_time()
    deadline = ctx.extra.get("deadline")        # the export's wall (recipe max_minutes), time.time() seconds
    out_of_time = (lambda: (config.max_minutes is not None and time.monotonic() - start_t > 60 * config.max_minutes)
                   or (deadline is not None and time.time() > deadline))
    train_x, train_y, n_given = dd.split(ctx.train_data, names, "training data")
    eval_x, eval_y, n_eval = dd.split(ctx.eval_data, names, "eval data")
    metric = _user_metric(config, ctx)
    torch.manual_seed(config.seed)
    gen = torch.Generator().manual_seed(config.seed)
    teacher, teacher_was_training = ctx.teacher, ctx.teacher.training
    teacher.eval()
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    bs = int(config.batch_size)

    pairs = [tuple(p) for p in config.feature_layers]
    s_feats = Features(model, [s for s, _ in pairs]) if pairs else None
    t_feats = Features(teacher, [t for _, t in pairs]) if pairs else None
    t_start = time.monotonic()
    log.info("distill: the teacher's outputs on %d training and %d eval sample(s)", n_given, n_eval)
    try:
        if pairs:      # feature maps too: computed here, not cached on disk
            t_train, t_train_f, n = dd.teacher_pass(teacher, train_x, n_given, bs, dtype, t_feats, out_of_time)
            t_source = "computed"
        else:
            (t_train, n, t_source), t_train_f = dd.cached_teacher_pass(
                teacher, train_x, n_given, bs, dtype, ctx.extra.get("teacher_cache"), out_of_time), {}
        t_seconds = time.monotonic() - t_start
        if n_eval:
            t_eval, _, n_eval = dd.teacher_pass(teacher, eval_x, n_eval, bs, dtype, None, out_of_time)
            eval_x, eval_y = dd.take(eval_x, slice(0, n_eval)), None if eval_y is None else eval_y[:n_eval]
        else:
            t_eval = None
        out_name = _output_name(teacher, train_x, dtype)
    finally:
        if t_feats:
            t_feats.close()
        teacher.train(teacher_was_training)
    if n < n_given:
        train_x, train_y = dd.take(train_x, slice(0, n)), None if train_y is None else train_y[:n]
    choice = losses.chosen(config.loss, t_train, train_y if train_y is not None else eval_y, out_name)
    shape = tuple(t_train.shape)
    losses.check_labels(choice, shape, train_y, metric is not None)
    losses.check_labels(choice, shape, eval_y, metric is not None)
    state = torch.nn.ModuleDict({"model": model, "adapters": make_adapters(model, train_x, dtype, pairs, s_feats,
                                                                          t_feats, t_train_f)})
    total_steps = math.ceil(n / bs) * config.epochs

    plan = {"total": total_steps}        # the cosine schedule's steps; fitted to the wall once batches are timed

    def make_opt(st: Any, lr: float) -> tuple[Any, Any]:
        params = list(st.parameters())
        if config.optimizer == "sgd":
            o = torch.optim.SGD(params, lr=lr, momentum=0.9, nesterov=True, weight_decay=config.weight_decay)
        else:
            cls = torch.optim.AdamW if config.optimizer == "adamw" else torch.optim.Adam
            o = cls(params, lr=lr, weight_decay=config.weight_decay)
        return o, torch.optim.lr_scheduler.LambdaLR(o, lrs.cosine(plan) if config.schedule == "cosine"
                                                    else (lambda _: 1.0))

    train_labels = torch.as_tensor(train_y) if losses.labels_fit(choice, shape, train_y) else None
    alpha = config.alpha if train_labels is not None else 1.0
    timing = {"seconds": 0.0, "samples": 0, "batches": 0}

    def step(st: Any, o: Any, sch: Any, idx: Any) -> tuple[float, int]:
        """One optimizer step on samples `idx`: (loss x samples, samples)."""
        t0 = time.perf_counter()
        out = dd.first_tensor(st["model"](**dd.batch(train_x, idx.numpy(), dtype)))
        loss = alpha * losses.kd_loss(choice, out, t_train[idx], config.temperature)
        if train_labels is not None and alpha < 1.0:
            loss = loss + (1 - alpha) * losses.label_loss(choice, out, train_labels[idx])
        for i, (sn, tn) in enumerate(pairs):
            sf = adapt(s_feats.values[sn], st["adapters"][str(i)] if str(i) in st["adapters"] else None,
                       s_feats.channel_dim[sn])
            loss = loss + torch.nn.functional.mse_loss(sf.float(), t_train_f[tn][idx])
        o.zero_grad(set_to_none=True)
        loss.backward()
        o.step()
        sch.step()
        timing["seconds"] += time.perf_counter() - t0
        timing["samples"] += len(idx)
        timing["batches"] += 1
        return float(loss.detach()) * len(idx), len(idx)

    scorer = losses.Scorer(metric, choice, t_eval, eval_y, out_name, config.temperature) if n_eval else None
    eval_t0 = time.monotonic()
    initial = scorer(dd.outputs(model, eval_x, n_eval, bs, dtype)) if scorer else math.inf
    eval_s = time.monotonic() - eval_t0
    best_state = copy.deepcopy(model.state_dict())        # the input student, until an epoch beats it
    first_order = torch.randperm(n, generator=gen)
    batches = [first_order[s:s + bs] for s in range(0, n, bs) if n == 1 or len(first_order[s:s + bs]) >= 2]
    start = screens.run(state, make_opt, step, batches, bs, dtype, choice, config, (eval_x, t_eval, n_eval),
                        (train_x, t_train, first_order), out_of_time)
    mode = start.batchnorm
    opt, sched = make_opt(state, start.lr)
    if start.trial is not None:
        state.load_state_dict(start.trial.state.state_dict())
        opt.load_state_dict(start.trial.opt.state_dict())
        sched.load_state_dict(start.trial.sched.state_dict())

    def seconds_left() -> float:
        left = [60 * config.max_minutes - (time.monotonic() - start_t)] if config.max_minutes is not None else []
        return min(left + ([deadline - time.time()] if deadline is not None else []), default=math.inf)

    fitting = (None if config.schedule != "cosine" or math.isinf(seconds_left())
               else lrs.Fitting(total_steps, config.epochs))

    best_metric, metric_name = initial, scorer.name if scorer else "train_loss"
    best_epoch, stale, epochs_run, history = 0, 0, 0, []
    trained = 0                                   # samples the student was trained on, over all epochs
    checkpoint = ctx.extra.get("checkpoint")
    meter = Meter("distill", config.epochs * len(batches), log, done=0 if start.cut_short else start.batches)
    log.info("distill: at most %d epoch(s) of %d batch(es) of %d on %d sample(s)", config.epochs, len(batches), bs, n)
    with ExitStack() as stack:
        stack.enter_context(meter)
        if s_feats:
            stack.callback(s_feats.close)
        for epoch in range(1, config.epochs + 1):
            total, seen, todo = 0.0, 0, batches if epoch == 1 else None
            if epoch == 1 and start.trial is not None:     # the winners' screened batches are epoch 1's first
                total, seen, todo = start.loss_sum, start.seen, batches[start.batches:]
                todo = [] if start.cut_short else todo
            if todo is None:
                order = torch.randperm(n, generator=gen)
                todo = [order[s:s + bs] for s in range(0, n, bs) if n == 1 or len(order[s:s + bs]) >= 2]
            bn.set_train(model, mode)
            for i, idx in enumerate(todo, start=len(batches) - len(todo) + 1):
                batch_loss, batch_seen = step(state, opt, sched, idx)
                total, seen = total + batch_loss, seen + batch_seen
                meter.advance(1, batch_seen, f"epoch {epoch}/{config.epochs} batch {i}/{len(batches)}")
                if fitting is not None and fitting.due(timing["batches"]):
                    plan["total"] = fitting.refit(sched.last_epoch, timing["seconds"], timing["batches"],
                                                  seconds_left(), eval_s, len(batches))
                if out_of_time():
                    break
            epochs_run, trained = epoch, trained + seen
            train_loss = total / max(seen, 1)
            value = scorer(dd.outputs(model, eval_x, n_eval, bs, dtype)) if scorer else train_loss
            history.append({"epoch": epoch, "train_loss": round(train_loss, 5), metric_name: round(value, 5)})
            if scorer.better(value, best_metric) if scorer else value < best_metric:
                best_metric, best_epoch, stale = value, epoch, 0
                best_state = copy.deepcopy(model.state_dict())
                if checkpoint:
                    _save_checkpoint(checkpoint, best_state, epoch, value)
            else:
                stale += 1
            meter.where = f"epoch {epoch}/{config.epochs}"
            meter.line(f"loss {train_loss:.4f}, {metric_name} {value:.4f}, best {best_metric:.4f}")
            if stale >= config.patience:
                log.info("distill: no improvement for %d epochs; stopping", stale)
                break
            if out_of_time():
                log.info("distill: max_minutes=%s reached; stopping", config.max_minutes)
                break
    model.load_state_dict(best_state)
    model.eval()

    teacher_metric = scorer(t_eval) if scorer and scorer.higher else None
    minutes, cpu_minutes = (time.monotonic() - start_t) / 60, (time.process_time() - cpu_start) / 60
    train_rate = timing["samples"] / max(timing["seconds"], 1e-9)
    notes = [f"distillation loss: {choice.kind} ({choice.reason})",
             f"{epochs_run} epoch(s) on {n} samples in {minutes:.1f} min ({cpu_minutes:.1f} CPU min)",
             f"teacher outputs: {n} sample(s) " + ("read from the cache" if t_source == "cache" else
                                                   f"at {n / max(t_seconds, 1e-9):.0f} samples/s")]
    notes += start.notes + ([fitting.note()] if fitting is not None and fitting.note() else [])
    if n < n_given:
        notes.append(f"max_minutes ended the teacher pass: trained on the first {n} of {n_given} samples")
    if train_y is not None and train_labels is None:
        notes.append(f"training labels do not fit the {choice.kind} loss: used by the metric only")
    if train_labels is None:
        notes.append("trained on the teacher's outputs only (no labels used in the loss)")
    if out_of_time():
        limit = (f"max_minutes={config.max_minutes:g}" if config.max_minutes is not None
                 and time.monotonic() - start_t > 60 * config.max_minutes else "max_minutes (the export's wall)")
        notes.append(f"stopped at {limit} after {epochs_run} of {config.epochs} epoch(s)")
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
    details = {"loss": choice.kind, "loss_reason": choice.reason, "batchnorm": mode,
               "batchnorm_screen": start.details.get("batchnorm_screen"), "lr": start.lr,
               "lr_screen": start.details.get("lr_screen"), "schedule_steps": plan["total"],
               "steps": sched.last_epoch,
               "epochs_run": epochs_run, "best_epoch": best_epoch, "metric": metric_name,
               "initial_metric": None if math.isinf(initial) else initial,
               "best_metric": best_metric, "teacher_metric": teacher_metric, "recovered": recovered,
               "seconds": round(60 * minutes, 2), "cpu_minutes": round(cpu_minutes, 3),
               "teacher_source": t_source, "teacher_seconds": round(t_seconds, 3),
               "train_samples_per_s": round(train_rate, 1),
               "train_samples": n, "samples_trained": trained, "eval_samples": n_eval, "history": history}
    log.info("distill: %d epochs, %s loss, batchnorm %s, best %s %.4f at epoch %d (teacher %s)", epochs_run,
             choice.kind, mode, metric_name, best_metric, best_epoch, teacher_metric)
    return model, StepReport("distill", config_to_dict(config), notes, details)


def _recovered(initial: float, best: float, teacher: float | None) -> float | None:
    """Fraction of the (teacher - initial) metric gap closed, or None when there is no gap to close."""
    if teacher is None or math.isinf(initial) or teacher - initial <= 1e-9 * max(abs(teacher), 1.0):
        return None
    return (best - initial) / (teacher - initial)


MODEL_STEPS.add("distill", ModelStep(DistillConfig, distill))
