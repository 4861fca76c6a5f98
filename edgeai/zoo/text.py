"""Text encoders that carry real models' quantization traits, trained in seconds on generated topic sentences.

Factories (`module:function`, no arguments; each returns a trained nn.Module in eval mode, trained
deterministically on first call and cached for the process):

- `edgeai.zoo.text:bert_encoder_small`: BERT-shaped sentence encoder for tests (vocab 1000, dim 64,
  2 layers, 4 heads; ~0.2M params; trains in a few seconds).
- `edgeai.zoo.text:bert_encoder`: the same architecture at MiniLM-L6 size for benchmarks (vocab 30522,
  dim 384, 6 layers, 12 heads, FFN 1536; 22.7M params, a 47 MB float32 token-embedding table;
  trains in about a minute).
  Both: inputs `input_ids` (batch, seq) int64 and `attention_mask` (batch, seq) int64 (1 = token,
  0 = padding); output the L2-normalized masked-mean sentence embedding (batch, dim). The traits:
  a token-embedding table (Gather on a weight), the padding mask turned into an ADDITIVE mask of
  float32 min (-3.4e38) as Hugging Face BERT does, exact GELU, post-norm LayerNorm, and weight
  outliers as trained BERTs have (in every Linear, 2 output channels hold 4 weights `OUTLIER_SCALE`x
  larger than the rest, planted before training): per-tensor INT8 weights lose the other weights'
  precision to them (cosine < 0.99 to FP32), per-channel weights do not.
- `edgeai.zoo.text:padded_encoder`: a small classifier over the same sentences built on
  nn.TransformerEncoder with `src_key_padding_mask` (vocab 1000, dim 64, 2 layers, 8 topics).
  Input `input_ids` (batch, seq) int64, 0 = padding; output logits (batch, 8).

Data (`module:function` returning feed dicts; usable as recipe `data:` specs):
- `sentences_small`, `sentences_small_calib`: 96 / 64 sentences for `bert_encoder_small` (no labels:
  judged by cosine to the FP32 model); `sentences`, `sentences_calib`: the same for `bert_encoder`.
- `topics`, `topics_calib`: 256 labelled / 64 unlabelled sentences for `padded_encoder` (top-1).
Sentences have 6..seq tokens (seq 32) and are padded with token 0.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from edgeai.zoo import _synthetic

__all__ = ["bert_encoder_small", "bert_encoder", "padded_encoder", "sentences_small", "sentences_small_calib",
           "sentences", "sentences_calib", "topics", "topics_calib", "BertConfig"]

SEQ = 32                 # padded sentence length of the data functions
TOPICS = 8
OUTLIER_SCALE = 150.0    # planted weights are this much larger than BERT's init (std 0.02)
OUTLIER_CHANNELS = 2     # per layer


@dataclass(frozen=True)
class BertConfig:
    vocab: int = 1000
    dim: int = 64
    layers: int = 2
    heads: int = 4
    ffn: int = 256
    max_len: int = 64
    train_steps: int = 100
    batch: int = 32
    lr: float = 3e-3


SMALL = BertConfig()
FULL = BertConfig(vocab=30522, dim=384, layers=6, heads=12, ffn=1536, max_len=128, train_steps=60, batch=16,
                  lr=5e-4)


# ---------------------------------------------------------------- data

def topic_sentences(n: int, vocab: int, seed: int, seq: int = SEQ, topics: int = TOPICS,
                    min_len: int = 6) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(input_ids int64 (n, seq), attention_mask int64 (n, seq), topic labels int64 (n,)).

    Each topic owns 24 keyword tokens; a sentence mixes its topic's keywords (40%) with common
    words drawn from a Zipf law over the whole vocabulary. Token 0 is padding, 1 the [CLS] token.
    The topic keywords are fixed by `vocab` alone, so every seed draws from the same language.
    """
    lang = np.random.default_rng(vocab)
    keywords = lang.choice(np.arange(2, vocab), size=(topics, 24), replace=False)
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, topics, n)
    lengths = rng.integers(min_len, seq + 1, n)
    zipf = 1.0 / np.arange(1, vocab - 1)
    zipf /= zipf.sum()
    common = rng.choice(np.arange(2, vocab), size=(n, seq), p=zipf)
    topical = keywords[labels[:, None], rng.integers(0, 24, (n, seq))]
    ids = np.where(rng.random((n, seq)) < 0.4, topical, common)
    ids[:, 0] = 1
    mask = (np.arange(seq)[None, :] < lengths[:, None]).astype(np.int64)
    return (ids * mask).astype(np.int64), mask, labels.astype(np.int64)


def _sentences(cfg: BertConfig, n: int, seed: int) -> dict[str, np.ndarray]:
    ids, mask, _ = topic_sentences(n, cfg.vocab, seed)
    return {"input_ids": ids, "attention_mask": mask}


def sentences_small() -> dict[str, np.ndarray]:
    """96 held-out sentences for bert_encoder_small: input_ids, attention_mask."""
    return _sentences(SMALL, 96, seed=101)


def sentences_small_calib() -> dict[str, np.ndarray]:
    """64 calibration sentences for bert_encoder_small."""
    return _sentences(SMALL, 64, seed=102)


def sentences() -> dict[str, np.ndarray]:
    """96 held-out sentences for bert_encoder."""
    return _sentences(FULL, 96, seed=201)


def sentences_calib() -> dict[str, np.ndarray]:
    """64 calibration sentences for bert_encoder."""
    return _sentences(FULL, 64, seed=202)


def topics() -> dict[str, np.ndarray]:
    """256 held-out labelled sentences for padded_encoder: input_ids, labels."""
    ids, _, labels = topic_sentences(256, SMALL.vocab, seed=301)
    return {"input_ids": ids, "labels": labels}


def topics_calib() -> dict[str, np.ndarray]:
    """64 calibration sentences for padded_encoder (no labels)."""
    ids, _, _ = topic_sentences(64, SMALL.vocab, seed=302)
    return {"input_ids": ids}


# ---------------------------------------------------------------- models

def _modules():
    """The torch modules, defined on first use so `import edgeai.zoo.text` stays light."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    class BertLayer(nn.Module):
        """Post-norm BERT layer: LN(x + attn(x)), LN(h + FFN(h)) with exact GELU."""

        def __init__(self, dim: int, heads: int, ffn: int):
            super().__init__()
            self.heads = heads
            self.query, self.key, self.value = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
            self.attn_out = nn.Linear(dim, dim)
            self.attn_norm = nn.LayerNorm(dim, eps=1e-12)
            self.ffn_in, self.ffn_out = nn.Linear(dim, ffn), nn.Linear(ffn, dim)
            self.ffn_norm = nn.LayerNorm(dim, eps=1e-12)

        def forward(self, x, additive_mask):
            b, s, d = x.shape
            hd = d // self.heads

            def split(t):  # (B, S, D) -> (B, heads, S, hd)
                return t.reshape(b, s, self.heads, hd).transpose(1, 2)

            q, k, v = split(self.query(x)), split(self.key(x)), split(self.value(x))
            scores = q @ k.transpose(-1, -2) / math.sqrt(hd) + additive_mask   # (B, heads, S, S)
            ctx = (scores.softmax(-1) @ v).transpose(1, 2).reshape(b, s, d)    # -> (B, S, D)
            h = self.attn_norm(x + self.attn_out(ctx))
            return self.ffn_norm(h + self.ffn_out(F.gelu(self.ffn_in(h))))

    class BertEncoder(nn.Module):
        """BERT-shaped sentence encoder; see the module docstring."""

        def __init__(self, cfg: BertConfig):
            super().__init__()
            self.word_embeddings = nn.Embedding(cfg.vocab, cfg.dim)
            self.position_embeddings = nn.Embedding(cfg.max_len, cfg.dim)
            self.emb_norm = nn.LayerNorm(cfg.dim, eps=1e-12)
            self.layers = nn.ModuleList(BertLayer(cfg.dim, cfg.heads, cfg.ffn) for _ in range(cfg.layers))
            for m in self.modules():  # BERT's initialisation
                if isinstance(m, (nn.Linear, nn.Embedding)):
                    nn.init.normal_(m.weight, std=0.02)

        def forward(self, input_ids, attention_mask):
            pos = torch.arange(input_ids.shape[1], device=input_ids.device)
            x = self.emb_norm(self.word_embeddings(input_ids) + self.position_embeddings(pos)[None])
            mask = attention_mask.to(x.dtype)                                    # (B, S), 1 = token
            additive = (1.0 - mask)[:, None, None, :] * torch.finfo(x.dtype).min  # (B, 1, 1, S)
            for layer in self.layers:
                x = layer(x, additive)
            pooled = (x * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp_min(1.0)
            return F.normalize(pooled, dim=-1)

    class PaddedEncoder(nn.Module):
        """nn.TransformerEncoder topic classifier with src_key_padding_mask (token 0 = padding)."""

        def __init__(self, vocab: int = SMALL.vocab, dim: int = 64, heads: int = 4, layers: int = 2,
                     classes: int = TOPICS, max_len: int = 64):
            super().__init__()
            self.embed = nn.Embedding(vocab, dim, padding_idx=0)
            self.pos = nn.Parameter(torch.randn(max_len, dim) * 0.02)
            layer = nn.TransformerEncoderLayer(dim, heads, dim * 4, dropout=0.0, activation="gelu", batch_first=True)
            self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
            self.head = nn.Linear(dim, classes)

        def forward(self, input_ids):
            pad = input_ids == 0                                                   # (B, S)
            x = self.encoder(self.embed(input_ids) + self.pos[: input_ids.shape[1]], src_key_padding_mask=pad)
            keep = (~pad).unsqueeze(-1).to(x.dtype)
            return self.head((x * keep).sum(1) / keep.sum(1).clamp_min(1.0))

    return BertEncoder, PaddedEncoder


def _batches(vocab: int, batch: int, seed: int, with_mask: bool):
    import torch

    def make(step: int):
        ids, mask, labels = topic_sentences(batch, vocab, seed=seed * 100_000 + step)
        inputs = (torch.from_numpy(ids), torch.from_numpy(mask)) if with_mask else (torch.from_numpy(ids),)
        return inputs, torch.from_numpy(labels)
    return make


def plant_outliers(model, scale: float = OUTLIER_SCALE, channels: int = OUTLIER_CHANNELS, seed: int = 0) -> None:
    """Before training: in every Linear of every layer, `channels` output channels get 4 weights `scale`x larger.

    Trained BERTs carry such isolated large weights; training starts from (and keeps) them. A
    per-tensor INT8 scale is set by them, so every other weight of the matrix keeps only a few
    levels; per-channel scales confine the damage to the channels that hold them.
    """
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in model.layers:
            for lin in (layer.query, layer.key, layer.value, layer.attn_out, layer.ffn_in, layer.ffn_out):
                for c in torch.randperm(lin.out_features, generator=gen)[:channels].tolist():
                    lin.weight[c, torch.randperm(lin.in_features, generator=gen)[:4]] *= scale


def _bert(cfg: BertConfig, key: str):
    import torch

    BertEncoder, _ = _modules()

    def train(model):
        head = torch.nn.Module()
        head.prototypes = torch.nn.Parameter(torch.randn(TOPICS, cfg.dim))
        head.forward = lambda emb: _synthetic.cosine_logits(emb, head.prototypes)
        plant_outliers(model)
        return _synthetic.fit(model, head, _batches(cfg.vocab, cfg.batch, seed=1, with_mask=True), cfg.train_steps,
                              cfg.lr)

    return _synthetic.cached(("bert", key), lambda: BertEncoder(cfg), train)


def bert_encoder_small():
    """BERT-shaped sentence encoder, test size (vocab 1000, dim 64, 2 layers), trained; eval mode."""
    return _bert(SMALL, "small")


def bert_encoder():
    """BERT-shaped sentence encoder, MiniLM-L6 size (22.7M params, 47 MB embedding table), trained; eval mode."""
    return _bert(FULL, "full")


def padded_encoder():
    """nn.TransformerEncoder topic classifier using src_key_padding_mask, trained; eval mode."""
    _, PaddedEncoder = _modules()
    return _synthetic.cached(("padded", "small"), PaddedEncoder, lambda model: _synthetic.fit(
        model, None, _batches(SMALL.vocab, 32, seed=3, with_mask=False), steps=120, lr=2e-3))
