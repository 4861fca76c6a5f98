"""Find where a TorchScript trace turned a tensor computed from the input values into a Python value.

Tracing records tensor operations only: `if x.sum() > 0:` runs once, on the example inputs, and the
traced graph keeps the branch they took. torch warns (TracerWarning) for every tensor converted to a
Python bool or number, but also for the shape checks inside torch's own modules, which are harmless.
While tracing, each conversion is looked up in the trace: it is a data-dependent branch when its value
depends on a model input through anything other than the input's shape.
"""
from __future__ import annotations

import contextlib
import sys
from typing import Iterator

# ops whose output depends only on their input's shape, and ops whose output shape depends on values
_SHAPE_OPS = frozenset(("aten::size", "aten::dim", "aten::numel", "aten::len", "prim::shape", "aten::sym_size"))
_VALUE_SHAPED_OPS = frozenset(("aten::nonzero", "aten::nonzero_numpy", "aten::masked_select", "aten::unique_dim",
                               "aten::_unique", "aten::_unique2", "aten::unique_consecutive", "aten::bincount",
                               "aten::repeat_interleave", "aten::argwhere"))
# Tensor methods through which Python reads a tensor's value: bool(t), int(t), float(t), t.item(), ...
_CONVERSIONS = {"__bool__": "bool", "__int__": "int", "__float__": "float", "__index__": "index",
                "item": "number", "tolist": "list"}


@contextlib.contextmanager
def watch_branches(num_inputs: int) -> Iterator[list[str]]:
    """Yield a list that fills with "file.py:LINE (bool)" for each conversion of an input-dependent
    tensor during a trace run inside the block (the trace's first `num_inputs` inputs are the model's)."""
    import torch

    found: list[str] = []
    originals = {name: getattr(torch.Tensor, name) for name in _CONVERSIONS}

    def wrap(name, method):
        def converted(self, *args, **kwargs):
            if torch._C._get_tracing_state() is not None and _reads_input_values(self, num_inputs):
                frame = sys._getframe(1)
                where = f"{frame.f_code.co_filename.rsplit('/', 1)[-1]}:{frame.f_lineno} ({_CONVERSIONS[name]})"
                if where not in found:
                    found.append(where)
            return method(self, *args, **kwargs)
        return converted

    for name, method in originals.items():
        setattr(torch.Tensor, name, wrap(name, method))
    try:
        yield found
    finally:
        for name, method in originals.items():
            setattr(torch.Tensor, name, method)


def _reads_input_values(tensor, num_inputs: int) -> bool:
    import torch
    try:
        value = torch._C._get_value_trace(tensor)
    except RuntimeError:  # a tensor the trace does not know (created outside it): a constant
        return False
    if value is None:
        return False
    inputs = {v.unique(): i for i, v in enumerate(torch._C._get_tracing_state().graph().inputs())}
    seen, stack = set(), [(value, False)]
    while stack:
        v, shape_only = stack.pop()
        if (v.unique(), shape_only) in seen:
            continue
        seen.add((v.unique(), shape_only))
        node = v.node()
        kind = node.kind()
        if shape_only and kind in _VALUE_SHAPED_OPS:
            return True  # the size of nonzero(x) depends on x's values
        if kind == "prim::Param":
            if not shape_only and inputs.get(v.unique(), num_inputs) < num_inputs:
                return True
            continue
        stack.extend((i, shape_only or kind in _SHAPE_OPS) for i in node.inputs())
    return False
