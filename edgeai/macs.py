"""Count multiply-accumulates (MACs) and parameters of a torch module run on example inputs.

MACs are counted at the aten level (so functional matmuls, einsum and attention count too)
and attributed to the innermost module running when the op ran; LSTM/GRU/RNN layers are
counted from their weight shapes. Only matmul-like work counts (conv, mm, bmm, attention,
recurrent gates); elementwise ops, norms and activations are 0 MACs.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

from edgeai.errors import InputSpecError


@dataclass(frozen=True)
class MacCount:
    """MACs for one forward pass on the given inputs (whole batch) and the parameter count."""

    total: int
    params: int
    per_module: dict[str, int]   # qualified module name -> MACs of ops run directly in it ("" = top level)

    def under(self, prefix: str) -> int:
        """MACs of module `prefix` and everything inside it."""
        return sum(v for k, v in self.per_module.items()
                   if k == prefix or not prefix or k.startswith(prefix + "."))


def count_params(module: Any) -> int:
    return sum(p.numel() for p in module.parameters())


def _prod(xs) -> int:
    return int(math.prod(int(x) for x in xs))


def _op_macs(name: str, args: tuple, out: Any) -> int:
    """MACs of one aten op (0 for ops that are not matmul-like)."""
    if name in ("mm", "bmm"):
        a, b = args[0], args[1]
        return _prod(a.shape) * int(b.shape[-1])
    if name in ("addmm", "baddbmm", "_addmm_activation"):
        a, b = args[1], args[2]
        return _prod(a.shape) * int(b.shape[-1])
    if name in ("mv", "addmv", "dot", "vdot"):
        a = args[1] if name == "addmv" else args[0]
        return _prod(a.shape)
    if name in ("convolution", "_convolution"):
        x, w, transposed = args[0], args[1], bool(args[6])
        if transposed:   # weight (Cin, Cout/g, k...): every input element scatters Cout/g * k MACs
            return _prod(x.shape) * _prod(w.shape[1:])
        out_t = out[0] if isinstance(out, (tuple, list)) else out
        return _prod(out_t.shape) * _prod(w.shape[1:])   # weight (Cout, Cin/g, k...)
    if name.startswith("_scaled_dot_product") or name == "scaled_dot_product_attention":
        q, k, v = args[0], args[1], args[2]   # (..., L, E), (..., S, E), (..., S, Ev)
        return _prod(q.shape[:-1]) * int(k.shape[-2]) * (int(q.shape[-1]) + int(v.shape[-1]))
    return 0


def _rnn_macs(rnn: Any, args: tuple, kwargs: dict) -> int:
    """MACs of nn.LSTM/GRU/RNN: every time step multiplies each layer's weight matrices once."""
    import torch

    x = args[0] if args else kwargs["input"]
    if isinstance(x, torch.nn.utils.rnn.PackedSequence):
        steps = int(x.data.shape[0])                     # sum of lengths over the batch
    elif x.dim() == 3:
        steps = int(x.shape[0]) * int(x.shape[1])        # T * B
    else:
        steps = int(x.shape[0])                          # unbatched (T, F)
    per_step = sum(p.numel() for n, p in rnn.named_parameters() if n.startswith("weight_"))
    return steps * per_step


def count_macs(module: Any, example_inputs: Mapping[str, Any]) -> MacCount:
    """Run `module(**example_inputs)` once under no_grad and count its MACs per module."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode

    names = {m: n for n, m in module.named_modules()}
    stack: list[str] = []
    rnn_depth = [0]
    per_module: dict[str, int] = {}
    rnn_types = (torch.nn.LSTM, torch.nn.GRU, torch.nn.RNN)

    def add(name: str, macs: int) -> None:
        if macs:
            per_module[name] = per_module.get(name, 0) + macs

    class _Counter(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if not rnn_depth[0]:
                add(stack[-1] if stack else "", _op_macs(func.overloadpacket.__name__, args, out))
            return out

    def pre(m, args, kwargs):
        stack.append(names[m])
        if isinstance(m, rnn_types):
            rnn_depth[0] += 1

    def post(m, args, kwargs, output):
        if isinstance(m, rnn_types):
            rnn_depth[0] -= 1
            if not rnn_depth[0]:
                add(names[m], _rnn_macs(m, args, kwargs))
        stack.pop()

    handles = []
    for m in names:
        handles.append(m.register_forward_pre_hook(pre, with_kwargs=True))
        handles.append(m.register_forward_hook(post, with_kwargs=True))
    was_training = module.training
    module.eval()
    # nn.TransformerEncoder/MultiheadAttention in eval mode take a fused fast path whose one
    # native op the counter cannot see into: count the ordinary path (same math, same MACs)
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with torch.no_grad(), _Counter():
            module(**example_inputs)
    except (TypeError, RuntimeError, ValueError, IndexError) as e:
        raise InputSpecError(f"the model does not run on the example inputs {list(example_inputs)}: "
                             f"{type(e).__name__}: {e}") from None
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
        for h in handles:
            h.remove()
        module.train(was_training)
    return MacCount(total=sum(per_module.values()), params=count_params(module), per_module=per_module)
