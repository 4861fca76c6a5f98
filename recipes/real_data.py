"""Training sets for the real-shaped recipes (prune -> distill needs more samples than the zoo's eval sets).

Data specs for recipes (`real_data.py:FUNCTION`, resolved next to the recipe file). Each draws from
the same generators as the zoo model's own data, with seeds the eval and calibration sets do not use.
"""
from __future__ import annotations

import numpy as np


def speaker_train() -> dict[str, np.ndarray]:
    """2000 utterances (48 frames of 40-band mel power) for edgeai.zoo.speaker:speaker_lstm; no labels."""
    from edgeai.zoo import speaker

    return {"mels": speaker.speaker_mels(2000, speaker.FULL.speakers, seed=211)[0]}


def speaker_small_train() -> dict[str, np.ndarray]:
    """1000 utterances for edgeai.zoo.speaker:speaker_lstm_small; no labels."""
    from edgeai.zoo import speaker

    return {"mels": speaker.speaker_mels(1000, speaker.SMALL.speakers, seed=111)[0]}


def sentences_small_train() -> dict[str, np.ndarray]:
    """2000 padded topic sentences for edgeai.zoo.text:bert_encoder_small; no labels."""
    from edgeai.zoo import text

    ids, mask, _ = text.topic_sentences(2000, text.SMALL.vocab, seed=111)
    return {"input_ids": ids, "attention_mask": mask}
