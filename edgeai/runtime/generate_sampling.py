"""Choosing the next token from logits: greedy, or temperature / top-k / top-p sampling with a seed (numpy only)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgeai.errors import ConfigError


@dataclass(frozen=True)
class Sampling:
    """greedy=True takes the argmax (the default); otherwise sample from softmax(logits / temperature)
    restricted to the `top_k` most likely tokens (0 = all) and to the smallest set whose probability
    reaches `top_p` (1.0 = all), with a numpy generator seeded by `seed` (reproducible)."""

    greedy: bool = True
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = None

    def __post_init__(self):
        if not self.temperature > 0:
            raise ConfigError(f"temperature must be > 0, got {self.temperature}")
        if self.top_k < 0:
            raise ConfigError(f"top_k must be >= 0 (0 = no limit), got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"top_p must be in (0, 1], got {self.top_p}")

    def sampler(self) -> "Sampler":
        return Sampler(self)


class Sampler:
    """One generation's sampling state (its random generator)."""

    def __init__(self, config: Sampling):
        self.config = config
        self._rng = np.random.default_rng(config.seed)

    def pick(self, logits: np.ndarray) -> int:
        """The next token id from one position's logits (vocab,)."""
        c = self.config
        if c.greedy:
            return int(np.argmax(logits))
        z = logits.astype(np.float64) / c.temperature
        order = np.argsort(-z, kind="stable")
        if c.top_k:
            order = order[:c.top_k]
        z = z[order]
        p = np.exp(z - z[0])
        p /= p.sum()
        if c.top_p < 1.0:
            keep = int(np.searchsorted(np.cumsum(p), c.top_p)) + 1  # the smallest prefix reaching top_p
            order, p = order[:keep], p[:keep] / p[:keep].sum()
        return int(order[self._rng.choice(len(p), p=p)])
