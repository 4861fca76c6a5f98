"""A CREPE-tiny-shaped pitch estimator trained on generated tones, its data and its pitch-error metric.

    python -m edgeai.zoo.pitch [--epochs N] [--tones N] [--out DIR | --write-weights]   # retrain

(writes DIR/weights/pitch_cnn.pt and metrics.json; DIR is a new ./zoo-retrained-TIMESTAMP unless
--out, and the package's own folder, replacing the shipped weights, only with --write-weights)

Model (`pitch_cnn`): input `audio` (batch, 1024) = 64 ms at 16 kHz, each frame normalised to zero
mean and unit variance; output (batch, 360) sigmoid activations of 360 pitch bins, 20 cents apart,
bin i at 1997.38 + 20 i cents above 10 Hz (C1 32.7 Hz .. B7 1975.5 Hz), as in CREPE. Six
Conv2d (k, 1) -> ReLU -> BatchNorm -> MaxPool (2, 1) layers; the forward permutes the last
conv's (B, C, 4, 1) output to (B, 4, C, 1) and reshapes it to the classifier's hard-coded
`in_features`, like the published CREPE ports: the layout a channel pruner cannot follow.

Data (`tones`): harmonic tones with known f0 (log-uniform over TONE_RANGE_HZ), a dominant
fundamental, random weaker harmonics, phases and noise; `labels` is f0 in Hz. Training targets are Gaussian bumps
(25 cents std) over the bins. Metric (`pitch_error`): minus the mean absolute error in cents of
the decoded pitch (weighted average of the 9 bins around the peak), so higher is better and
0 is perfect: use it as `--metric edgeai.zoo.pitch:pitch_error`.

Training is deterministic on one machine (fixed seeds, deterministic algorithms, 1 thread): 3 epochs
of 8000 tones, about 4 CPU minutes, held-out error 5.8 cents (weights/metrics.json, key "pitch").
"""
from __future__ import annotations

import argparse
import io
import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

SAMPLE_RATE = 16000
FRAME = 1024
BINS = 360
CENTS_PER_BIN = 20.0
CENTS_OFFSET = 1997.3794084376191         # bin 0, in cents above 10 Hz
TONE_RANGE_HZ = (40.0, 1600.0)
TARGET_STD_CENTS = 25.0
TRAIN_SEED, TEST_SEED = 0, 1
TEST_TONES = 500
WEIGHTS = Path(__file__).resolve().parent / "weights" / "pitch_cnn.pt"
METRICS_KEY = "pitch"

log = logging.getLogger(__name__)


def hz_to_cents(hz: np.ndarray) -> np.ndarray:
    return 1200.0 * np.log2(np.asarray(hz, dtype=np.float64) / 10.0)


def bin_cents() -> np.ndarray:
    return CENTS_OFFSET + CENTS_PER_BIN * np.arange(BINS)


def tones(n: int, seed: int) -> dict[str, np.ndarray]:
    """`n` normalised 1024-sample frames of harmonic tones: {"audio": (n, 1024) f32, "labels": f0 Hz (n,)}."""
    rng = np.random.default_rng(seed)
    lo, hi = np.log(TONE_RANGE_HZ[0]), np.log(TONE_RANGE_HZ[1])
    f0 = np.exp(rng.uniform(lo, hi, n))
    t = np.arange(FRAME) / SAMPLE_RATE
    audio = np.zeros((n, FRAME), dtype=np.float64)
    for k in range(1, 9):                                   # up to 8 harmonics below Nyquist
        amp = rng.uniform(0.5, 1.0, n) if k == 1 else rng.uniform(0.0, 0.5, n) / k ** rng.uniform(0.5, 2.0, n)
        amp = np.where(k * f0 < SAMPLE_RATE / 2, amp, 0.0)
        phase = rng.uniform(0, 2 * np.pi, n)
        audio += amp[:, None] * np.sin(2 * np.pi * k * f0[:, None] * t[None] + phase[:, None])
    audio[:, :] += rng.uniform(0.0, 0.3, n)[:, None] * rng.standard_normal((n, FRAME)) * audio.std(1, keepdims=True)
    audio -= audio.mean(1, keepdims=True)
    audio /= np.maximum(audio.std(1, keepdims=True), 1e-8)  # per-frame normalisation, as CREPE does
    return {"audio": audio.astype(np.float32), "labels": f0.astype(np.float32)}


def train_tones(n: int = 20000) -> dict[str, np.ndarray]:
    """Training tones (seed TRAIN_SEED); a CLI data source: `edgeai.zoo.pitch:train_tones`."""
    return tones(n, TRAIN_SEED)


def test_tones() -> dict[str, np.ndarray]:
    """The held-out tones (seed TEST_SEED, never in training): `edgeai.zoo.pitch:test_tones`."""
    return tones(TEST_TONES, TEST_SEED)


def calib_tones() -> dict[str, np.ndarray]:
    """128 training tones without labels, for calibration."""
    return {"audio": tones(128, TRAIN_SEED + 100)["audio"]}


def targets(f0_hz: np.ndarray) -> np.ndarray:
    """(n, 360) Gaussian bumps (TARGET_STD_CENTS) centred on each f0: the training target."""
    d = bin_cents()[None] - hz_to_cents(f0_hz)[:, None]
    return np.exp(-d ** 2 / (2 * TARGET_STD_CENTS ** 2)).astype(np.float32)


def decode_cents(activations: np.ndarray) -> np.ndarray:
    """Pitch in cents per frame: activation-weighted mean of the 9 bins around the peak."""
    a = np.asarray(activations, dtype=np.float64).reshape(-1, BINS)
    peak = a.argmax(1)
    idx = np.clip(peak[:, None] + np.arange(-4, 5)[None], 0, BINS - 1)
    w = np.take_along_axis(a, idx, 1)
    return (w * bin_cents()[idx]).sum(1) / np.maximum(w.sum(1), 1e-12)


def cents_error(activations: np.ndarray, f0_hz: np.ndarray) -> np.ndarray:
    return np.abs(decode_cents(activations) - hz_to_cents(np.asarray(f0_hz).reshape(-1)))


def pitch_error(outputs: dict[str, np.ndarray], labels: Any) -> float:
    """Minus the mean absolute pitch error in cents (higher is better); `labels` are f0 in Hz."""
    if labels is None:
        raise ValueError("pitch_error needs labels: the true f0 of each frame in Hz")
    return -float(cents_error(next(iter(outputs.values())), labels).mean())


def _model_cls():
    import torch
    import torch.nn.functional as F
    from torch import nn

    class PitchCNN(nn.Module):
        """CREPE-tiny layout: 6 conv blocks, permute + reshape to a 256 -> 360 sigmoid classifier."""

        FILTERS = (128, 16, 16, 16, 32, 64)
        KERNELS = (512, 64, 64, 64, 64, 64)

        def __init__(self):
            super().__init__()
            cin = 1
            for i, (c, k) in enumerate(zip(self.FILTERS, self.KERNELS), 1):
                setattr(self, f"conv{i}", nn.Conv2d(cin, c, (k, 1), (4 if i == 1 else 1, 1)))
                setattr(self, f"conv{i}_bn", nn.BatchNorm2d(c, eps=1e-3))
                cin = c
            self.in_features = 4 * self.FILTERS[-1]
            self.classifier = nn.Linear(self.in_features, BINS)

        def forward(self, audio):
            x = audio[:, None, :, None]                             # (B, 1024) -> (B, 1, 1024, 1)
            for i, k in enumerate(self.KERNELS, 1):
                pad = (254, 254) if i == 1 else ((k - 1) // 2, k // 2)   # "same" padding
                x = getattr(self, f"conv{i}")(F.pad(x, (0, 0, *pad)))
                x = getattr(self, f"conv{i}_bn")(F.relu(x))
                x = F.max_pool2d(x, (2, 1), (2, 1))                 # time halves: 256 -> ... -> 4
            x = x.permute(0, 2, 1, 3).reshape(-1, self.in_features)  # (B, C, 4, 1) -> (B, 4, C, 1) -> (B, 4C)
            return torch.sigmoid(self.classifier(x))

    return PitchCNN


def build():
    """An untrained PitchCNN."""
    return _model_cls()()


def pitch_cnn():
    """The trained pitch CNN (eval mode); input `audio` (batch, 1024), output (batch, 360) in [0, 1]."""
    import torch

    from edgeai.errors import ModelLoadError

    model = build()
    if not WEIGHTS.is_file():
        raise ModelLoadError(f"pitch weights {str(WEIGHTS)!r} are missing; recreate them with "
                             "`python -m edgeai.zoo.pitch`")
    try:
        model.load_state_dict(torch.load(WEIGHTS, map_location="cpu", weights_only=True))
    except Exception as e:  # truncated file or another architecture
        raise ModelLoadError(f"pitch weights {str(WEIGHTS)!r} do not load ({type(e).__name__}: {e}); "
                             "recreate them with `python -m edgeai.zoo.pitch`") from None
    return model.eval()


def evaluate(model: Any, data: dict[str, np.ndarray], batch: int = 256) -> float:
    """pitch_error of a torch model on tone data."""
    import torch

    model.eval()
    with torch.no_grad():
        out = np.concatenate([model(torch.from_numpy(data["audio"][s:s + batch])).numpy()
                              for s in range(0, len(data["audio"]), batch)])
    return pitch_error({"pitch": out}, data["labels"])


def train(epochs: int = 3, n_tones: int = 8000, lr: float = 3e-3, batch: int = 32) -> tuple[Any, dict]:
    """Train a PitchCNN from a fixed seed with BCE on Gaussian bin targets; (model, metrics)."""
    import torch
    import torch.nn.functional as F

    torch.manual_seed(TRAIN_SEED)
    gen = torch.Generator().manual_seed(TRAIN_SEED)
    model = build()
    data, test = train_tones(n_tones), test_tones()
    x, y = torch.from_numpy(data["audio"]), torch.from_numpy(targets(data["labels"]))
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    steps = epochs * -(-n_tones // batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    start = time.perf_counter()
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(n_tones, generator=gen)
        for s in range(0, n_tones, batch):
            idx = order[s:s + batch]
            loss = F.binary_cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        log.info("pitch epoch %d/%d: loss %.4f, held-out error %.2f cents (%.0f s)", epoch + 1, epochs,
                 float(loss.detach()), -evaluate(model, test), time.perf_counter() - start)
    model.eval()
    metrics = {"cents_error": round(-evaluate(model, test), 4), "test_tones": TEST_TONES, "train_tones": n_tones,
               "epochs": epochs, "params": sum(p.numel() for p in model.parameters()),
               "train_seconds": round(time.perf_counter() - start, 1), "threads": torch.get_num_threads(),
               "torch": torch.__version__}
    return model, metrics


def main(argv: list[str] | None = None) -> int:
    import torch

    from edgeai.fsutil import atomic_write_bytes, atomic_write_text
    from edgeai.zoo.train import add_output_arguments, output_folder

    ap = argparse.ArgumentParser(prog="python -m edgeai.zoo.pitch", description=__doc__.split("\n")[0])
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--tones", type=int, default=8000)
    add_output_arguments(ap)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args.out = output_folder(ap, args)
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    model, metrics = train(args.epochs, args.tones)
    buf = io.BytesIO()
    torch.save({k: v.detach().float().contiguous() for k, v in model.state_dict().items()}, buf)
    atomic_write_bytes(args.out / "weights" / WEIGHTS.name, buf.getvalue())
    path = args.out / "weights" / "metrics.json"
    all_metrics = json.loads(path.read_text()) if path.is_file() else {}
    all_metrics[METRICS_KEY] = metrics
    atomic_write_text(path, json.dumps(all_metrics, indent=2, sort_keys=True) + "\n")
    log.info("pitch: %.2f cents mean error on %d held-out tones, %d params, %.0f s", metrics["cents_error"],
             TEST_TONES, metrics["params"], metrics["train_seconds"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
