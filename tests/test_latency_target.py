"""Latency targets for pruning: the ratio search on measured points, and the pipeline hook on a real export."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from edgeai.latency_target import Probe, next_ratio, search

torch.set_num_threads(1)


def _latency(overhead: float):
    """1 ms unpruned; the MAC-bound part shrinks with the ratio, `overhead` ms does not."""
    calls = []

    def measure(r: float) -> float:
        calls.append(r)
        return overhead + (1 - overhead) * (1 - r)

    return measure, calls


@pytest.mark.parametrize("overhead", [0.0, 0.2, 0.35])
def test_search_finds_the_ratio_for_a_speedup_in_few_measurements(overhead):
    measure, calls = _latency(overhead)
    target = 1 / 2.0                                      # 2x
    ratio, probes, note = search(measure, 1.0, target)
    exact = (1 - target) / (1 - overhead)                 # ratio where latency == target
    assert note == "" and len(calls) <= 3
    assert measure(ratio) <= target * 1.04 and ratio <= exact + 0.05, (ratio, exact, probes)


def test_search_reports_an_unreachable_latency_with_the_fastest_candidate():
    measure, calls = _latency(0.7)                         # at most 1 / 0.7 = 1.43x
    ratio, probes, note = search(measure, 1.0, 0.5)
    assert "not reached" in note and ratio == max(p.ratio for p in probes)
    assert len(calls) <= 5


def test_next_ratio_interpolates_inside_the_bracket():
    probes = [Probe(0.0, 1.0), Probe(0.4, 0.7), Probe(0.8, 0.3)]
    assert next_ratio(probes, 0.5) == pytest.approx(0.6)


class Wide(nn.Module):
    def __init__(self):
        super().__init__()
        self.f = nn.Sequential(nn.Conv2d(3, 96, 3, padding=1), nn.ReLU(), nn.Conv2d(96, 96, 3, padding=1), nn.ReLU(),
                               nn.Conv2d(96, 96, 3, padding=1), nn.ReLU())
        self.fc = nn.Linear(96, 10)

    def forward(self, x):
        return self.fc(self.f(x).mean((2, 3)))


def wide():
    torch.manual_seed(0)
    return Wide().eval()


@pytest.mark.slow
def test_pipeline_prunes_to_a_speedup_measured_on_the_onnx_export(tmp_path):
    """~30 s: the unpruned and 1-5 pruned exports are each timed in a fresh process."""
    import edgeai
    from edgeai.recipe import SummaryConfig

    out = edgeai.export("tests.test_latency_target:wide", tmp_path / "out", inputs=["x:batch,3,24,24"],
                        steps=({"prune": {"target_speedup": 2.0, "round_to": 8}},),
                        summary=SummaryConfig(bench=False, min_seconds=0.3))
    step = next(s for s in out.artifacts[-1].steps if s["type"] == "model.prune")
    search = step["details"]["latency_search"]
    assert search["asked"] == {"target_speedup": 2.0}
    assert search["target_ms"] == pytest.approx(search["unpruned_ms"] / 2, rel=1e-3)
    assert 2 <= len(search["probes"]) <= 6 and search["probes"][0]["ratio"] == 0.0
    assert step["config"]["ratio"] == search["ratio"] and 0.3 < search["ratio"] < 0.95
    assert step["config"]["target_speedup"] is None
    assert any("chosen by timing" in n for n in step["notes"])
