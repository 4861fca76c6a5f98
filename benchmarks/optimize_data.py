"""Training inputs for benchmarks/optimize.py's real-shaped models (unlabeled: distillation needs only inputs).

Data specs (`benchmarks/optimize_data.py:FUNCTION`), drawn from the zoo model's own generators with seeds
its evaluation and calibration sets do not use.
"""
from __future__ import annotations

import numpy as np


def bert_train() -> dict[str, np.ndarray]:
    """2000 padded topic sentences for edgeai.zoo.text:bert_encoder; no labels."""
    from edgeai.zoo import text

    ids, mask, _ = text.topic_sentences(2000, text.FULL.vocab, seed=211)
    return {"input_ids": ids, "attention_mask": mask}
