"""Find what can be pruned in a model and cut it: channel groups, attention heads, RNN hidden units.

Channel groups come from torch-pruning's DependencyGraph (it couples convs, depthwise groups,
BN, residual adds, concats and flattens). Attention heads (timm qkv/proj, Hugging Face q/k/v +
output projection: _prune_heads.py) and RNN hidden units (_prune_rnn.py) are cut by their own
rules, found here. A group is never cut when its channels reach a model output, pass through a
normalisation that mixes channels (LayerNorm, GroupNorm), touch an attention's projections (heads
are cut as heads) or an nn.MultiheadAttention.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Mapping

from edgeai.errors import ConfigError
from edgeai.steps import _prune_heads as prune_heads
from edgeai.steps import _prune_rnn as prune_rnn
from edgeai.steps._prune_alloc import Slot


@dataclass
class Target:
    """A Slot plus what is needed to score and cut it."""

    slot: Slot
    handler: Any = None                      # channels: torch-pruning out-channel function of the root
    rnn: prune_rnn.RnnPlan | None = None     # hidden: readers of the RNN
    heads: prune_heads.Layout | None = None  # heads: where the attention keeps them


def _within(name: str, pinned: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in pinned)


def leaf_shapes(out: Any) -> list[tuple]:
    """Shapes of every tensor in a (nested) output."""
    import torch

    return [tuple(t.shape) for t in torch.utils._pytree.tree_leaves(out) if isinstance(t, torch.Tensor)]


def _heads_prunable(attn: Any, layout: Any, args: tuple, kwargs: dict) -> str:
    """'' if the attention still runs with one head fewer, else why not."""
    import copy

    import torch

    trial = copy.deepcopy(attn)
    try:
        with torch.no_grad():
            ref = attn(*args, **kwargs)
            prune_heads.cut(trial, layout, torch.arange(prune_heads.num_heads(attn, layout) - 1))
            out = trial(*args, **kwargs)
    except Exception as e:  # the module's own forward decides; any failure means "cannot cut heads"
        return f"its forward fails with fewer heads ({type(e).__name__}: {str(e)[:120]})"
    if leaf_shapes(out)[:1] != leaf_shapes(ref)[:1]:   # the first output; others may be per-head weights
        return "its output shape changes with fewer heads"
    return ""


def _capture_inputs(model: Any, example_inputs: Mapping[str, Any], modules: dict[str, Any]) -> dict[str, tuple]:
    import torch

    seen: dict[str, tuple] = {}
    hooks = [m.register_forward_pre_hook(lambda m, a, k, n=n: seen.setdefault(n, (a, k)), with_kwargs=True)
             for n, m in modules.items()]
    try:
        with torch.no_grad():
            model(**example_inputs)
    finally:
        for h in hooks:
            h.remove()
    return seen


def build_graph(model: Any, example_inputs: Mapping[str, Any]) -> Any:
    """torch-pruning DependencyGraph; RNN outputs are cut from the graph (RNNs are pruned here, not there)."""
    import torch
    import torch_pruning as tp

    def detach(m, args, out):
        return torch.utils._pytree.tree_map(lambda t: t.detach() if isinstance(t, torch.Tensor) else t, out)

    hooks = [m.register_forward_hook(detach) for m in model.modules() if prune_rnn.is_rnn(m)]
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    for p in model.parameters():
        p.requires_grad_(True)
    try:
        with warnings.catch_warnings(), torch.enable_grad():
            warnings.simplefilter("ignore")
            return tp.DependencyGraph().build_dependency(model, example_inputs=dict(example_inputs))
    finally:
        for h in hooks:
            h.remove()
        for n, p in model.named_parameters():
            p.requires_grad_(flags[n])


def _group_kind(dg: Any, group: Any, names: dict, attn_parts: set) -> str:
    """'' if the group can be cut exactly, 'attention' for groups owned by head pruning, else a reason."""
    import torch.nn as nn
    import torch_pruning as tp

    for dep, _ in group:
        node, m = dep.target, dep.target.module
        name = names.get(m, "")
        if name in attn_parts:
            return "attention"
        if isinstance(m, nn.MultiheadAttention):
            return f"its channels feed nn.MultiheadAttention '{name}'"
        if isinstance(m, nn.modules.conv._ConvNd) and m.groups > 1 and not m.groups == m.in_channels == m.out_channels:
            return f"its channels feed grouped convolution '{name}' (groups={m.groups})"
        if isinstance(m, (nn.LayerNorm, nn.GroupNorm, nn.modules.instancenorm._InstanceNorm)):
            return f"its channels pass through {type(m).__name__} '{name}', which mixes channels"
        terminal = not node.outputs
        reader = dg.is_in_channel_pruning_fn(dep.handler) and isinstance(
            m, (nn.modules.conv._ConvNd, nn.Linear, nn.Embedding))
        if terminal and not reader or isinstance(m, tp.ops._OutputOp):
            return "its channels reach a model output"
    return ""


def discover(model: Any, example_inputs: Mapping[str, Any], config: Any, dg: Any) -> tuple[list[Target], list[str]]:
    """Everything prunable in `model`, as Targets (protected ones included, for the report), and notes."""
    import torch.nn as nn

    names = {m: n for n, m in model.named_modules()}
    pinned = tuple(config.pinned)
    notes: list[str] = []
    targets: list[Target] = []
    attns = prune_heads.find(model)
    attn_parts = {prune_heads.join(n, p) for n, lay in attns.items() for p in (*lay.writers, lay.reader)}

    def protect(name: str, width_ch: int) -> str:
        if _within(name, pinned):
            return "pinned"
        if width_ch <= config.protect_narrow:
            return f"narrow (<= {config.protect_narrow})"
        return ""

    skipped: dict[str, list[str]] = {}
    for group in dg.get_all_groups(root_module_types=(nn.modules.conv._ConvNd, nn.Linear)):
        root_dep = group[0].dep
        root = names[root_dep.target.module]
        kind = _group_kind(dg, group, names, attn_parts)
        if kind == "attention":
            continue
        width = len(group[0].idxs)
        outs = [names[d.target.module] for d, _ in group
                if d.target.module in names and dg.is_out_channel_pruning_fn(d.handler)]
        scales = {names[d.target.module]: [(1.0, 1)] for d, _ in group
                  if isinstance(d.target.module, (nn.modules.conv._ConvNd, nn.Linear))}
        protected = kind or next((p for p in (protect(o, width) for o in outs) if p), "")
        if kind and kind != "its channels reach a model output":
            skipped.setdefault(kind, []).append(root)
        targets.append(Target(Slot(root, "channels", width, protected=protected, scales=scales),
                              handler=root_dep.handler))
    for reason, roots in skipped.items():
        notes.append(f"{len(roots)} channel group(s) kept at full width because {reason}")

    if config.heads and attns:
        inputs = _capture_inputs(model, example_inputs, {n: model.get_submodule(n) for n in attns})
        for name, layout in attns.items():
            attn = model.get_submodule(name)
            h, hd = prune_heads.num_heads(attn, layout), prune_heads.head_dim(attn, layout)
            parts = layout.names(name)
            why = ("pinned" if any(_within(p, pinned) for p in parts[1:]) else protect(name, h * hd)
                   or ("a single head" if h == 1 else ""))
            if not why and name in inputs:
                why = _heads_prunable(attn, layout, *inputs[name])
                if why:
                    notes.append(f"heads of '{name}' kept: {why}")
            targets.append(Target(Slot(name, "heads", h, hd, protected=why, scales={p: [(1.0, 1)] for p in parts}),
                                  heads=layout))

    rnns = [n for n, m in model.named_modules() if prune_rnn.is_rnn(m)]
    if config.rnn_hidden and rnns:
        plans = prune_rnn.find_readers(model, example_inputs, rnns)
        for name in rnns:
            rnn, plan = model.get_submodule(name), plans[name]
            why = protect(name, rnn.hidden_size)
            if isinstance(plan, str):
                notes.append(f"hidden units of '{name}' kept: {plan}")
                why = why or plan
                plan = None
            scales = {name: _rnn_scales(rnn)}
            for reader, _ in plan.readers if plan else []:
                m = model.get_submodule(reader)
                scales[reader] = _rnn_scales(m, input_only=True) if prune_rnn.is_rnn(m) else [(1.0, 1)]
            targets.append(Target(Slot(name, "hidden", rnn.hidden_size, protected=why, scales=scales), rnn=plan))
    return targets, notes


def _rnn_scales(rnn: Any, input_only: bool = False) -> list[tuple[float, int]]:
    """How an RNN's MACs scale with its hidden fraction f (or, as a reader, its input fraction)."""
    weights = {n: p.numel() for n, p in rnn.named_parameters() if n.startswith("weight_")}
    total = sum(weights.values())
    first_in = sum(v for n, v in weights.items() if n.startswith("weight_ih_l0"))
    if input_only:
        return [(first_in / total, 1), (1 - first_in / total, 0)]
    return [(first_in / total, 1), (1 - first_in / total, 2)]


def importance_fn(name: str) -> Any:
    import torch_pruning as tp

    return {"l1": lambda: tp.importance.GroupMagnitudeImportance(p=1),
            "l2": lambda: tp.importance.GroupMagnitudeImportance(p=2),
            "taylor": lambda: tp.importance.GroupTaylorImportance(),
            "bn_scale": lambda: tp.importance.BNScaleImportance()}[name]()


def channel_scores(model: Any, dg: Any, t: Target, importance: str) -> Any:
    import torch
    import torch_pruning as tp

    root = model.get_submodule(t.slot.name)
    group = dg.get_pruning_group(root, t.handler, list(range(t.slot.width)))
    scores = importance_fn(importance)(group)
    if scores is None:   # e.g. bn_scale on a group without BatchNorm
        scores = tp.importance.GroupMagnitudeImportance(p=2)(group)
    return scores if scores is not None else torch.zeros(t.slot.width)


def cut_channels(model: Any, dg: Any, t: Target, remove: list[int]) -> None:
    try:
        dg.get_pruning_group(model.get_submodule(t.slot.name), t.handler, remove).prune()
    except (RuntimeError, IndexError, ValueError) as e:
        raise ConfigError(f"prune: torch-pruning could not cut the channel group of '{t.slot.name}' "
                          f"({type(e).__name__}: {str(e)[:200]}); pin it with pinned=['{t.slot.name}']") from None


def zero_channel_readers(model: Any, dg: Any, t: Target, remove: list[int]) -> None:
    """On an unpruned copy: zero the weights that read channels `remove` of this group."""
    import torch
    import torch.nn as nn

    group = dg.get_pruning_group(model.get_submodule(t.slot.name), t.handler, remove)
    with torch.no_grad():
        for dep, idxs in group:
            m = dep.target.module
            if not dg.is_in_channel_pruning_fn(dep.handler):
                continue
            if isinstance(m, nn.Linear):
                m.weight[:, idxs] = 0
            elif isinstance(m, nn.modules.conv._ConvNd) and m.groups == 1:   # depthwise: its output goes too
                if m.transposed:       # weight (Cin, Cout, k...)
                    m.weight[idxs] = 0
                else:                  # weight (Cout, Cin, k...)
                    m.weight[:, idxs] = 0
