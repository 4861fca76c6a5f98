"""The zoo's pitch CNN: its tone data, its cents metric, and the trained weights' recorded error."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from edgeai.zoo import pitch

torch.set_num_threads(1)


def test_tones_are_normalised_frames_with_their_f0_and_reproducible():
    a, b = pitch.tones(16, 3), pitch.tones(16, 3)
    assert a["audio"].shape == (16, 1024) and a["audio"].dtype == np.float32
    assert np.array_equal(a["audio"], b["audio"]) and np.array_equal(a["labels"], b["labels"])
    assert np.allclose(a["audio"].mean(1), 0, atol=1e-5) and np.allclose(a["audio"].std(1), 1, atol=1e-3)
    assert (a["labels"] >= pitch.TONE_RANGE_HZ[0]).all() and (a["labels"] <= pitch.TONE_RANGE_HZ[1]).all()


def test_decoding_the_training_target_gives_back_the_pitch_within_a_cent():
    f0 = np.array([55.0, 110.0, 261.63, 440.0, 1234.5])
    assert np.abs(pitch.cents_error(pitch.targets(f0), f0)).max() < 1.0
    assert pitch.pitch_error({"output": pitch.targets(f0)}, f0) == pytest.approx(0.0, abs=1.0)
    off = pitch.targets(f0 * 2 ** (50 / 1200))                   # 50 cents sharp
    assert pitch.pitch_error({"output": off}, f0) == pytest.approx(-50.0, abs=1.0)


def test_pitch_error_without_labels_says_what_it_needs():
    with pytest.raises(ValueError, match="f0 of each frame in Hz"):
        pitch.pitch_error({"output": np.zeros((2, 360))}, None)


def test_trained_pitch_cnn_has_the_crepe_tiny_shape_and_its_recorded_error():
    model = pitch.pitch_cnn()
    assert sum(p.numel() for p in model.parameters()) == 486_552
    recorded = json.loads((pitch.WEIGHTS.parent / "metrics.json").read_text())["pitch"]["cents_error"]
    test = pitch.test_tones()
    with torch.no_grad():
        out = model(torch.from_numpy(test["audio"][:4]))
    assert out.shape == (4, 360) and float(out.min()) >= 0 and float(out.max()) <= 1
    assert -pitch.evaluate(model, test) == pytest.approx(recorded, abs=0.01) and recorded < 8.0
