"""Built-in trained reference models (a CNN, an LSTM, a ViT on 32x32 digits) and their descriptions.

`import edgeai.zoo` reads only a small JSON file; torch loads when a factory is called.
Retrain with `python -m edgeai.zoo.train` (see edgeai/zoo/train.py).
Models that carry real models' quantization traits, trained on generated data when first called:
`edgeai.zoo.text` (BERT-shaped and padded-mask encoders) and `edgeai.zoo.speaker` (stacked LSTM).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from edgeai.errors import ModelLoadError

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
DATA_DIR = Path(__file__).resolve().parent / "data"
METRICS_PATH = WEIGHTS_DIR / "metrics.json"

__all__ = ["ReferenceModel", "REFERENCE_MODELS", "digits_cnn", "digits_lstm", "digits_vit"]


@dataclass(frozen=True)
class ReferenceModel:
    """What recipes and tests need to know about one zoo model, without importing torch."""

    name: str               # "cnn" | "lstm" | "vit"
    kind: str               # "cnn" | "rnn" | "transformer"
    factory: str            # "module:function" returning the trained nn.Module in eval mode
    inputs: tuple[str, ...]  # input specs in edgeai.specs.parse_input_spec syntax
    test_data: str          # .npz with the inputs and `labels` of the held-out split
    calib_data: str         # .npz with 128 training inputs (no labels)
    train_data: str         # "module:function" returning the training feeds with `labels`
    accuracy: float | None  # held-out top-1 recorded by the training script (None: not trained)


def _load_state(model, key: str):
    """Load the shipped fp32 state_dict for `key` into `model`; return it in eval mode."""
    import torch

    path = WEIGHTS_DIR / f"digits_{key}.pt"
    if not path.is_file():
        raise ModelLoadError(f"zoo weights {str(path)!r} are missing; "
                             f"recreate them with `python -m edgeai.zoo.train --model {key}`")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(state)
    except Exception as e:  # truncated file, or weights from another architecture
        raise ModelLoadError(f"zoo weights {str(path)!r} do not load ({type(e).__name__}: {e}); "
                             f"recreate them with `python -m edgeai.zoo.train --model {key}`") from None
    return model.eval()


def digits_cnn():
    """The trained MobileNetV2-style DigitsCNN; input `image` (batch, 1, 32, 32), eval mode."""
    from edgeai.zoo.models import DigitsCNN

    return _load_state(DigitsCNN(), "cnn")


def digits_lstm():
    """The trained DigitsLSTM; input `rows` (batch, seq, 32), any seq, eval mode."""
    from edgeai.zoo.models import DigitsLSTM

    return _load_state(DigitsLSTM(), "lstm")


def digits_vit():
    """The trained timm-layout DigitsViT; input `image` (batch, 1, 32, 32), eval mode."""
    from edgeai.zoo.models import DigitsViT

    return _load_state(DigitsViT(), "vit")


def _recorded_accuracy() -> dict[str, float]:
    try:
        metrics = json.loads(METRICS_PATH.read_text())
    except (OSError, ValueError):
        return {}
    return {k: float(v["accuracy"]) for k, v in metrics.items() if "accuracy" in v}


def _reference_models() -> dict[str, ReferenceModel]:
    acc = _recorded_accuracy()
    specs = {  # name: (kind, input spec, layout)
        "cnn": ("cnn", "image:batch,1,32,32", "image"),
        "lstm": ("rnn", "rows:batch,seq=32,32", "rows"),
        "vit": ("transformer", "image:batch,1,32,32", "image"),
    }
    return {
        name: ReferenceModel(
            name=name,
            kind=kind,
            factory=f"edgeai.zoo:digits_{name}",
            inputs=(spec,),
            test_data=str(DATA_DIR / f"digits_test_{layout}.npz"),
            calib_data=str(DATA_DIR / f"digits_calib_{layout}.npz"),
            train_data=f"edgeai.zoo.data:train_{layout}",
            accuracy=acc.get(name),
        )
        for name, (kind, spec, layout) in specs.items()
    }


REFERENCE_MODELS: dict[str, ReferenceModel] = _reference_models()
