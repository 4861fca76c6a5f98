"""A speaker-embedding model that carries a real RNN's quantization trait, trained in seconds on generated audio features.

Factories (`module:function`, no arguments; each returns a trained nn.Module in eval mode, trained
deterministically on first call and cached for the process):

- `edgeai.zoo.speaker:speaker_lstm_small`: 3-layer stacked LSTM (40 mels -> hidden 64 x 3 -> 64-d
  embedding; ~90k params) for tests; trains in a few seconds.
- `edgeai.zoo.speaker:speaker_lstm`: the same at Resemblyzer/GE2E size (hidden 256 x 3, 256-d
  embedding; 1.4M params) for benchmarks; trains in about a minute.
  Both: input `mels` (batch, frames, 40) float32 = mel filterbank POWER, not log: values span about
  six decades (1e-3 .. 1e3), so the first LSTM sees wide-range inputs; output the L2-normalized
  embedding (batch, dim) = normalize(relu(Linear(h_last of the top layer))), trained with a
  cosine objective (scaled cosine to per-speaker prototypes). The trait: dynamic INT8 quantizes
  each LSTM's input per tensor, which wipes out the first layer's small inputs (cosine well below
  0.99 to FP32 when every LSTM is INT8); layers 2-3 read tanh-bounded states and quantize well,
  so keeping only the first LSTM in FP32 recovers it.

Data (`module:function` returning feed dicts; usable as recipe `data:` specs, no labels: judged by
cosine to the FP32 model): `utterances_small`, `utterances_small_calib` (96 / 64 utterances of
48 frames for `speaker_lstm_small`), `utterances`, `utterances_calib` (the same for `speaker_lstm`).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgeai.zoo import _synthetic

__all__ = ["speaker_lstm_small", "speaker_lstm", "utterances_small", "utterances_small_calib", "utterances",
           "utterances_calib", "SpeakerConfig"]

MELS = 40
FRAMES = 48


@dataclass(frozen=True)
class SpeakerConfig:
    hidden: int = 64
    layers: int = 3
    embed: int = 64
    speakers: int = 16
    train_steps: int = 120
    batch: int = 32
    lr: float = 3e-3


SMALL = SpeakerConfig()
FULL = SpeakerConfig(hidden=256, embed=256, speakers=64, train_steps=150)


def speaker_mels(n: int, speakers: int, seed: int, frames: int = FRAMES) -> tuple[np.ndarray, np.ndarray]:
    """(mel power float32 (n, frames, MELS), speaker ids int64 (n,)).

    Each speaker has a smooth spectral envelope (log domain); an utterance adds a per-frame
    loudness walk (with near-silent frames) and noise, then exponentiates: power, not log power.
    Envelopes depend on `speakers` alone, so every seed draws from the same speakers.
    """
    voice = np.random.default_rng(speakers)
    knots = voice.normal(0.0, 1.5, (speakers, 8))
    env = np.stack([np.interp(np.linspace(0, 7, MELS), np.arange(8), k) for k in knots])  # (speakers, MELS)
    env -= np.linspace(0, 3, MELS)                                                       # spectral tilt
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, speakers, n)
    loud = np.cumsum(rng.normal(0.0, 0.6, (n, frames)), axis=1)
    loud -= loud.mean(axis=1, keepdims=True)
    silent = rng.random((n, frames)) < 0.15
    loud = np.where(silent, -4.0, loud)
    log_power = env[ids][:, None, :] + loud[..., None] + rng.normal(0.0, 0.4, (n, frames, MELS))
    return np.exp(log_power).astype(np.float32), ids.astype(np.int64)


def _utterances(cfg: SpeakerConfig, n: int, seed: int) -> dict[str, np.ndarray]:
    return {"mels": speaker_mels(n, cfg.speakers, seed)[0]}


def utterances_small() -> dict[str, np.ndarray]:
    """96 held-out utterances for speaker_lstm_small: mels (96, 48, 40)."""
    return _utterances(SMALL, 96, seed=101)


def utterances_small_calib() -> dict[str, np.ndarray]:
    """64 calibration utterances for speaker_lstm_small."""
    return _utterances(SMALL, 64, seed=102)


def utterances() -> dict[str, np.ndarray]:
    """96 held-out utterances for speaker_lstm."""
    return _utterances(FULL, 96, seed=201)


def utterances_calib() -> dict[str, np.ndarray]:
    """64 calibration utterances for speaker_lstm."""
    return _utterances(FULL, 64, seed=202)


def _module():
    import torch.nn.functional as F
    from torch import nn

    class SpeakerLSTM(nn.Module):
        """mels (B, T, 40) -> 3-layer LSTM -> last top-layer state -> Linear -> ReLU -> L2 norm (B, embed)."""

        def __init__(self, cfg: SpeakerConfig):
            super().__init__()
            self.lstm = nn.LSTM(MELS, cfg.hidden, num_layers=cfg.layers, batch_first=True)
            self.proj = nn.Linear(cfg.hidden, cfg.embed)

        def forward(self, mels):
            _, (h, _) = self.lstm(mels)          # h: (layers, B, hidden)
            return F.normalize(F.relu(self.proj(h[-1])), dim=-1)

    return SpeakerLSTM


def _speaker(cfg: SpeakerConfig, key: str):
    import torch

    def batches(step: int):
        mels, ids = speaker_mels(cfg.batch, cfg.speakers, seed=1_000_000 + step)
        return (torch.from_numpy(mels),), torch.from_numpy(ids)

    def train(model):
        head = torch.nn.Module()
        head.prototypes = torch.nn.Parameter(torch.randn(cfg.speakers, cfg.embed))
        head.forward = lambda emb: _synthetic.cosine_logits(emb, head.prototypes)
        return _synthetic.fit(model, head, batches, cfg.train_steps, cfg.lr)

    SpeakerLSTM = _module()
    return _synthetic.cached(("speaker", key), lambda: SpeakerLSTM(cfg), train)


def speaker_lstm_small():
    """3-layer LSTM speaker encoder, test size (hidden 64), trained; eval mode."""
    return _speaker(SMALL, "small")


def speaker_lstm():
    """3-layer LSTM speaker encoder, Resemblyzer size (hidden 256, 1.4M params), trained; eval mode."""
    return _speaker(FULL, "full")
