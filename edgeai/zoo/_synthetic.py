"""Shared by the generated-data zoo models: a short deterministic training loop and a cache of what it trained.

A model is trained once per machine, not once per process: the trained state_dict is kept in memory and
on disk, under $EDGEAI_ZOO_CACHE (default ~/.cache/edgeai/zoo; "off" disables the disk), in a file named
by a digest of the model key, the seed, the torch version and the zoo's source code, so a changed zoo
trains afresh. Every process (optimize's build workers, the tests' subprocesses) then uses the same weights
in a second instead of training for a minute on a slower thread count. The file holds tensors only and is
read with `torch.load(weights_only=True)`; one that does not load is trained again and replaced.
"""
from __future__ import annotations

import copy
import hashlib
import io
import logging
import os
import time
from pathlib import Path
from typing import Callable

log = logging.getLogger(__name__)

_TRAINED: dict[tuple, dict] = {}   # (model key, size) -> trained state_dict
CACHE_ENV = "EDGEAI_ZOO_CACHE"


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
            path = cache_path(key, seed)
            state = _load(path) if path is not None else None
            if state is None:
                state = copy.deepcopy(train(model).state_dict())
                if path is not None:
                    _save(path, state)
            _TRAINED[key] = state
    model.load_state_dict(_TRAINED[key])
    return model.eval()


def cache_path(key: tuple, seed: int = 0) -> Path | None:
    """Where the trained weights of `key` are kept on disk, or None when the disk cache is off."""
    import torch

    root = os.environ.get(CACHE_ENV, "").strip()
    if root.lower() in ("off", "0", "none"):
        return None
    digest = hashlib.sha256(repr((key, seed, torch.__version__)).encode())
    for source in sorted(Path(__file__).parent.glob("*.py")):
        digest.update(source.name.encode() + b"\0" + source.read_bytes())
    folder = Path(root).expanduser() if root else Path.home() / ".cache" / "edgeai" / "zoo"
    return folder / f"{'-'.join(map(str, key))}-{digest.hexdigest()[:16]}.pt"


def _load(path: Path) -> dict | None:
    import torch

    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - a truncated or foreign file: train again and replace it
        log.warning("zoo cache %s does not load (%s); training again", path, e)
        return None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        log.warning("zoo cache %s is not a state dict; training again", path)
        return None
    log.info("trained weights read from %s", path)
    return state


def _save(path: Path, state: dict) -> None:
    """Best effort: a read-only home or a full disk costs the next process a training run, nothing more."""
    import torch

    from edgeai.fsutil import atomic_write_bytes

    buf = io.BytesIO()
    torch.save(state, buf)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, buf.getvalue())
    except OSError as e:
        log.warning("zoo cache: could not keep the trained weights in %s (%s)", path, e)
