"""How many channels/heads/hidden units each prunable slot keeps, chosen to hit a MACs target (pure Python).

Each slot s keeps a fraction f_s of its width. A layer's MACs scale with the product of the
fractions of the slots that set its widths (a conv scales with its input and output slots, an
LSTM's recurrent matmul with its hidden fraction squared), so the model's MACs for any choice
of widths are predicted without running it. One knob `strength` sets every slot's cut ratio;
a bisection on it finds the widths whose predicted MACs are closest to the target.

- "uniform": every slot cuts the same ratio.
- "macs": a slot cuts in proportion to the square root of the MACs it controls, relative to the
  heaviest slot, so the MAC-heavy layers shrink most and cheap ones are left nearly whole.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

ALLOCATIONS = ("macs", "uniform")
MACS_EXPONENT = 0.25    # "macs": cut ratio ~ (controlled MACs / heaviest slot's) ** MACS_EXPONENT (0.5 over-cut a MobileNetV2 head)


@dataclass
class Slot:
    """One independently prunable width: a channel group, the heads of an attention, an RNN's hidden units."""

    name: str
    kind: str                       # "channels" | "heads" | "hidden"
    width: int                      # units now (channels, heads or hidden units)
    channels_per_unit: int = 1      # head_dim for heads, else 1
    protected: str = ""             # why it is never cut ("" = prunable)
    # module name -> [(share of that module's MACs, exponent of this slot's kept fraction)]
    scales: dict[str, list[tuple[float, int]]] = field(default_factory=dict)

    def controlled_macs(self, per_module: dict[str, int]) -> int:
        return sum(per_module.get(m, 0) for m in self.scales)


def keep_units(slot: Slot, ratio: float, round_to: int, max_layer_ratio: float, min_channels: int = 0) -> int:
    """Units kept when cutting `ratio` of `slot`: rounded to `round_to` channels, never below the floor.

    The floor is the larger of (1 - max_layer_ratio) of the width and `min_channels` (so a cut never
    makes a layer narrower than the layers protect_narrow keeps whole).
    """
    w = slot.width
    if slot.protected or ratio <= 0:
        return w
    ratio = min(ratio, max_layer_ratio)
    step = 1 if slot.kind == "heads" else max(1, round_to)
    floor_units = max(math.ceil(w * (1.0 - max_layer_ratio) - 1e-9),
                      math.ceil(min_channels / slot.channels_per_unit - 1e-9))
    floor_units = max(step, math.ceil(floor_units / step) * step, 1)
    if floor_units >= w:
        return w
    keep = int(round(w * (1.0 - ratio) / step)) * step
    return max(floor_units, min(w, keep))


def weights(slots: Sequence[Slot], per_module: dict[str, int], allocation: str) -> list[float]:
    """Relative cut ratio of each slot (1.0 for the slot cut hardest)."""
    if allocation == "uniform":
        return [1.0] * len(slots)
    macs = [float(s.controlled_macs(per_module)) for s in slots]
    top = max((m for s, m in zip(slots, macs) if not s.protected), default=0.0)
    if top <= 0:
        return [1.0] * len(slots)
    return [(m / top) ** MACS_EXPONENT if m > 0 else 0.0 for m in macs]


def allocate(slots: Sequence[Slot], w: Sequence[float], strength: float, round_to: int,
             max_layer_ratio: float, min_channels: int = 0) -> list[int]:
    return [keep_units(s, strength * wi, round_to, max_layer_ratio, min_channels) for s, wi in zip(slots, w)]


def predict_macs(slots: Sequence[Slot], keeps: Sequence[int], per_module: dict[str, int]) -> float:
    """Predicted MACs when slot i keeps keeps[i] units; modules outside every slot stay as they are."""
    factor = {m: 1.0 for m in per_module}
    for s, k in zip(slots, keeps):
        f = k / s.width
        for m, terms in s.scales.items():
            if m in factor:
                factor[m] *= sum(share * f ** e for share, e in terms)
    return sum(per_module[m] * factor[m] for m in per_module)


def search(slots: Sequence[Slot], per_module: dict[str, int], target: float, allocation: str,
           round_to: int, max_layer_ratio: float, min_channels: int = 0, iters: int = 60) -> tuple[list[int], float, float]:
    """Widths whose predicted MACs are closest to `target` (ties go to the smaller model).

    Returns (keeps, their predicted MACs, the smallest MACs any strength reaches).
    """
    w = weights(slots, per_module, allocation)
    live = [wi for s, wi in zip(slots, w) if not s.protected and wi > 0]
    if not live:
        keeps = [s.width for s in slots]
        pred = predict_macs(slots, keeps, per_module)
        return keeps, pred, pred
    hi = max_layer_ratio / min(live)          # at this strength every live slot is at its floor
    floor = predict_macs(slots, allocate(slots, w, hi, round_to, max_layer_ratio, min_channels), per_module)
    lo = 0.0
    candidates = []
    for _ in range(iters):
        mid = (lo + hi) / 2
        keeps = allocate(slots, w, mid, round_to, max_layer_ratio, min_channels)
        pred = predict_macs(slots, keeps, per_module)
        candidates.append((keeps, pred))
        if pred > target:
            lo = mid
        else:
            hi = mid
    for strength in (lo, hi):
        keeps = allocate(slots, w, strength, round_to, max_layer_ratio, min_channels)
        candidates.append((keeps, predict_macs(slots, keeps, per_module)))
    keeps, pred = min(candidates, key=lambda kp: (abs(kp[1] - target), kp[1]))
    return keeps, pred, floor
