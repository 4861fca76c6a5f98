"""Retrain the zoo's reference models on digits and write their weights, metrics and data files.

    python -m edgeai.zoo.train [--model all|cnn|lstm|vit] [--epochs N] [--out DIR | --write-weights]

Deterministic on one machine: fixed seeds, torch.use_deterministic_algorithms(True), fixed threads.
Writes (atomically) DIR/weights/digits_<model>.pt (fp32 state_dict), DIR/weights/metrics.json
and DIR/data/digits_{test,calib}_{image,rows}.npz; DIR defaults to a new folder
./zoo-retrained-TIMESTAMP, and is this package's folder (replacing the shipped weights) only
with --write-weights.
"""
from __future__ import annotations

import argparse
import io
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edgeai.fsutil import atomic_write_bytes, atomic_write_text
from edgeai.zoo import data
from edgeai.zoo.models import DigitsCNN, DigitsLSTM, DigitsViT

log = logging.getLogger("edgeai.zoo.train")

ZOO_DIR = Path(__file__).resolve().parent
SEED = 0
# One thread by default: on a 2-core machine shared with other jobs, 2 threads measured 3-5x
# slower per epoch than 1 (threads wait on each other); on an idle machine 2 gain only ~1.5x.
# Weights are bit-reproducible for a fixed thread count, not across thread counts.
THREADS = 1


@dataclass(frozen=True)
class TrainConfig:
    """How one reference model is built and trained."""

    key: str            # "cnn" | "lstm" | "vit"
    model_cls: type
    layout: str         # data layout the model reads: "image" | "rows"
    epochs: int
    lr: float
    weight_decay: float
    batch_size: int = 64
    warmup_epochs: float = 0.0
    label_smoothing: float = 0.0
    grad_clip: float | None = None
    augment: bool = True
    channels_last: bool = False  # NHWC activations: ~1.5-2x faster depthwise convs on CPU


CONFIGS = {
    "cnn": TrainConfig("cnn", DigitsCNN, "image", epochs=6, lr=4e-3, weight_decay=1e-4,
                       batch_size=128, channels_last=True),
    "lstm": TrainConfig("lstm", DigitsLSTM, "rows", epochs=20, lr=3e-3, weight_decay=1e-4,
                        grad_clip=1.0),
    "vit": TrainConfig("vit", DigitsViT, "image", epochs=16, lr=1e-3, weight_decay=0.05,
                       batch_size=32, warmup_epochs=1),
}


def weights_name(key: str) -> str:
    return f"digits_{key}.pt"


def augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Light random affine on (B, 1, 32, 32): rotate +-10 deg, scale 0.9-1.1, shift +-2 px."""
    b = x.shape[0]
    angle = (torch.rand(b, generator=gen) * 2 - 1) * math.radians(10)
    scale = 0.9 + 0.2 * torch.rand(b, generator=gen)
    shift = (torch.rand(b, 2, generator=gen) * 2 - 1) * (2 / 16)  # 2 px in [-1, 1] coordinates
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1),
                         torch.stack([sin, cos, shift[:, 1]], 1)], 1)  # (B, 2, 3)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    # background is -0.5 after normalisation; shift it to 0 so zero padding matches it
    return F.grid_sample(x + 0.5, grid, align_corners=False) - 0.5


def count_macs(model: nn.Module, example: torch.Tensor) -> int:
    """Multiply-accumulates of Conv2d, Linear and LSTM layers for one sample (batch 1)."""
    total = 0

    def hook(m: nn.Module, inputs: tuple, out) -> None:
        nonlocal total
        if isinstance(m, nn.Conv2d):
            k = m.kernel_size[0] * m.kernel_size[1] * (m.in_channels // m.groups)
            total += out[0].numel() * k
        elif isinstance(m, nn.Linear):
            total += out[0].numel() * m.in_features
        elif isinstance(m, nn.LSTM):
            seq = inputs[0].shape[1]
            for layer in range(m.num_layers):
                n_in = m.input_size if layer == 0 else m.hidden_size
                total += seq * 4 * m.hidden_size * (n_in + m.hidden_size)

    handles = [m.register_forward_hook(hook) for m in model.modules()]
    try:
        with torch.no_grad():
            model(example[:1])
    finally:
        for h in handles:
            h.remove()
    return total


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 512) -> float:
    model.eval()
    pred = torch.cat([model(x[i:i + batch]).argmax(1) for i in range(0, len(x), batch)])
    return float((pred == y).float().mean())


def train_one(cfg: TrainConfig, epochs: int | None = None) -> tuple[nn.Module, dict]:
    """Train one model from a fixed seed; return it (eval mode) and its metrics."""
    epochs = epochs or cfg.epochs
    torch.manual_seed(SEED)
    gen = torch.Generator().manual_seed(SEED)
    x_np, y_np = data.digits("train", "image")  # augment in image layout, reshape for rows
    x_train, y_train = torch.from_numpy(x_np), torch.from_numpy(y_np)
    xt_np, yt_np = data.digits("test", cfg.layout)
    x_test, y_test = torch.from_numpy(xt_np), torch.from_numpy(yt_np)
    to_layout = (lambda t: t[:, 0]) if cfg.layout == "rows" else (lambda t: t)

    model = cfg.model_cls()
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = math.ceil(len(x_train) / cfg.batch_size)
    total, warmup = epochs * steps_per_epoch, int(cfg.warmup_epochs * steps_per_epoch)

    def lr_factor(step: int) -> float:  # linear warmup, then cosine to zero
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor)
    start = time.perf_counter()
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(x_train), generator=gen)
        loss_sum = 0.0
        for i in range(0, len(order), cfg.batch_size):
            idx = order[i:i + cfg.batch_size]
            xb = to_layout(augment(x_train[idx], gen) if cfg.augment else x_train[idx])
            if cfg.channels_last:  # same shape, NHWC memory order
                xb = xb.contiguous(memory_format=torch.channels_last)
            loss = F.cross_entropy(model(xb), y_train[idx], label_smoothing=cfg.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip is not None:
                nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            sched.step()
            loss_sum += loss.item() * len(idx)
        acc = accuracy(model, x_test, y_test)
        log.info("%s epoch %d/%d  loss %.4f  test top-1 %.4f  (%.1f s)", cfg.key, epoch + 1,
                 epochs, loss_sum / len(x_train), acc, time.perf_counter() - start)
    model.eval()
    metrics = {
        "accuracy": round(accuracy(model, x_test, y_test), 6),
        "test_samples": len(y_test),
        "params": sum(p.numel() for p in model.parameters()),
        "macs": count_macs(model, x_test),
        "epochs": epochs,
        "seed": SEED,
        "train_seconds": round(time.perf_counter() - start, 1),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }
    return model, metrics


def write_data_files(out: Path) -> None:
    """The test and calibration feeds as compressed .npz files (keys: input name [+ labels])."""
    for kind, makers in (("test", (data.test_image, data.test_rows)),
                         ("calib", (data.calib_image, data.calib_rows))):
        for layout, make in zip(("image", "rows"), makers):
            buf = io.BytesIO()
            np.savez_compressed(buf, **make())
            atomic_write_bytes(out / "data" / data.npz_path(kind, layout).name, buf.getvalue())


def write_weights(out: Path, key: str, model: nn.Module) -> None:
    buf = io.BytesIO()
    torch.save({k: v.detach().float().contiguous() for k, v in model.state_dict().items()}, buf)
    atomic_write_bytes(out / "weights" / weights_name(key), buf.getvalue())


def add_output_arguments(parser: argparse.ArgumentParser) -> None:
    """--out DIR | --write-weights: a retrain never replaces the shipped weights unless asked to."""
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--out", type=Path, default=None,
                       help="folder to write weights/ (and data/) into (default: a new ./zoo-retrained-TIMESTAMP)")
    where.add_argument("--write-weights", action="store_true",
                       help=f"write into the package ({ZOO_DIR}), replacing the shipped weights and metrics")


def output_folder(parser: argparse.ArgumentParser, args) -> Path:
    """The folder a retrain writes into: --out, the package with --write-weights, else a new folder."""
    if args.write_weights:
        return ZOO_DIR
    if args.out is not None:
        return args.out
    out = Path.cwd() / time.strftime("zoo-retrained-%Y%m%d-%H%M%S")
    if out.exists():
        parser.error(f"{out} already exists; pass --out DIR")
    log.info("writing to %s (the shipped weights stay; --write-weights replaces them)", out)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m edgeai.zoo.train", description=__doc__.split("\n")[0])
    parser.add_argument("--model", choices=["all", *CONFIGS], default="all")
    parser.add_argument("--epochs", type=int, default=None,
                        help="epochs for every chosen model (default: each model's own)")
    parser.add_argument("--threads", type=int, default=THREADS,
                        help=f"torch CPU threads (default {THREADS}; results can differ in the last "
                             "bits between thread counts, so metrics.json records it)")
    add_output_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args.out = output_folder(parser, args)

    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    write_data_files(args.out)
    metrics_path = args.out / "weights" / "metrics.json"
    metrics = json.loads(metrics_path.read_text()) if metrics_path.is_file() else {}
    keys = list(CONFIGS) if args.model == "all" else [args.model]
    for key in keys:
        model, m = train_one(CONFIGS[key], args.epochs)
        write_weights(args.out, key, model)
        metrics[key] = m
        atomic_write_text(metrics_path, json.dumps(metrics, indent=2, sort_keys=True) + "\n")
        log.info("%s: held-out top-1 %.4f on %d digits, %d params, %.2f M MACs, %.1f s",
                 key, m["accuracy"], m["test_samples"], m["params"], m["macs"] / 1e6,
                 m["train_seconds"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
