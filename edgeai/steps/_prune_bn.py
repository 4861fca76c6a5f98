"""After pruning: BatchNorm running statistics re-estimated on the training (or calibration) data."""
from __future__ import annotations

from typing import Any, Mapping

from edgeai.steps import StepContext

BN_SAMPLES = 512           # samples used to re-estimate BatchNorm statistics after pruning


def recalibrate_bn(model: Any, ctx: StepContext | None, names: list[str]) -> tuple[int, str]:
    """Re-estimate BatchNorm running statistics of the pruned model: (samples used, note if skipped).

    Removing channels shifts the inputs of the next layers (a removed channel's BN shift and bias
    no longer reach them); fresh statistics undo most of that before any fine-tuning.
    """
    import numpy as np
    import torch

    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return 0, ""
    data = next((d for d in (ctx.train_data, ctx.calibration) if isinstance(d, Mapping)), None) if ctx else None
    if data is None or any(n not in data for n in names):
        return 0, ("BatchNorm statistics were not re-estimated (no training or calibration data with inputs "
                   f"{names}); accuracy before fine-tuning will be lower")
    n = min(BN_SAMPLES, min(len(data[k]) for k in names))
    dtype = next(p.dtype for p in model.parameters() if p.is_floating_point())
    momentum = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None                      # cumulative average over all batches
        m.train()
    try:
        with torch.no_grad():
            for s in range(0, n, 64):
                batch = {k: torch.from_numpy(np.ascontiguousarray(np.asarray(data[k])[s:s + 64])) for k in names}
                model(**{k: v.to(dtype) if v.is_floating_point() else v for k, v in batch.items()})
    finally:
        for m, mom in zip(bns, momentum):
            m.momentum = mom
            m.eval()
    return n, ""
