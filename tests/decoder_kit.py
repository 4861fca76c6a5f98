"""Tiny decoders for the decoder tests: Optimum exports of random Llama/GPT-2 configs, a tokenizer, eval text."""
from __future__ import annotations

import random
from pathlib import Path

WORDS = ("the cat dog bird sat ran on under over a mat log tree big small red blue quick slow and then it "
         "saw heard found one two three day night home away was is will be very not").split()


def text(n_words: int = 1500, seed: int = 0) -> str:
    """Deterministic pseudo-English over a small vocabulary (sentences of 4-12 words)."""
    rng = random.Random(seed)
    out, words = [], 0
    while words < n_words:
        k = rng.randint(4, 12)
        out.append(" ".join(rng.choice(WORDS) for _ in range(k)).capitalize() + ".")
        words += k
    return " ".join(out) + "\n"


def tokenizer(folder: Path, vocab_size: int = 256) -> Path:
    """A byte-level BPE tokenizer.json trained on text() (vocab <= vocab_size)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator([text(4000, seed=1)], trainer)
    folder.mkdir(parents=True, exist_ok=True)
    tok.save(str(folder / "tokenizer.json"))
    return folder / "tokenizer.json"


def _export(model, folder: Path) -> Path:
    import torch
    from optimum.exporters.onnx import main_export
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    hf = folder / "hf"
    model.save_pretrained(hf)
    main_export(str(hf), output=str(folder), task="text-generation-with-past", device="cpu")
    return folder / "model.onnx"


def llama(folder: Path, vocab_size: int = 256, hidden: int = 64) -> Path:
    """A 2-layer Llama (RoPE, RMSNorm, GQA 4/2 heads, SwiGLU), untied; its linear layers export as MatMul."""
    if (folder / "model.onnx").is_file():
        return folder / "model.onnx"
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      tie_word_embeddings=False)
    return _export(LlamaForCausalLM(cfg), folder)


def gpt2(folder: Path, vocab_size: int = 256, hidden: int = 64) -> Path:
    """A 2-layer GPT-2 as Optimum exports it: its Conv1D layers are Gemm nodes."""
    if (folder / "model.onnx").is_file():
        return folder / "model.onnx"
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel
    torch.manual_seed(0)
    return _export(GPT2LMHeadModel(GPT2Config(vocab_size=vocab_size, n_embd=hidden, n_layer=2, n_head=4,
                                              n_positions=512)), folder)
