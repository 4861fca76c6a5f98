"""Tiny Hugging Face models with random weights, written with save_pretrained (no downloads)."""
from __future__ import annotations

from pathlib import Path

TEXT = dict(vocab_size=200, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
            max_position_embeddings=128)


def save(model, folder: Path, safe: bool = True) -> Path:
    """Jitter every weight (fresh models have zero biases and unit LayerNorm scales, which trained
    ones never have and which exporters fold away), then save_pretrained."""
    import torch
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    model.save_pretrained(folder, safe_serialization=safe)
    return folder


def bert(folder: Path, safe: bool = True, **overrides) -> Path:
    """BertModel (feature-extraction)."""
    import torch
    from transformers import BertConfig, BertModel
    torch.manual_seed(0)
    return save(BertModel(BertConfig(**{**TEXT, **overrides})), folder, safe)


def bert_classifier(folder: Path, num_labels: int = 3) -> Path:
    import torch
    from transformers import BertConfig, BertForSequenceClassification
    torch.manual_seed(0)
    return save(BertForSequenceClassification(BertConfig(**TEXT, num_labels=num_labels)), folder)


def distilbert(folder: Path, **overrides) -> Path:
    """DistilBertModel (feature-extraction, no token_type_ids)."""
    import torch
    from transformers import DistilBertConfig, DistilBertModel
    torch.manual_seed(0)
    cfg = DistilBertConfig(**{**dict(vocab_size=200, dim=32, n_layers=2, n_heads=4, hidden_dim=64,
                                     max_position_embeddings=128), **overrides})
    return save(DistilBertModel(cfg), folder)


def distilbert_classifier(folder: Path) -> Path:
    """DistilBertForSequenceClassification (text-classification, no token_type_ids)."""
    import torch
    from transformers import DistilBertConfig, DistilBertForSequenceClassification
    torch.manual_seed(0)
    cfg = DistilBertConfig(vocab_size=200, dim=32, n_layers=2, n_heads=4, hidden_dim=64,
                           max_position_embeddings=128, num_labels=2)
    return save(DistilBertForSequenceClassification(cfg), folder)


def vit_classifier(folder: Path) -> Path:
    """ViTForImageClassification on 32x32 RGB images (image-classification)."""
    import torch
    from transformers import ViTConfig, ViTForImageClassification
    torch.manual_seed(0)
    cfg = ViTConfig(image_size=32, patch_size=8, num_channels=3, hidden_size=32, num_hidden_layers=2,
                    num_attention_heads=4, intermediate_size=64, num_labels=5)
    return save(ViTForImageClassification(cfg), folder)


def wav2vec2_classifier(folder: Path) -> Path:
    """Wav2Vec2ForSequenceClassification on raw audio (audio-classification)."""
    import torch
    from transformers import Wav2Vec2Config, Wav2Vec2ForSequenceClassification
    torch.manual_seed(0)
    cfg = Wav2Vec2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                         conv_dim=(16, 16), conv_stride=(5, 4), conv_kernel=(10, 8), num_conv_pos_embeddings=16,
                         num_conv_pos_embedding_groups=2, num_labels=4, classifier_proj_size=16,
                         do_stable_layer_norm=True, feat_extract_norm="layer")
    return save(Wav2Vec2ForSequenceClassification(cfg), folder)


def wordpiece_vocab(folder: Path, words: list[str]) -> Path:
    """A BertTokenizer folder from a vocab file written here: special tokens, then `words`."""
    from transformers import BertTokenizerFast
    folder.mkdir(parents=True, exist_ok=True)
    vocab = folder / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]) + "\n")
    BertTokenizerFast(vocab_file=str(vocab), do_lower_case=True).save_pretrained(folder)
    return folder
