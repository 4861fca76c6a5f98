"""Distillation's data side: input checks, batches, the teacher's outputs (computed once, cached) and fast kernels.

Teacher outputs do not change between epochs (distill has no augmentation), so the teacher runs
once per training sample; with a cache folder (ctx.extra["teacher_cache"], e.g. under the optimize
cache) they are stored as float16 .npy keyed by the teacher's weights and the data, so the next
pruned candidate distilled from the same teacher on the same data skips the pass.
Conv2d layers with a (k, 1) kernel (audio CNNs such as CREPE) run as Conv1d while distilling: same
weights and result, ~6x faster backward in PyTorch's CPU kernels for a wide first conv (see
`conv_as_1d`).
"""
from __future__ import annotations

import hashlib
import logging
import os
import types
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import numpy as np

from edgeai.errors import ConfigError, DataError
from edgeai.progress import Meter

log = logging.getLogger(__name__)
FP16_MAX = 65504.0


def split(data: Mapping[str, Any] | None, names: list[str], what: str) -> tuple[dict, np.ndarray | None, int]:
    """(inputs, labels, N) from {input name: array (N, ...), optional "labels"}, with one-line errors."""
    if data is None:
        return {}, None, 0
    missing = [n for n in names if n not in data]
    if missing:
        raise DataError(f"distill: {what} lacks input(s) {missing}; it has {sorted(data)}")
    arrays = {n: np.asarray(data[n]) for n in names}
    labels = None if data.get("labels") is None else np.asarray(data["labels"])
    sizes = {n: a.shape[0] if a.ndim else 0 for n, a in arrays.items()}
    if labels is not None:
        sizes["labels"] = labels.shape[0] if labels.ndim else 0
    if len(set(sizes.values())) != 1:
        raise DataError(f"distill: {what} arrays have different lengths on axis 0: {sizes}")
    n = next(iter(sizes.values()))
    if n == 0:
        raise DataError(f"distill: {what} is empty; give at least one sample per input")
    for k, a in arrays.items():
        if a.dtype.kind == "f" and not np.isfinite(a).all():
            raise DataError(f"distill: {what} input {k!r} has NaN/Inf values; clean the data first")
    return arrays, labels, n


def take(arrays: dict, idx: Any) -> dict:
    """The samples `idx` (a slice or indices) of every array."""
    return {k: a[idx] for k, a in arrays.items()}


def batch(arrays: dict, idx: Any, dtype: Any) -> dict:
    import torch

    out = {}
    for k, a in arrays.items():
        t = torch.from_numpy(np.ascontiguousarray(a[idx]))
        out[k] = t.to(dtype) if t.is_floating_point() else t
    return out


def first_tensor(out: Any) -> Any:
    import torch

    leaves = [t for t in torch.utils._pytree.tree_leaves(out) if isinstance(t, torch.Tensor)]
    if not leaves:
        raise ConfigError("distill: the model returns no tensor")
    return leaves[0]


def outputs(model: Any, arrays: dict, n: int, bs: int, dtype: Any) -> Any:
    """The model's first output on all `n` samples, in eval mode, float32."""
    import torch

    model.eval()
    with torch.no_grad():
        return torch.cat([first_tensor(model(**batch(arrays, slice(s, s + bs), dtype))).float()
                          for s in range(0, n, bs)])


def teacher_pass(teacher: Any, arrays: dict, n: int, bs: int, dtype: Any, feats: Any,
                 deadline: Callable[[], bool] = lambda: False) -> tuple[Any, dict, int]:
    """(outputs, feature maps, samples done) of the teacher, computed once; stops after the batch at
    which `deadline()` turns true, so outputs may cover fewer than `n` samples."""
    import torch

    outs, fmaps, done = [], {}, 0
    total = -(-n // bs)
    with torch.no_grad(), Meter("distill teacher pass", total, log) as meter:
        for s in range(0, n, bs):
            outs.append(first_tensor(teacher(**batch(arrays, slice(s, s + bs), dtype))).float())
            for k, v in (feats.values.items() if feats else ()):
                fmaps.setdefault(k, []).append(v.detach().float())
            done = min(n, s + bs)
            meter.advance(1, done - s, f"batch {s // bs + 1}/{total}")
            if deadline() and done < n:
                break
    return torch.cat(outs), {k: torch.cat(v) for k, v in fmaps.items()}, done


def cache_key(teacher: Any, arrays: dict, bs: int) -> str:
    """sha256 of the teacher's state (names, shapes, values), its class and the input arrays."""
    h = hashlib.sha256(type(teacher).__qualname__.encode())
    for name, t in teacher.state_dict().items():
        h.update(f"{name}{tuple(t.shape)}{t.dtype}".encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(f"{name}{a.shape}{a.dtype}".encode())
        h.update(a.tobytes())
    h.update(str(bs).encode())      # batch composition can change a teacher's float rounding
    return h.hexdigest()[:32]


def cached_teacher_pass(teacher: Any, arrays: dict, n: int, bs: int, dtype: Any, cache_dir: str | None,
                        deadline: Callable[[], bool]) -> tuple[Any, int, str]:
    """(outputs, samples done, where from: "computed" | "cache") with the float16 disk cache when given."""
    import torch

    from edgeai.fsutil import atomic_write_bytes

    path = Path(cache_dir) / f"teacher-{cache_key(teacher, arrays, bs)}.npy" if cache_dir else None
    if path is not None and path.is_file():
        try:
            with os.fdopen(os.open(path, os.O_RDONLY | os.O_NOFOLLOW), "rb") as f:   # never a planted link
                out = np.load(f, allow_pickle=False)
            if out.shape[0] == n:
                return torch.from_numpy(out.astype(np.float32)), n, "cache"
        except (OSError, ValueError) as e:          # a truncated or foreign file: compute again
            log.info("distill: teacher cache %s unreadable (%s); recomputing", path, e)
    out, _, done = teacher_pass(teacher, arrays, n, bs, dtype, None, deadline)
    if path is not None and done == n:
        a = out.numpy()
        stored = a.astype(np.float16) if np.abs(a).max(initial=0.0) < FP16_MAX else a
        import io
        buf = io.BytesIO()
        np.save(buf, stored, allow_pickle=False)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, buf.getvalue())
        out = torch.from_numpy(stored.astype(np.float32))    # the same targets as a later cache hit
    return out, done, "computed"


def idle_cores() -> int:
    """The machine's cores less those busy with other work (1-minute load average, this process excluded)."""
    cores = os.cpu_count() or 1
    try:
        busy = max(0.0, os.getloadavg()[0] - 1.0)
    except (OSError, AttributeError):   # no load average on this platform
        busy = 0.0
    return max(1, min(cores, int(cores - busy + 0.5)))


@contextmanager
def all_cores() -> Iterator[int]:
    """torch's intra-op threads at the machine's idle cores while distilling (never fewer than set), restored
    after; timing elsewhere keeps its own --threads. Idle, not all: on a 2-core machine with a load of 13
    from other work, 2 threads trained a small CNN at 17 samples/s where 1 thread did 430."""
    import torch

    before = torch.get_num_threads()
    cores = max(before, idle_cores())
    torch.set_num_threads(cores)
    try:
        yield cores
    finally:
        torch.set_num_threads(before)


def _conv_as_1d(self: Any, x: Any) -> Any:
    """Conv2d with a (k, 1) kernel as Conv1d over H, W folded into the batch: (B, C, H, W) -> (B W, C, H)."""
    import torch.nn.functional as F

    b, c, h, w = x.shape
    x1 = x.squeeze(-1) if w == 1 else x.permute(0, 3, 1, 2).reshape(b * w, c, h)
    y = F.conv1d(x1, self.weight.squeeze(-1), self.bias, self.stride[0], self.padding[0], self.dilation[0],
                 self.groups)
    return y.unsqueeze(-1) if w == 1 else y.reshape(b, w, y.shape[1], y.shape[2]).permute(0, 2, 3, 1)


def _one_d(m: Any) -> bool:
    import torch

    return (type(m) is torch.nn.Conv2d and m.kernel_size[1] == 1 and m.stride[1] == 1 and m.dilation[1] == 1
            and m.padding_mode == "zeros" and not isinstance(m.padding, str) and m.padding[1] == 0
            and "forward" not in vars(m))


@contextmanager
def conv_as_1d(*models: Any) -> Iterator[int]:
    """Run every Conv2d of `models` whose kernel is (k, 1) as a Conv1d (same weights, same output), restored
    after. PyTorch's CPU Conv2d backward for a (512, 1) kernel over 1024 samples took 3.5 s a batch of 64
    where Conv1d takes 0.57 s (2 cores). Yields how many layers run so."""
    convs = [m for model in models for m in model.modules() if _one_d(m)]
    for m in convs:
        m.forward = types.MethodType(_conv_as_1d, m)
    try:
        yield len(convs)
    finally:
        for m in convs:
            vars(m).pop("forward", None)
