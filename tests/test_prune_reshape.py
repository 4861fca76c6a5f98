"""Pruning models whose forward permutes and reshapes conv features into a Linear (pitch-CNN-style heads)."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from edgeai.errors import VerificationError
from edgeai.steps.prune import PruneConfig, prune

torch.set_num_threads(1)


class PermuteFlattenHead(nn.Module):
    """Conv features (B, C, T, 1) -> permute to (B, T, C, 1) -> flatten -> Linear, like CREPE.

    `hard_coded=True` reshapes to the classifier's recorded in_features (as the published ports do),
    so a narrower last conv breaks the forward; otherwise it flattens, and a wrong channel mapping
    computes something else instead of failing.
    """

    def __init__(self, hard_coded: bool):
        super().__init__()
        self.hard_coded = hard_coded
        self.conv1 = nn.Conv2d(1, 64, (32, 1), (4, 1), (14, 0))
        self.bn1 = nn.BatchNorm2d(64)
        self.conv2 = nn.Conv2d(64, 64, (9, 1), padding=(4, 0))
        self.bn2 = nn.BatchNorm2d(64)
        self.conv3 = nn.Conv2d(64, 32, (9, 1), padding=(4, 0))
        self.in_features = 32 * 4
        self.classifier = nn.Linear(self.in_features, 24)

    def forward(self, audio):
        x = audio[:, None, :, None]                                   # (B, 256) -> (B, 1, 256, 1)
        x = F.max_pool2d(self.bn1(F.relu(self.conv1(x))), (4, 1))      # (B, 64, 16, 1)
        x = F.max_pool2d(self.bn2(F.relu(self.conv2(x))), (2, 1))      # (B, 64, 8, 1)
        x = F.max_pool2d(F.relu(self.conv3(x)), (2, 1))                # (B, 32, 4, 1)
        x = x.permute(0, 2, 1, 3)                                      # -> (B, 4, 32, 1)
        x = x.reshape(-1, self.in_features) if self.hard_coded else x.flatten(1)
        return torch.sigmoid(self.classifier(x))


def _model(hard_coded: bool) -> nn.Module:
    torch.manual_seed(0)
    m = PermuteFlattenHead(hard_coded)
    with torch.no_grad():                  # non-trivial BN statistics, so a wrong mapping shows
        for bn in (m.bn1, m.bn2):
            bn.running_mean.uniform_(-0.2, 0.2)
            bn.running_var.uniform_(0.5, 2.0)
    return m.eval()


@pytest.mark.parametrize("hard_coded", [True, False], ids=["reshape-to-in_features", "permute-flatten"])
def test_permute_reshape_head_is_pinned_automatically_and_reported(hard_coded):
    model = _model(hard_coded)
    x = {"audio": torch.randn(4, 256)}
    pruned, report = prune(model, x, PruneConfig(ratio=0.5, protect_narrow=8))
    pinned = [b["name"] for b in report.details["auto_pinned"]]
    assert pinned == ["conv3"]
    assert any("'conv3' pinned automatically" in n for n in report.notes)
    layers = {l["name"]: l for l in report.details["layers"]}
    assert layers["conv3"]["after"] == 32 and layers["conv3"]["protected"] == "pinned"
    assert pruned.conv1.out_channels < 64              # the rest is still pruned
    assert report.details["achieved_ratio"] == pytest.approx(0.5, abs=0.05)
    with torch.no_grad():
        assert pruned(**x).shape == (4, 24)
    assert model.conv3.out_channels == 32 and model.conv1.out_channels == 64   # input untouched


def test_without_auto_pin_the_error_stands():
    with pytest.raises(VerificationError, match="no longer runs"):
        prune(_model(True), {"audio": torch.randn(4, 256)}, PruneConfig(ratio=0.5, protect_narrow=8, auto_pin=False))
