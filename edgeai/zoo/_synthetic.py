"""Shared by the generated-data zoo models: a short deterministic training loop and an in-process cache."""
from __future__ import annotations

import copy
import logging
import time
from typing import Callable

log = logging.getLogger(__name__)

_TRAINED: dict[tuple, dict] = {}   # (model key, size) -> trained state_dict


def cosine_logits(emb, prototypes, scale: float = 16.0):
    """Scaled cosine between L2-normalized embeddings (B, D) and class prototypes (C, D): a cosine objective."""
    import torch.nn.functional as F

    return scale * F.normalize(emb, dim=-1) @ F.normalize(prototypes, dim=-1).T


def fit(model, head, batches: Callable[[int], tuple], steps: int, lr: float, seed: int = 0):
    """Train `model` (and `head`, a module mapping its output to logits; None: it outputs logits) with
    cross-entropy for `steps`.

    `batches(step)` returns (inputs tuple, labels). Deterministic for a fixed seed and thread count.
    """
    import torch
    import torch.nn.functional as F

    torch.manual_seed(seed)
    params = list(model.parameters()) + (list(head.parameters()) if head is not None else [])
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    model.train()
    t0 = time.perf_counter()
    for step in range(steps):
        inputs, labels = batches(step)
        out = model(*inputs)
        loss = F.cross_entropy(head(out) if head is not None else out, labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
    log.info("trained %s for %d steps in %.1f s (last loss %.3f)", type(model).__name__, steps,
             time.perf_counter() - t0, float(loss.detach()))
    return model.eval()


def cached(key: tuple, build: Callable[[], object], train: Callable[[object], object], seed: int = 0):
    """A fresh module from `build()` carrying the weights `train` gave it the first time `key` was asked for.

    The first build and the training run with the global torch RNG seeded with `seed` (and restored after).
    """
    import torch

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = build()
        if key not in _TRAINED:
            _TRAINED[key] = copy.deepcopy(train(model).state_dict())
    model.load_state_dict(_TRAINED[key])
    return model.eval()
