"""Tiny models for the tests, importable as factories (`tests/models.py:cnn`)."""
import torch
from torch import nn


class TinyCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                      nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU())
        self.head = nn.Linear(16, 5)

    def forward(self, image):
        return self.head(self.features(image).mean((2, 3)))


class TinyLSTM(nn.Module):
    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(6, 12, batch_first=True)
        self.head = nn.Linear(12, 3)

    def forward(self, rows):
        out, _ = self.lstm(rows)
        return self.head(out[:, -1])


class TinyTextTransformer(nn.Module):
    """Integer token ids + attention mask, two outputs."""

    def __init__(self, vocab=50, d=16):
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.attn = nn.MultiheadAttention(d, 2, batch_first=True)
        self.head = nn.Linear(d, 4)

    def forward(self, input_ids, attention_mask):
        h = self.embed(input_ids)
        h = h + self.attn(h, h, h, need_weights=False)[0]
        m = attention_mask.unsqueeze(-1).to(h.dtype)
        pooled = (h * m).sum(1) / m.sum(1).clamp(min=1.0)
        return {"logits": self.head(pooled), "hidden": h}


class FrozenBatch(nn.Module):
    """Uses the batch size as a Python int: TorchScript tracing freezes it, torch.export does not."""

    def forward(self, x):
        return x + torch.arange(int(x.shape[0]), dtype=x.dtype).unsqueeze(1)


class DataDependent(nn.Module):
    """Python control flow on a tensor value: torch.export refuses it, TorchScript traces one branch."""

    def forward(self, x):
        if x.sum() > 0:
            return x * 2
        return x - 1


def _seeded(cls):
    torch.manual_seed(0)
    return cls().eval()


def cnn():
    return _seeded(TinyCNN)


def lstm():
    return _seeded(TinyLSTM)


def text_transformer():
    return _seeded(TinyTextTransformer)


def frozen_batch():
    return FrozenBatch()


def data_dependent():
    return DataDependent()


def raises():
    raise RuntimeError("weights server unreachable")


def not_a_module():
    return 42


class OutlierMLP(nn.Module):
    """Middle layer has an outlier weight column reading a dead unit: harmless in FP32, but a
    per-tensor INT8 scale of 50/127 rounds every other weight of that layer to zero."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Linear(16, 64), nn.Linear(64, 64), nn.Linear(64, 10)
        with torch.no_grad():
            self.a.weight[7] = 0.0
            self.a.bias[7] = -1.0
            self.b.weight[:, 7] = 50.0

    def forward(self, x):
        return self.c(torch.relu(self.b(torch.relu(self.a(x)))))


class WideMLP(nn.Module):
    """MatMul-heavy: weights dominate the file, so precision changes show in its size."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10))

    def forward(self, x):
        return self.net(x)


def outlier_mlp():
    return _seeded(OutlierMLP)


def wide_mlp():
    return _seeded(WideMLP)


class TinyEncoder(nn.Module):
    """nn.TransformerEncoder: onnxruntime 1.31 segfaults loading its FP16 graph with full optimizations."""

    def __init__(self, d=32):
        super().__init__()
        layer = nn.TransformerEncoderLayer(d, 2, 64, dropout=0.0, batch_first=True, norm_first=True)
        self.enc = nn.TransformerEncoder(layer, 1, enable_nested_tensor=False)
        self.head = nn.Linear(d, 3)

    def forward(self, tokens):
        return self.head(self.enc(tokens).mean(1))


def tiny_encoder():
    return _seeded(TinyEncoder)
