"""Edge-size architectures with random weights, for latency benchmarks (no torchvision, no downloads).

- MobileNetV2 (width 1.0) at 224x224, 1000 classes
- a 2-layer LSTM with hidden 256 over 100 steps
- a 4-layer Transformer encoder, d=256, 4 heads, FFN 1024, over 128 tokens
"""
from __future__ import annotations

import torch
from torch import nn


def _conv_bn(cin, cout, k=3, stride=1, groups=1, act=True):
    layers = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
    if act:
        layers.append(nn.ReLU6(inplace=True))
    return nn.Sequential(*layers)


class InvertedResidual(nn.Module):
    def __init__(self, cin, cout, stride, expand):
        super().__init__()
        hidden = cin * expand
        self.use_res = stride == 1 and cin == cout
        layers = [] if expand == 1 else [_conv_bn(cin, hidden, 1)]
        layers += [_conv_bn(hidden, hidden, 3, stride, groups=hidden), _conv_bn(hidden, cout, 1, act=False)]
        self.conv = nn.Sequential(*layers)

    def forward(self, x):
        return x + self.conv(x) if self.use_res else self.conv(x)


class MobileNetV2(nn.Module):
    # (expansion, channels, repeats, stride) as in the paper
    CONFIG = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))

    def __init__(self, num_classes=1000):
        super().__init__()
        layers, cin = [_conv_bn(3, 32, stride=2)], 32
        for t, c, n, s in self.CONFIG:
            for i in range(n):
                layers.append(InvertedResidual(cin, c, s if i == 0 else 1, t))
                cin = c
        layers.append(_conv_bn(cin, 1280, 1))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(1280, num_classes)

    def forward(self, image):
        return self.classifier(self.features(image).mean((2, 3)))


class LSTM2x256(nn.Module):
    def __init__(self, features=64, hidden=256, classes=10):
        super().__init__()
        self.lstm = nn.LSTM(features, hidden, num_layers=2, batch_first=True)
        self.head = nn.Linear(hidden, classes)

    def forward(self, sequence):
        out, _ = self.lstm(sequence)
        return self.head(out[:, -1])


class Encoder4x256(nn.Module):
    def __init__(self, d=256, heads=4, ffn=1024, layers=4, classes=10):
        super().__init__()
        layer = nn.TransformerEncoderLayer(d, heads, ffn, dropout=0.0, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(d, classes)

    def forward(self, tokens):
        return self.head(self.encoder(tokens).mean(1))


def _seeded(cls):
    torch.manual_seed(0)
    model = cls().eval()
    if cls is Encoder4x256:  # TransformerEncoder deep-copies one layer: give each its own weights
        for p in model.parameters():
            nn.init.normal_(p, std=0.05) if p.dim() > 1 else None
    return model


def mobilenet_v2():
    return _seeded(MobileNetV2)


def lstm_2x256():
    return _seeded(LSTM2x256)


def encoder_4x256():
    return _seeded(Encoder4x256)


# name -> (factory spec, input specs, kind)
EDGE_MODELS = {
    "mobilenetv2-224": ("benchmarks/edge_models.py:mobilenet_v2", ["image:batch,3,224,224"], "cnn"),
    "lstm-2x256-100": ("benchmarks/edge_models.py:lstm_2x256", ["sequence:batch,seq=100,64"], "rnn"),
    "encoder-4x256-128": ("benchmarks/edge_models.py:encoder_4x256", ["tokens:batch,seq=128,256"], "transformer"),
}
