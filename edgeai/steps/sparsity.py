"""Model step "sparsity": zero the smallest weights (unstructured or 2:4); the model stays dense.

Zeros in dense weights give no speedup on dense CPU kernels (the team measured 0.98x at 50%);
they only make the file compress better, which this step measures and reports. For speed, prune.
"""
from __future__ import annotations

import gzip
import io
import logging
from dataclasses import dataclass
from typing import Any, Mapping

from edgeai.errors import ConfigError, UnknownNameError
from edgeai.steps import MODEL_STEPS, ModelStep, StepContext, StepReport, config_to_dict

log = logging.getLogger(__name__)

PATTERNS = ("unstructured", "2:4")
SCOPES = ("global", "layer")
NO_SPEEDUP = ("zeros in dense weights give no speedup on dense CPU kernels; "
              "they only make the file compress better")


@dataclass(frozen=True)
class SparsityConfig:
    """Magnitude sparsity on Linear, Conv and RNN weight matrices."""

    ratio: float = 0.5                 # fraction of weights set to zero ("2:4" is always 0.5)
    pattern: str = "unstructured"      # "unstructured" | "2:4" (2 of every 4 along the input dim kept)
    scope: str = "global"              # "global": one threshold for all layers | "layer": ratio per layer


def _validate(config: SparsityConfig) -> None:
    if config.pattern not in PATTERNS:
        raise UnknownNameError(f"sparsity: no pattern named {config.pattern!r}; known: {', '.join(PATTERNS)}")
    if config.scope not in SCOPES:
        raise UnknownNameError(f"sparsity: no scope named {config.scope!r}; known: {', '.join(SCOPES)}")
    if not 0.0 < float(config.ratio) < 1.0:
        raise ConfigError(f"sparsity: ratio must be between 0 and 1, got {config.ratio}")
    if config.pattern == "2:4" and abs(float(config.ratio) - 0.5) > 1e-9:
        raise ConfigError(f"sparsity: the 2:4 pattern zeroes exactly half the weights; set ratio=0.5, "
                          f"got {config.ratio}")


def _bake_parametrizations(model: Any) -> None:
    """Make earlier torch.nn.utils.prune masks and parametrizations permanent (plain tensors)."""
    import torch.nn.utils.parametrize as parametrize
    import torch.nn.utils.prune as tprune

    for m in model.modules():
        for hook in list(m._forward_pre_hooks.values()):
            if isinstance(hook, tprune.BasePruningMethod):
                tprune.remove(m, hook._tensor_name)
        if parametrize.is_parametrized(m):
            for name in list(m.parametrizations.keys()):
                parametrize.remove_parametrizations(m, name, leave_parametrized=True)


def sparse_weights(model: Any) -> dict[str, Any]:
    """Qualified name -> weight matrix the step sparsifies (Linear, Conv, LSTM/GRU/RNN weights)."""
    import torch.nn as nn

    found = {}
    for mname, m in model.named_modules():
        if isinstance(m, (nn.Linear, nn.modules.conv._ConvNd)):
            found[f"{mname}.weight" if mname else "weight"] = m.weight
        elif isinstance(m, (nn.LSTM, nn.GRU, nn.RNN)):
            for pname, p in m.named_parameters(recurse=False):
                if pname.startswith("weight_"):
                    found[f"{mname}.{pname}" if mname else pname] = p
    return found


def _keep_mask_2_4(w: Any) -> Any | None:
    """Keep the 2 largest of every 4 consecutive weights along the input (reduction) dimension."""
    import torch

    flat = w.detach().reshape(w.shape[0], -1)     # (out, in * kernel)
    if flat.shape[1] % 4:
        return None
    groups = flat.abs().reshape(flat.shape[0], -1, 4)
    top = groups.topk(2, dim=-1).indices
    mask = torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, top, True)
    return mask.reshape(w.shape)


def _keep_masks(weights: dict[str, Any], config: SparsityConfig) -> tuple[dict[str, Any], list[str]]:
    import torch

    masks, skipped = {}, []
    if config.pattern == "2:4":
        for name, w in weights.items():
            mask = _keep_mask_2_4(w)
            if mask is None:
                skipped.append(name)
            else:
                masks[name] = mask
        return masks, skipped
    if config.scope == "layer":
        for name, w in weights.items():
            k = int(float(config.ratio) * w.numel())
            mask = torch.ones(w.numel(), dtype=torch.bool)
            mask[torch.topk(w.detach().abs().flatten(), k, largest=False).indices] = False
            masks[name] = mask.reshape(w.shape)
        return masks, skipped
    flat = torch.cat([w.detach().abs().flatten() for w in weights.values()])
    k = int(float(config.ratio) * flat.numel())
    keep = torch.ones(flat.numel(), dtype=torch.bool)
    keep[torch.topk(flat, k, largest=False).indices] = False
    offset = 0
    for name, w in weights.items():
        masks[name] = keep[offset:offset + w.numel()].reshape(w.shape)
        offset += w.numel()
    return masks, skipped


def gzip_size(model: Any) -> int:
    """Bytes of the gzip-compressed state dict (what a zipped model file would weigh)."""
    import torch

    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return len(gzip.compress(buf.getvalue(), compresslevel=6))


def sparsify(module: Any, example_inputs: Mapping[str, Any], config: SparsityConfig,
             ctx: StepContext | None = None) -> tuple[Any, StepReport]:
    """Zero the smallest-magnitude weights of a copy of `module`; returns (dense copy, report)."""
    import copy

    import torch

    _validate(config)
    model = copy.deepcopy(module)
    _bake_parametrizations(model)
    weights = sparse_weights(model)
    if not weights:
        raise ConfigError("sparsity: the model has no Linear, Conv or RNN weights to sparsify")
    size_before = gzip_size(model)
    masks, skipped = _keep_masks(weights, config)
    with torch.no_grad():
        for name, mask in masks.items():
            weights[name].mul_(mask.to(weights[name].dtype))
    per_layer = {n: round(float((w == 0).float().mean()), 4) for n, w in weights.items()}
    zeros = sum(int((w == 0).sum()) for w in weights.values())
    total = sum(w.numel() for w in weights.values())
    size_after = gzip_size(model)
    notes = [f"{NO_SPEEDUP} (gzip size {size_after / size_before:.2f}x of the dense model's)"]
    if skipped:
        notes.append(f"2:4 skipped {len(skipped)} weight(s) whose input size is not a multiple of 4: "
                     + ", ".join(skipped[:5]))
    details = {"sparsity": round(zeros / total, 4), "per_layer": per_layer, "gzip_bytes_before": size_before,
               "gzip_bytes_after": size_after, "gzip_ratio": round(size_after / size_before, 4)}
    log.info("sparsity: %.1f%% of %d weights zeroed; gzip %d -> %d bytes", 100 * zeros / total, total,
             size_before, size_after)
    return model, StepReport("sparsity", config_to_dict(config), notes, details)


MODEL_STEPS.add("sparsity", ModelStep(SparsityConfig, sparsify))
