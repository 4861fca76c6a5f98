"""Hidden-unit pruning of nn.LSTM / nn.GRU / nn.RNN and of the layers that read their outputs.

Gate layout (PyTorch): weight_ih_l{k}[_reverse] is (G*H, in) and weight_hh is (G*H, H) with the
G gate blocks stacked on rows (LSTM i,f,g,o: G=4; GRU r,z,n: G=3; RNN: G=1). Hidden unit j of a
layer is rows j, j+H, ..., j+(G-1)H of both matrices and biases, column j of weight_hh, and
column d*H+j of the next layer's weight_ih (d = direction). Units of inner layers are chosen per
layer and direction; the last layer keeps the same units in both directions so a reader of
either direction's slice (h_n[-1]) or of both (output[..., :2H]) maps cleanly.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}


@dataclass
class RnnPlan:
    """An RNN layer that can be shrunk and the layers that read its last layer's hidden units."""

    name: str
    readers: list[tuple[str, str]]   # (module name, "full" = reads D*H features | "half" = reads H)


def is_rnn(m: Any) -> bool:
    import torch.nn as nn

    return isinstance(m, (nn.LSTM, nn.GRU, nn.RNN))


def _dirs(rnn: Any) -> int:
    return 2 if rnn.bidirectional else 1


def _sfx(layer: int, d: int) -> str:
    return f"_l{layer}" + ("_reverse" if d else "")


def _in_features(m: Any) -> int | None:
    import torch.nn as nn

    if isinstance(m, nn.Linear):
        return m.in_features
    if isinstance(m, nn.Conv1d) and m.groups == 1:
        return m.in_channels
    if is_rnn(m):
        return m.input_size
    return None


def find_readers(model: Any, example_inputs: Mapping[str, Any], rnn_names: list[str]) -> dict[str, RnnPlan | str]:
    """For each RNN, the modules that read its outputs directly, or the reason it cannot be shrunk.

    Every module with weights gets its output replaced by a fresh leaf tensor, so a gradient from a
    module's input reaches an RNN's leaf only through weight-free ops (indexing, mean, dropout,
    activations): those modules are the RNN's direct readers.
    """
    import torch

    names = {m: n for n, m in model.named_modules()}
    weighted = [m for m in names if any(True for _ in m.parameters(recurse=False))
                and not any(True for _ in m.children())]
    leaves: dict[str, list] = {}
    seen_inputs: dict[str, Any] = {}

    def leafify(obj):
        if isinstance(obj, torch.Tensor) and obj.is_floating_point():
            return obj.detach().requires_grad_(True)
        if isinstance(obj, tuple):
            return tuple(leafify(o) for o in obj)
        return obj

    def post(m, args, out):
        new = leafify(out)
        leaves[names[m]] = [t for t in torch.utils._pytree.tree_leaves(new) if isinstance(t, torch.Tensor)]
        return new

    def pre(m, args):
        if args and isinstance(args[0], torch.Tensor) and names[m] not in seen_inputs:
            seen_inputs[names[m]] = args[0]

    handles = [m.register_forward_hook(post) for m in weighted]
    handles += [m.register_forward_pre_hook(pre) for m in weighted]
    try:
        with torch.enable_grad():
            out = model(**example_inputs)
    finally:
        for h in handles:
            h.remove()
    outputs = [t for t in torch.utils._pytree.tree_leaves(out) if isinstance(t, torch.Tensor)]

    def producers(t) -> set[str]:
        flat = [(n, x) for n, ts in leaves.items() for x in ts]
        if isinstance(t, torch.Tensor) and t.grad_fn is None:    # a module's output passed on untouched
            return {n for n, x in flat if x is t}
        if not isinstance(t, torch.Tensor):
            return set()
        grads = torch.autograd.grad(t, [x for _, x in flat], grad_outputs=torch.ones_like(t),
                                    allow_unused=True, retain_graph=True)
        return {n for (n, _), g in zip(flat, grads) if g is not None}

    plans: dict[str, RnnPlan | str] = {}
    reads = {n: producers(t) for n, t in seen_inputs.items()}
    to_output = set().union(*(producers(t) for t in outputs)) if outputs else set()
    for name in rnn_names:
        rnn = model.get_submodule(name)
        if getattr(rnn, "proj_size", 0):
            plans[name] = "LSTM with proj_size is not supported"
            continue
        if name in to_output:
            plans[name] = "its outputs are model outputs"
            continue
        readers = []
        why = ""
        for reader, srcs in reads.items():
            if name not in srcs:
                continue
            m = model.get_submodule(reader)
            width = _in_features(m)
            h, full = rnn.hidden_size, rnn.hidden_size * _dirs(rnn)
            if len(srcs) > 1:
                why = f"'{reader}' mixes its output with other layers' ({', '.join(sorted(srcs - {name}))})"
            elif width not in (h, full):
                why = f"'{reader}' ({type(m).__name__}) reads it in a layout edgeai cannot map"
            else:
                readers.append((reader, "full" if width == full else "half"))
        plans[name] = why or (RnnPlan(name, readers) if readers else "no layer reads its output")
    return plans


def unit_scores(rnn: Any, plan: RnnPlan, model: Any, importance: str) -> list[list[Any]]:
    """scores[layer][direction][j]: weight norm of hidden unit j over its gate rows and its readers' columns."""
    import torch

    H, G, D, L = rnn.hidden_size, GATES[type(rnn).__name__], _dirs(rnn), rnn.num_layers

    def elem(w: torch.Tensor) -> torch.Tensor:   # per-weight importance, summed over rows/columns below
        x = w.detach()
        if importance == "taylor" and w.grad is not None:
            return (x * w.grad).abs()
        return x.abs() if importance == "l1" else x.pow(2)

    scores = []
    for layer in range(L):
        per_dir = []
        for d in range(D):
            w_hh = elem(getattr(rnn, "weight_hh" + _sfx(layer, d)))
            s = elem(getattr(rnn, "weight_ih" + _sfx(layer, d))).sum(1).reshape(G, H).sum(0)
            s = s + w_hh.sum(1).reshape(G, H).sum(0) + w_hh.sum(0)
            if layer + 1 < L:
                for d2 in range(D):
                    s = s + elem(getattr(rnn, "weight_ih" + _sfx(layer + 1, d2))).sum(0)[d * H:(d + 1) * H]
            else:
                for reader, layout in plan.readers:
                    m = model.get_submodule(reader)
                    e = elem(m.weight_ih_l0 if is_rnn(m) else m.weight)
                    e = e.flatten(2).sum(2) if e.dim() > 2 else e
                    lo = d * H if layout == "full" else 0
                    s = s + e.sum(0)[lo:lo + H]
            per_dir.append(s.sqrt() if importance not in ("l1", "taylor") else s)
        scores.append(per_dir)
    return scores


def choose_units(scores: list[list[Any]], keep: int) -> list[list[Any]]:
    """Kept unit indices per layer and direction (sorted); the last layer shares one set across directions."""
    import torch

    kept = []
    for layer, per_dir in enumerate(scores):
        if layer == len(scores) - 1:
            total = torch.stack(per_dir).sum(0)
            idx = torch.sort(torch.topk(total, keep).indices).values
            kept.append([idx] * len(per_dir))
        else:
            kept.append([torch.sort(torch.topk(s, keep).indices).values for s in per_dir])
    return kept


def shrink(rnn: Any, kept: list[list[Any]]) -> Any:
    """A new RNN of the same type with hidden_size len(kept[0][0]) and the kept units' weights."""
    import torch
    import torch.nn as nn

    H, G, D = rnn.hidden_size, GATES[type(rnn).__name__], _dirs(rnn)
    new_h = len(kept[0][0])
    kwargs = dict(input_size=rnn.input_size, hidden_size=new_h, num_layers=rnn.num_layers, bias=rnn.bias,
                  batch_first=rnn.batch_first, dropout=rnn.dropout, bidirectional=rnn.bidirectional)
    if isinstance(rnn, nn.RNN):
        kwargs["nonlinearity"] = rnn.nonlinearity
    ref = rnn.weight_ih_l0
    new = type(rnn)(**kwargs).to(device=ref.device, dtype=ref.dtype)
    state = {}
    with torch.no_grad():
        for layer in range(rnn.num_layers):
            in_cols = None if layer == 0 else torch.cat([d * H + kept[layer - 1][d] for d in range(D)])
            for d in range(D):
                sfx, k = _sfx(layer, d), kept[layer][d]
                rows = torch.cat([g * H + k for g in range(G)])
                w_ih = getattr(rnn, "weight_ih" + sfx)[rows]
                state["weight_ih" + sfx] = w_ih if in_cols is None else w_ih[:, in_cols]
                state["weight_hh" + sfx] = getattr(rnn, "weight_hh" + sfx)[rows][:, k]
                if rnn.bias:
                    state["bias_ih" + sfx] = getattr(rnn, "bias_ih" + sfx)[rows]
                    state["bias_hh" + sfx] = getattr(rnn, "bias_hh" + sfx)[rows]
    new.load_state_dict(state)
    new.train(rnn.training)
    return new


def reader_columns(rnn_h: int, dirs: int, kept_last: Any, layout: str) -> Any:
    import torch

    if layout == "half":
        return kept_last
    return torch.cat([d * rnn_h + kept_last for d in range(dirs)])


def keep_input_columns(m: Any, cols: Any) -> None:
    """Keep only input features `cols` of a Linear / Conv1d / RNN reader (in place)."""
    import torch
    import torch.nn as nn

    with torch.no_grad():
        if is_rnn(m):
            for d in range(_dirs(m)):
                name = "weight_ih" + _sfx(0, d)
                setattr(m, name, nn.Parameter(getattr(m, name)[:, cols].clone()))
            m.input_size = len(cols)
        else:
            m.weight = nn.Parameter(m.weight[:, cols].clone())
            if isinstance(m, nn.Linear):
                m.in_features = len(cols)
            else:
                m.in_channels = len(cols)


def apply(model: Any, plan: RnnPlan, kept: list[list[Any]]) -> None:
    """Replace the RNN by its shrunk copy and drop the removed units' columns from its readers."""
    rnn = model.get_submodule(plan.name)
    for reader, layout in plan.readers:
        cols = reader_columns(rnn.hidden_size, _dirs(rnn), kept[-1][0], layout)
        keep_input_columns(model.get_submodule(reader), cols)
    parent, _, leaf = plan.name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, shrink(rnn, kept))


def zero_readers(model: Any, plan: RnnPlan, kept: list[list[Any]]) -> None:
    """On an unpruned copy: zero every weight that reads a removed unit (the exactness reference)."""
    import torch

    rnn = model.get_submodule(plan.name)
    H, D, L = rnn.hidden_size, _dirs(rnn), rnn.num_layers
    with torch.no_grad():
        for layer in range(L):
            for d in range(D):
                mask = torch.ones(H, dtype=torch.bool)
                mask[kept[layer][d]] = False
                gone = torch.nonzero(mask).flatten()
                getattr(rnn, "weight_hh" + _sfx(layer, d))[:, gone] = 0
                if layer + 1 < L:
                    for d2 in range(D):
                        getattr(rnn, "weight_ih" + _sfx(layer + 1, d2))[:, d * H + gone] = 0
                else:
                    for reader, layout in plan.readers:
                        m = model.get_submodule(reader)
                        cols = gone if layout == "half" else d * H + gone
                        if is_rnn(m):
                            for d2 in range(_dirs(m)):
                                getattr(m, "weight_ih" + _sfx(0, d2))[:, cols] = 0
                        else:
                            m.weight[:, cols] = 0
