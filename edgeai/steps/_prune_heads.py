"""Attention heads as prunable units: find attention blocks (timm qkv, Hugging Face q/k/v), score and cut heads.

A head is a block of head_dim rows in each projection that writes it (q, k and v; a fused timm
`qkv` holds the three blocks one after the other) and the same block of input columns of the
output projection that reads it. Heads are independent until that projection sums them, so
removing a head is exact: the pruned block equals the original with the head's output columns zeroed.
The module that reshapes into heads (its forward reads the head count from an attribute) gets the
new head count and every width derived from it, so the forward stays consistent.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Layout:
    """Where one attention family keeps its heads; names are relative to the attention block."""

    family: str
    writers: tuple[str, ...]       # Linear layers whose output rows are head blocks (q, k, v; or one fused qkv)
    reader: str                    # Linear layer whose input columns are head blocks (the output projection)
    holder: str                    # module whose forward reshapes into heads ("" = the block itself)
    count: str                     # its head-count attribute
    widths: tuple[str, ...] = ()   # its attributes equal to heads * head_dim, updated with the count
    fused: bool = False            # one writer holding q, k and v blocks (timm)
    size: str = "attention_head_size"   # its head-size attribute, if it has one (must equal head_dim)

    def names(self, block_name: str) -> list[str]:
        """Qualified names of the block, the holder, the writers and the reader (for MACs and pinning)."""
        parts = ["", self.holder, *self.writers, self.reader]
        return list(dict.fromkeys(join(block_name, p) for p in parts))


LAYOUTS = (
    Layout("timm", ("qkv",), "proj", "", "num_heads", fused=True),
    Layout("bert", ("self.query", "self.key", "self.value"), "output.dense", "self", "num_attention_heads",
           ("all_head_size",)),                                       # BERT, RoBERTa, ELECTRA, ...
    Layout("vit", ("attention.query", "attention.key", "attention.value"), "output.dense", "attention",
           "num_attention_heads", ("all_head_size",)),                # ViT, DeiT, ...
    Layout("distilbert", ("q_lin", "k_lin", "v_lin"), "out_lin", "", "n_heads", ("dim",)),
    Layout("bart", ("q_proj", "k_proj", "v_proj"), "out_proj", "", "num_heads",
           size="head_dim"),                                          # wav2vec2, HuBERT, BART, Whisper, ...
)


def join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix and name else prefix or name


def _get(block: Any, name: str) -> Any:
    try:
        return block.get_submodule(name) if name else block
    except AttributeError:
        return None


def _match(block: Any, layout: Layout) -> bool:
    import torch.nn as nn

    holder = _get(block, layout.holder)
    writers = [_get(block, w) for w in layout.writers]
    reader = _get(block, layout.reader)
    h = getattr(holder, layout.count, None) if holder is not None else None
    if not (isinstance(h, int) and h > 0 and isinstance(reader, nn.Linear)
            and all(isinstance(w, nn.Linear) for w in writers)):
        return False
    width = reader.in_features
    out = sum(w.out_features for w in writers)
    if out != 3 * width or width % h or any(w.out_features != writers[0].out_features for w in writers):
        return False
    hd = width // h
    size = getattr(holder, layout.size, hd)
    return size == hd and all(getattr(holder, a, width) == width for a in layout.widths)


def find(model: Any) -> dict[str, Layout]:
    """Attention blocks of `model` by qualified name, with their layout (first matching family)."""
    found = {}
    for name, m in model.named_modules():
        layout = next((lay for lay in LAYOUTS if _match(m, lay)), None)
        if layout is not None:
            found[name] = layout
    return found


def num_heads(block: Any, layout: Layout) -> int:
    return int(getattr(_get(block, layout.holder), layout.count))


def head_dim(block: Any, layout: Layout) -> int:
    return _get(block, layout.reader).in_features // num_heads(block, layout)


def head_index(block: Any, layout: Layout, heads: Any) -> tuple[Any, Any]:
    """(rows of each writer, columns of the reader) that belong to `heads`."""
    import torch

    hd, width = head_dim(block, layout), _get(block, layout.reader).in_features
    cols = torch.cat([torch.arange(h * hd, (h + 1) * hd) for h in heads.tolist()])
    rows = torch.cat([p * width + cols for p in range(3)]) if layout.fused else cols
    return rows, cols


def scores(block: Any, layout: Layout, importance: str) -> Any:
    """Per head: the norm of its writer rows and reader columns (|w * grad| for taylor, l2 for bn_scale)."""
    import torch

    def elem(w):
        x = w.detach()
        if importance == "taylor" and w.grad is not None:
            return (x * w.grad).abs()
        return x.abs() if importance == "l1" else x.pow(2)

    writers = [elem(_get(block, w).weight) for w in layout.writers]
    reader = elem(_get(block, layout.reader).weight)
    out = []
    for h in range(num_heads(block, layout)):
        rows, cols = head_index(block, layout, torch.tensor([h]))
        s = sum(w[rows].sum() for w in writers) + reader[:, cols].sum()
        out.append(s if importance in ("l1", "taylor") else s.sqrt())
    return torch.stack(out)


def zero_readers(block: Any, layout: Layout, gone: Any) -> None:
    """On an unpruned copy: zero the output projection's columns that read heads `gone`."""
    import torch

    with torch.no_grad():
        _get(block, layout.reader).weight[:, head_index(block, layout, gone)[1]] = 0


def cut(block: Any, layout: Layout, keep: Any) -> None:
    """Keep heads `keep` (sorted indices): slice the projections in place and update the head counts."""
    import torch
    import torch.nn as nn

    rows, cols = head_index(block, layout, keep)
    hd = head_dim(block, layout)
    with torch.no_grad():
        for name in layout.writers:
            w = _get(block, name)
            w.weight = nn.Parameter(w.weight[rows].clone())
            if w.bias is not None:
                w.bias = nn.Parameter(w.bias[rows].clone())
            w.out_features = len(rows)
        r = _get(block, layout.reader)
        r.weight = nn.Parameter(r.weight[:, cols].clone())
        r.in_features = len(cols)
    holder = _get(block, layout.holder)
    setattr(holder, layout.count, len(keep))
    for attr in layout.widths:
        setattr(holder, attr, len(keep) * hd)
