"""Feature-map distillation: forward hooks on paired student/teacher layers and linear width adapters."""
from __future__ import annotations

from typing import Any

from edgeai.errors import ConfigError
from edgeai.steps._distill_data import batch, first_tensor


class Features:
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
            self.handles.append(m.register_forward_hook(lambda mod, a, out, n=n: self.values.__setitem__(n, first_tensor(out))))

    def close(self) -> None:
        for h in self.handles:
            h.remove()


def adapt(x: Any, adapter: Any, dim: int) -> Any:
    if adapter is None:
        return x
    return adapter(x.movedim(dim, -1)).movedim(-1, dim)


def adapters(model: Any, train_x: dict, dtype: Any, pairs: list, s_feats: Any, t_feats: Any, t_train_f: dict) -> Any:
    """Linear maps from student to teacher feature widths, for feature pairs whose widths differ."""
    import torch

    out = torch.nn.ModuleDict()
    if not pairs:
        return out
    with torch.no_grad():
        model.eval()
        model(**batch(train_x, slice(0, 1), dtype))
    for i, (s, t) in enumerate(pairs):
        cs = s_feats.values[s].shape[s_feats.channel_dim[s]]
        ct = t_train_f[t].shape[t_feats.channel_dim[t]]
        if s_feats.values[s].shape[2:] != t_train_f[t].shape[2:] and s_feats.channel_dim[s] == 1:
            raise ConfigError(f"distill: feature maps of '{s}' {tuple(s_feats.values[s].shape[1:])} and "
                              f"'{t}' {tuple(t_train_f[t].shape[1:])} differ in size; pair layers of equal resolution")
        if cs != ct:
            out[str(i)] = torch.nn.Linear(cs, ct).to(dtype)
    return out
