"""Model step "prune": structured pruning to a MACs target; returns a smaller dense module.

Zeroed weights give no speed on dense kernels; removing channels does, and speed tracks the
MACs removed. So the target is a fraction of MACs, and by default ("macs" allocation) channels
are cut where the MACs are. Every pruned model is checked twice: it runs on the example inputs
with the original output shapes, and it computes exactly what the original computes when the
weights that read the removed channels are zeroed (so a channel mapping edgeai got wrong, e.g. a
permute before a flatten, is refused instead of silently returned). When a cut fails either
check, each prunable layer is cut alone to find the ones whose width feeds an op the dependency
graph could not follow (a permute + reshape into a Linear, a width hard-coded in the forward);
those are pinned automatically, the cut is retried, and the report says what was pinned and why.
"""
from __future__ import annotations

import copy
import difflib
import logging
import time
from dataclasses import dataclass, replace
from typing import Any, Mapping

from edgeai.errors import ConfigError, InputSpecError, UnknownNameError, VerificationError
from edgeai.progress import PLAIN_EVERY_S
from edgeai.steps import MODEL_STEPS, ModelStep, StepContext, StepReport, config_to_dict
from edgeai.steps._prune_alloc import ALLOCATIONS, keep_units, search
from edgeai.steps._prune_bn import recalibrate_bn
from edgeai.steps._prune_graph import leaf_shapes as _shapes

log = logging.getLogger(__name__)

IMPORTANCES = ("l1", "l2", "taylor", "bn_scale")
TARGETS = ("ratio", "target_macs", "target_speedup", "target_latency_ms")
RATIO_TOLERANCE = 0.02     # |achieved - target| MACs fraction accepted without a note
UNREACHABLE_MARGIN = 0.02  # refuse when even the smallest allowed widths miss the target by more
MAX_ROUNDS = 3             # re-plans when the measured MACs miss the prediction


@dataclass(frozen=True)
class PruneConfig:
    """Structured pruning to exactly one target: `ratio` (fraction of MACs to remove), `target_macs` (MACs
    to keep), or, through the pipeline (measured on the exported model), `target_speedup` / `target_latency_ms`."""

    ratio: float | None = None
    target_macs: int | None = None     # MACs of one forward on the example inputs (whole batch), see edgeai.macs
    target_speedup: float | None = None     # vs the unpruned export, batch 1 (edgeai.latency_target)
    target_latency_ms: float | None = None  # p50 of the export, batch 1, on this machine
    importance: str = "l1"              # "l1" | "l2" | "taylor" | "bn_scale"
    round_to: int | None = None         # kept channels are a multiple of this; None: from the CPU (edgeai.hw)
    pinned: tuple[str, ...] = ()        # module names (and everything inside) whose output width is kept
    allocation: str = "macs"            # "macs": cut where the MACs are | "uniform": same ratio everywhere
    protect_narrow: int = 16            # layers this wide or narrower are not cut, nor others cut below it
    max_layer_ratio: float = 0.9        # no layer loses more than this fraction of its width
    heads: bool = True                  # Transformers: remove whole attention heads
    rnn_hidden: bool = True             # LSTM/GRU/RNN: remove hidden units
    recalibrate_bn: bool = True         # re-estimate BatchNorm statistics on ctx.train_data / ctx.calibration
    auto_pin: bool = True               # when the cut breaks the model, pin the layers that break it and retry
    up_to_limit: bool = False           # a target beyond what these settings allow prunes to the limit (noted)


def validate(config: PruneConfig) -> None:
    given = [k for k in TARGETS if getattr(config, k) is not None]
    if len(given) != 1:
        raise ConfigError("prune: give exactly one of ratio (fraction of MACs to remove, e.g. 0.5), target_macs "
                          f"(MACs to keep), target_speedup or target_latency_ms; got {', '.join(given) or 'none'}")
    if config.target_speedup is not None and not float(config.target_speedup) > 1.0:
        raise ConfigError(f"prune: target_speedup must be > 1 (e.g. 3.0), got {config.target_speedup}")
    if config.target_latency_ms is not None and not float(config.target_latency_ms) > 0.0:
        raise ConfigError(f"prune: target_latency_ms must be > 0, got {config.target_latency_ms}")
    if config.ratio is not None and not 0.0 < float(config.ratio) < 1.0:
        raise ConfigError(f"prune: ratio must be between 0 and 1 (fraction of MACs to remove), got {config.ratio}")
    if config.target_macs is not None and int(config.target_macs) <= 0:
        raise ConfigError(f"prune: target_macs must be a positive MAC count, got {config.target_macs}")
    if config.importance not in IMPORTANCES:
        raise UnknownNameError(f"prune: no importance named {config.importance!r}; known: {', '.join(IMPORTANCES)}")
    if config.allocation not in ALLOCATIONS:
        raise UnknownNameError(f"prune: no allocation named {config.allocation!r}; known: {', '.join(ALLOCATIONS)}")
    if config.round_to is not None and int(config.round_to) < 1:
        raise ConfigError(f"prune: round_to must be >= 1, got {config.round_to}")
    if not 0.0 < float(config.max_layer_ratio) < 1.0:
        raise ConfigError(f"prune: max_layer_ratio must be between 0 and 1, got {config.max_layer_ratio}")
    if int(config.protect_narrow) < 0:
        raise ConfigError(f"prune: protect_narrow must be >= 0, got {config.protect_narrow}")


def _check_pinned(model: Any, pinned: tuple[str, ...]) -> None:
    names = [n for n, _ in model.named_modules() if n]
    for p in pinned:
        if p not in names:
            close = difflib.get_close_matches(p, names, n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise ConfigError(f"prune: pinned module {p!r} is not in the model{hint}")


def _max_diff(a: Any, b: Any) -> tuple[float, float]:
    import torch

    ta = [t for t in torch.utils._pytree.tree_leaves(a) if isinstance(t, torch.Tensor)]
    tb = [t for t in torch.utils._pytree.tree_leaves(b) if isinstance(t, torch.Tensor)]
    diff = max(float((x.float() - y.float()).abs().max()) if x.numel() else 0.0 for x, y in zip(ta, tb))
    scale = max(float(y.float().abs().max()) if y.numel() else 0.0 for y in tb)
    return diff, scale


def _taylor_grads(model: Any, example_inputs: Mapping[str, Any]) -> None:
    """Gradients for Taylor importance, from the model's own predictions (no labels needed)."""
    import torch
    import torch.nn.functional as F

    for p in model.parameters():
        p.requires_grad_(True)
        p.grad = None
    with torch.enable_grad():
        out = model(**example_inputs)
        y = next(t for t in torch.utils._pytree.tree_leaves(out) if isinstance(t, torch.Tensor))
        if y.dim() == 2 and y.shape[1] > 1:      # logits: cross-entropy against the model's own argmax
            loss = F.cross_entropy(y, y.argmax(1))
        else:
            loss = 0.5 * y.float().pow(2).mean()
        loss.backward()
    for p in model.parameters():
        if p.grad is None:
            p.grad = torch.zeros_like(p)


class Unreachable(ConfigError):
    """The MACs target is below what the settings allow; `keep_fraction` of the MACs is the least that can stay."""

    def __init__(self, keep_fraction: float, message: str):
        super().__init__(message)
        self.keep_fraction = keep_fraction


def _plan_and_cut(module: Any, example_inputs: Mapping[str, Any], config: PruneConfig, base: Any,
                  target_pred: float, probe: int | None = None) -> tuple[Any, list, list[int], list[str], float, Any]:
    """One pruning pass on a fresh copy: find slots, choose widths, cut, and build the zeroed reference.

    With `probe` = i only slot i is cut, to half its width (to find which slot breaks the model).
    """
    import torch

    from edgeai.steps import _prune_graph as pg
    from edgeai.steps import _prune_heads as prune_heads
    from edgeai.steps import _prune_rnn as prune_rnn

    work = copy.deepcopy(module).eval()
    twin = copy.deepcopy(module).eval()
    if config.importance == "taylor":
        _taylor_grads(work, example_inputs)
    dg = pg.build_graph(work, example_inputs)
    targets, notes = pg.discover(work, example_inputs, config, dg)
    live = [t for t in targets if not t.slot.protected]
    if not live:
        raise ConfigError("prune: nothing can be pruned: "
                          + ("; ".join(f"'{t.slot.name}' {t.slot.protected}" for t in targets[:8])
                             or "no conv, linear, attention or RNN layer found")
                          + ". Unpin layers, lower protect_narrow, or use sparsity instead")
    slots = [t.slot for t in targets]
    if probe is not None:
        keeps = [s.width for s in slots]
        keeps[probe] = keep_units(slots[probe], 0.5, int(config.round_to), 0.5)
        pred = floor = target_pred
    else:
        keeps, pred, floor = search(slots, base.per_module, target_pred, config.allocation,
                                    int(config.round_to), float(config.max_layer_ratio), int(config.protect_narrow))
    if floor > target_pred + UNREACHABLE_MARGIN * base.total:
        raise Unreachable(floor / base.total,
            f"prune: at most {1 - floor / base.total:.1%} of MACs can be removed with these settings, not "
            f"{1 - target_pred / base.total:.1%}; raise max_layer_ratio, lower protect_narrow or round_to, "
            f"or unpin layers")
    twin_dg = pg.build_graph(twin, example_inputs)
    for t, keep in zip(targets, keeps):
        s = t.slot
        if keep >= s.width:
            continue
        if s.kind == "channels":
            scores = pg.channel_scores(work, dg, t, config.importance)
            keep_idx = torch.topk(scores, keep).indices
            remove = sorted(set(range(s.width)) - set(keep_idx.tolist()))
            pg.zero_channel_readers(twin, twin_dg, t, remove)
            pg.cut_channels(work, dg, t, remove)
        elif s.kind == "heads":
            attn = work.get_submodule(s.name)
            kept = torch.sort(torch.topk(prune_heads.scores(attn, t.heads, config.importance), keep).indices).values
            gone = torch.tensor(sorted(set(range(s.width)) - set(kept.tolist())))
            prune_heads.zero_readers(twin.get_submodule(s.name), t.heads, gone)
            prune_heads.cut(attn, t.heads, kept)
        else:
            rnn = work.get_submodule(s.name)
            kept = prune_rnn.choose_units(prune_rnn.unit_scores(rnn, t.rnn, work, config.importance), keep)
            prune_rnn.zero_readers(twin, t.rnn, kept)
            prune_rnn.apply(work, t.rnn, kept)
    for p in work.parameters():
        p.grad = None
    if config.importance == "bn_scale" and any(t.slot.kind != "channels" for t in live):
        notes.append("bn_scale has no meaning for attention heads or RNN units; they were ranked by l2 norm")
    return work, targets, keeps, notes, pred, twin


def _check(work: Any, twin: Any, ref_out: Any, example_inputs: Mapping[str, Any]) -> tuple[str, str, float]:
    """(what broke, the error's text, max difference): "" when the pruned model runs, keeps the
    output shapes, and equals the original with the removed channels unread."""
    import torch

    try:
        with torch.no_grad():
            out = work(**example_inputs)
    except Exception as e:  # any failure of the user's forward on the pruned model is reported as such
        return "runs", f"{type(e).__name__}: {' '.join(str(e).split())[:300]}", 0.0
    if _shapes(out) != _shapes(ref_out):
        return "shapes", f"output shapes {_shapes(out)} instead of {_shapes(ref_out)}", 0.0
    with torch.no_grad():
        masked = twin(**example_inputs)
    diff, scale = _max_diff(out, masked)
    if diff > 1e-4 * max(scale, 1.0):
        return "equal", f"max difference {diff:.3g} vs output scale {scale:.3g}", diff
    return "", "", diff


WHY_BROKEN = {
    "runs": "the pruned model no longer runs on the example inputs ({}); its forward probably hard-codes a width",
    "shapes": "the pruned model's {}; its output layers must keep their width",
    "equal": ("the pruned model is not the original minus the removed channels ({}): the forward rearranges "
              "channels in a way edgeai cannot track (e.g. a permute before a flatten, or a width hard-coded "
              "in a reshape)"),
}


def _verify(work: Any, twin: Any, ref_out: Any, example_inputs: Mapping[str, Any]) -> float:
    what, text, diff = _check(work, twin, ref_out, example_inputs)
    if what:
        raise VerificationError(f"prune: {WHY_BROKEN[what].format(text)}. Pin the layers involved with "
                                f"pinned=[...] or use the sparsity step instead")
    return diff


def _breaking_slots(module: Any, example_inputs: Mapping[str, Any], config: PruneConfig, base: Any,
                    ref_out: Any) -> list[dict[str, str]]:
    """Cut each prunable slot alone, to half its width: the slots whose cut breaks the model, and why.

    Used when the planned cut fails verification: the dependency graph could not follow what
    some layer's output feeds (a permute + reshape into a Linear, a width hard-coded in the forward).
    """
    from edgeai.steps import _prune_graph as pg

    probe_model = copy.deepcopy(module).eval()
    targets, _ = pg.discover(probe_model, example_inputs, config, pg.build_graph(probe_model, example_inputs))
    live = sum(not t.slot.protected for t in targets)
    log.info("prune: the planned cut fails verification; cutting each of %d layer(s) alone to find the ones "
             "that break the model", live)
    broken, tried, last = [], 0, time.monotonic()
    for i, t in enumerate(targets):
        if t.slot.protected:
            continue
        tried += 1
        if time.monotonic() - last >= PLAIN_EVERY_S:
            last = time.monotonic()
            log.info("prune: cutting layer %d/%d alone (%s); %d break the model so far", tried, live, t.slot.name,
                     len(broken))
        work, *_, twin = _plan_and_cut(module, example_inputs, config, base, base.total, probe=i)
        what, text, _ = _check(work, twin, ref_out, example_inputs)
        if what:
            broken.append({"name": t.slot.name, "reason": WHY_BROKEN[what].format(text).replace("the pruned model",
                                                                                               "cutting it alone")})
    return broken


def _rounds(module: Any, example_inputs: Mapping[str, Any], config: PruneConfig, base: Any, target: float,
            ref_out: Any, limits: list[str]) -> tuple:
    """Plan, cut and verify; re-plan (up to MAX_ROUNDS) while the measured MACs miss the target. With
    up_to_limit an unreachable target becomes the limit (a note goes to `limits`)."""
    try:
        return _rounds_to(module, example_inputs, config, base, target, ref_out)
    except Unreachable as e:
        if not config.up_to_limit:
            raise
        limits.append(f"asked to remove {1 - target / base.total:.1%} of MACs; at most {1 - e.keep_fraction:.1%} "
                      f"can be removed with these settings (up_to_limit): pruned to that")
        return _rounds_to(module, example_inputs, config, base, e.keep_fraction * base.total, ref_out)


def _rounds_to(module: Any, example_inputs: Mapping[str, Any], config: PruneConfig, base: Any, target: float,
               ref_out: Any) -> tuple:
    from edgeai.macs import count_macs

    target_pred, best = target, None
    for round_ in range(1, MAX_ROUNDS + 1):
        work, targets, keeps, notes, pred, twin = _plan_and_cut(module, example_inputs, config, base, target_pred)
        diff = _verify(work, twin, ref_out, example_inputs)
        after = count_macs(work, example_inputs)
        if best is None or abs(after.total - target) < abs(best[3].total - target):
            best = (work, targets, keeps, after, notes, diff, pred)
        if abs(after.total - target) <= RATIO_TOLERANCE * base.total or abs(after.total - pred) <= 0.005 * pred:
            break                                # on target, or as close as the channel rounding allows
        target_pred *= target / after.total      # the prediction was off (e.g. shared layers): re-aim
        if round_ < MAX_ROUNDS:
            log.info("prune: measured %d MACs vs predicted %.0f; re-planning (round %d of at most %d)",
                     after.total, pred, round_ + 1, MAX_ROUNDS)
    return best


def prune(module: Any, example_inputs: Mapping[str, Any], config: PruneConfig,
          ctx: StepContext | None = None) -> tuple[Any, StepReport]:
    """Remove channels/heads/hidden units until `config`'s MACs target; the input module is not modified."""
    import torch

    from edgeai.macs import count_macs

    validate(config)
    if config.target_speedup is not None or config.target_latency_ms is not None:
        raise ConfigError("prune: target_speedup / target_latency_ms are measured on the exported model; run the "
                          "step through `edgeai export` (the pipeline turns them into a ratio), or give ratio")
    if config.round_to is None:
        from edgeai.hw import default_round_to

        config = replace(config, round_to=default_round_to())
    if not example_inputs:
        raise InputSpecError("prune: example inputs are empty; pass one tensor per model input")
    _check_pinned(module, tuple(config.pinned))
    example_inputs = {k: v if isinstance(v, torch.Tensor) else torch.as_tensor(v) for k, v in example_inputs.items()}
    was_training = module.training
    module_eval = copy.deepcopy(module).eval()
    base = count_macs(module_eval, example_inputs)
    with torch.no_grad():
        ref_out = module_eval(**example_inputs)
    if base.total <= 0:
        raise ConfigError("prune: the model does no matmul/conv work on the example inputs; nothing to prune")
    target = (1.0 - float(config.ratio)) * base.total if config.ratio is not None else float(config.target_macs)
    if target >= base.total:
        raise ConfigError(f"prune: target_macs {int(target)} is not below the model's {base.total} MACs")

    limits: list[str] = []
    try:
        best = _rounds(module_eval, example_inputs, config, base, target, ref_out, limits)
        auto_pinned: list[dict[str, str]] = []
    except VerificationError as first:
        if not config.auto_pin:
            raise
        auto_pinned = _breaking_slots(module_eval, example_inputs, config, base, ref_out)
        if not auto_pinned:
            raise
        log.info("prune: pinned automatically: %s", ", ".join(b["name"] for b in auto_pinned))
        pinned = replace(config, pinned=tuple(config.pinned) + tuple(b["name"] for b in auto_pinned))
        try:
            best = _rounds(module_eval, example_inputs, pinned, base, target, ref_out, limits)
        except VerificationError as e:
            raise VerificationError(f"{e} (already pinned automatically: "
                                    f"{', '.join(b['name'] for b in auto_pinned)})") from first
    work, targets, keeps, after, notes, diff, pred = best
    notes = limits[-1:] + [f"'{b['name']}' pinned automatically: {b['reason']}" for b in auto_pinned] + notes
    flags = {n: p.requires_grad for n, p in module.named_parameters()}
    for n, p in work.named_parameters():
        p.requires_grad_(flags.get(n, True))

    bn_samples, bn_note = recalibrate_bn(work, ctx, list(example_inputs)) if config.recalibrate_bn else (0, "")
    if bn_note:
        notes.append(bn_note)
    achieved = 1.0 - after.total / base.total
    wanted = 1.0 - target / base.total
    if abs(achieved - wanted) > RATIO_TOLERANCE and not limits:
        notes.append(f"removed {achieved:.1%} of MACs (asked {wanted:.1%}); channel rounding "
                     f"(round_to={config.round_to}) limits how close it can get")
    layers = [{"name": t.slot.name, "kind": t.slot.kind, "before": t.slot.width * t.slot.channels_per_unit,
               "after": k * t.slot.channels_per_unit, "units_before": t.slot.width, "units_after": k,
               "macs": t.slot.controlled_macs(base.per_module), "protected": t.slot.protected}
              for t, k in zip(targets, keeps)]
    work.train(was_training)
    details = {"macs_before": base.total, "macs_after": after.total, "params_before": base.params,
               "params_after": after.params, "target_ratio": round(wanted, 4), "achieved_ratio": round(achieved, 4),
               "predicted_macs": int(pred), "max_abs_diff_vs_masked_original": diff,
               "bn_recalibration_samples": bn_samples, "auto_pinned": auto_pinned, "layers": layers}
    log.info("prune: %d -> %d MACs (%.1f%% removed), %d -> %d params", base.total, after.total,
             100 * achieved, base.params, after.params)
    return work, StepReport("prune", config_to_dict(config), notes, details)


MODEL_STEPS.add("prune", ModelStep(PruneConfig, prune))
