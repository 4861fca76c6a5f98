"""The real-shaped recipes in recipes/ (prune -> distill -> quantize), run end to end (slow)."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

import edgeai
from edgeai.recipe import SummaryConfig, load_recipe

RECIPES = Path(__file__).resolve().parent.parent / "recipes"


def _run(name: str, out: Path, **overrides):
    recipe = load_recipe(RECIPES / f"{name}.yaml")
    outcome = edgeai.export(recipe=recipe, out_dir=out, summary=SummaryConfig(bench=False), **overrides)
    arts = {a.name: a for a in outcome.artifacts}
    steps = {s["type"]: s for s in arts["fp32"].steps}
    return arts, steps["model.prune"], steps["model.distill"]


@pytest.mark.slow
def test_text_encoder_recipe_pins_the_attention_reshape_and_distills_with_cosine(tmp_path):
    arts, prune, distill = _run("text_encoder", tmp_path / "out")
    assert {b["name"] for b in prune["details"]["auto_pinned"]} == {"layers.0.value", "layers.1.value"}
    assert prune["details"]["achieved_ratio"] == pytest.approx(0.4, abs=0.03)
    assert distill["details"]["loss"] == "cosine"
    assert arts["fp32"].metrics["cosine"] >= 0.999 and arts["int8-dynamic"].metrics["cosine"] >= 0.99


@pytest.mark.slow
def test_speaker_lstm_recipe_distills_with_cosine_to_099(tmp_path):
    arts, prune, distill = _run("speaker_lstm_pruned", tmp_path / "out")
    assert prune["details"]["achieved_ratio"] == pytest.approx(0.6, abs=0.03)
    assert distill["details"]["loss"] == "cosine"
    assert arts["fp32"].metrics["cosine"] >= 0.99


@pytest.mark.slow
def test_pitch_recipe_prunes_without_hand_pinning_and_distills_with_bce(tmp_path):
    """On 3000 tones and 2 epochs (the recipe: 20000 and 3) to keep the test short.

    Measured: 5.82 cents unpruned, 42.05 pruned, 7.80 after distillation (the recipe: 5.77). Since BatchNorm
    statistics are re-estimated on the training data right after pruning (batchnorm: freeze), the pruned
    student starts at 15.51 cents and distillation ends at 7.25 (2026-12-04)."""
    from edgeai.zoo import pitch

    np.savez(tmp_path / "train.npz", **pitch.tones(3000, pitch.TRAIN_SEED))
    recipe = load_recipe(RECIPES / "pitch_cnn.yaml")
    steps = ({"prune": {"ratio": 0.7}},
             {"distill": {"epochs": 2, "patience": 2, "lr": 1e-3, "batchnorm": "freeze", "seed": 0}})
    arts, prune, distill = _run("pitch_cnn", tmp_path / "out", steps=steps,
                                data=replace(recipe.data, train=str(tmp_path / "train.npz")))
    assert [b["name"] for b in prune["details"]["auto_pinned"]] == ["conv6"]
    assert "mat1 and mat2" in prune["details"]["auto_pinned"][0]["reason"]
    assert prune["details"]["achieved_ratio"] >= 0.68
    d = distill["details"]
    assert d["loss"] == "bce" and d["metric"] == "pitch_error"
    before, after = arts["original"].metrics["pitch_error"], arts["fp32"].metrics["pitch_error"]
    assert after == pytest.approx(d["best_metric"], abs=0.05)                # the artifact scores what training saw
    assert d["initial_metric"] < before - 5 and after >= before - 2.5, (before, d["initial_metric"], after)
    assert after > d["initial_metric"] + 5                                    # distillation recovered most of it
    assert arts["int8-static"].metrics["pitch_error"] >= after - 1.0             # the recipe's budget: 1 cent
