"""Causal LMs for decoder tests and benchmarks: a GPT-2-architecture LM trained here, and random-weight shapes.

Factories (`edgeai.zoo.lm:NAME`, no arguments; transformers models in eval mode, float32):

- `tiny_gpt2`: GPT2LMHeadModel (4 layers, dim 128, 4 heads, 256 positions, byte-level BPE vocab 512; 0.9M
  params) trained on text from a template grammar (`edgeai/zoo/_lm_text.py`). Its weights (fp16,
  `weights/tiny_lm.safetensors`) and tokenizer (`weights/tiny_lm_tokenizer.json`) ship with edgeai;
  `python -m edgeai.zoo.lm` retrains both (seeded, a few CPU minutes) and records the validation
  perplexity in `weights/tiny_lm.json`. The model's `tokenizer_file` attribute names the tokenizer, which
  a decoder export copies into its folder.
- `tiny_llama`: LlamaForCausalLM with RoPE, RMSNorm, grouped-query attention (4 query / 2 KV heads) and a
  SwiGLU MLP, random weights (seed 0), vocab 512: export parity tests.
- `gpt2_small_random` (GPT-2 small: 124M params) and `qwen2_05b_random` (Qwen2-0.5B shape: 494M params),
  random weights: speed and memory benchmarks only (weights do not change speed). Never built by default tests.

Text: `text(split)` returns the grammar's text for "train", "valid" or "test"; `write_text(path, split)`
writes it for `edgeai eval --text`. `save_hf(folder)` writes `tiny_gpt2` as a save_pretrained folder
(model.safetensors, config.json, tokenizer.json) for `edgeai export hf:FOLDER`.
"""
from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

from edgeai.errors import ModelLoadError
from edgeai.zoo import WEIGHTS_DIR
from edgeai.zoo import _lm_text

log = logging.getLogger(__name__)

__all__ = ["tiny_gpt2", "tiny_llama", "gpt2_small_random", "qwen2_05b_random", "text", "write_text", "save_hf",
           "LMTrainConfig"]

WEIGHTS = WEIGHTS_DIR / "tiny_lm.safetensors"
TOKENIZER = WEIGHTS_DIR / "tiny_lm_tokenizer.json"
METRICS = WEIGHTS_DIR / "tiny_lm.json"
TEXT_CHARS = {"train": 600_000, "valid": 40_000, "test": 40_000}


@dataclass(frozen=True)
class LMTrainConfig:
    vocab: int = 512
    dim: int = 128
    layers: int = 4
    heads: int = 4
    positions: int = 256
    seq: int = 192
    batch: int = 8
    steps: int = 300
    lr: float = 3e-3
    seed: int = 0


CONFIG = LMTrainConfig()


def text(split: str = "valid") -> str:
    """The grammar's text for `split` (train, valid, test): the same on every call and machine."""
    if split not in TEXT_CHARS:
        raise ValueError(f"unknown split {split!r}; known: {', '.join(TEXT_CHARS)}")
    return _lm_text.text(split, TEXT_CHARS[split])


def write_text(path: str | Path, split: str = "valid") -> Path:
    from edgeai.fsutil import atomic_write_text
    atomic_write_text(Path(path), text(split))
    return Path(path)


def _gpt2_config(c: LMTrainConfig = CONFIG):
    from transformers import GPT2Config
    return GPT2Config(vocab_size=c.vocab, n_positions=c.positions, n_embd=c.dim, n_layer=c.layers, n_head=c.heads,
                      bos_token_id=0, eos_token_id=0, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)


def tiny_gpt2():
    """The trained GPT-2-architecture LM (eval, float32) with `tokenizer_file` set."""
    import torch
    from safetensors.torch import load_file
    from transformers import GPT2LMHeadModel
    if not WEIGHTS.is_file() or not TOKENIZER.is_file():
        raise ModelLoadError(f"zoo LM weights {str(WEIGHTS)!r} are missing; recreate them with "
                             "`python -m edgeai.zoo.lm`")
    model = GPT2LMHeadModel(_gpt2_config())
    try:
        state = {k: v.to(torch.float32) for k, v in load_file(str(WEIGHTS)).items()}
        missing, unexpected = model.load_state_dict(state, strict=False)
    except Exception as e:  # a truncated file, or weights of another shape
        raise ModelLoadError(f"zoo LM weights {str(WEIGHTS)!r} do not load ({type(e).__name__}: {e}); "
                             "recreate them with `python -m edgeai.zoo.lm`") from None
    missing = [k for k in missing if k != "lm_head.weight"]  # tied to the token embedding
    if missing or unexpected:
        raise ModelLoadError(f"zoo LM weights {str(WEIGHTS)!r} do not fit the model (missing {missing[:3]}, "
                             f"unexpected {unexpected[:3]}); recreate them with `python -m edgeai.zoo.lm`")
    model.tie_weights()
    model.tokenizer_file = str(TOKENIZER)
    return model.eval()


def save_hf(folder: str | Path) -> Path:
    """Write `tiny_gpt2` as a Hugging Face folder (safetensors weights, config.json, tokenizer.json)."""
    import shutil
    folder = Path(folder)
    model = tiny_gpt2()
    model.save_pretrained(folder, safe_serialization=True)
    shutil.copyfile(TOKENIZER, folder / "tokenizer.json")
    return folder


def tiny_llama():
    """A Llama-style decoder (RoPE, RMSNorm, GQA 4/2 heads, SwiGLU) with seeded random weights."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=512, hidden_size=64, intermediate_size=176, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, attn_implementation="eager")
    return LlamaForCausalLM(cfg).eval()


def gpt2_small_random():
    """GPT-2 small's shape (12 layers, dim 768, 12 heads, vocab 50257; 124M params), random weights."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel
    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(attn_implementation="eager")).eval()


def qwen2_05b_random():
    """Qwen2-0.5B's shape (24 layers, dim 896, 14/2 heads, SwiGLU 4864, vocab 151936, tied; 494M params)."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM
    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                      num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=32768,
                      tie_word_embeddings=True, attn_implementation="eager")
    return Qwen2ForCausalLM(cfg).eval()


# ---------------------------------------------------------------------------- training

def train(config: LMTrainConfig = CONFIG, out_dir: Path = WEIGHTS_DIR) -> dict:
    """Train the tokenizer and the LM from scratch (seeded, one thread) and write weights, tokenizer and metrics."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # reproducible sums, and no thread thrash on a busy machine
    try:
        return _train(config, out_dir)
    finally:
        torch.set_num_threads(threads)


def _train(config: LMTrainConfig, out_dir: Path) -> dict:
    import math

    import numpy as np
    import torch
    from safetensors.torch import save_file
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2LMHeadModel

    torch.manual_seed(config.seed)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator([text("train")], trainers.BpeTrainer(
        vocab_size=config.vocab, special_tokens=["<|endoftext|>"], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    ids = {s: np.array(tok.encode(text(s)).ids, np.int64) for s in ("train", "valid")}
    model = GPT2LMHeadModel(_gpt2_config(config)).train()
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, config.lr, total_steps=config.steps, pct_start=0.1)
    rng = np.random.default_rng(config.seed)
    for step in range(config.steps):
        starts = rng.integers(0, len(ids["train"]) - config.seq - 1, config.batch)
        batch = torch.from_numpy(np.stack([ids["train"][s:s + config.seq] for s in starts]))
        loss = model(batch, labels=batch).loss
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % 50 == 0:
            log.info("step %d loss %.3f", step, loss.item())
    model.eval()
    ppl = math.exp(_mean_nll(model, ids["valid"], config.seq))
    state = {k: v.detach().to(torch.float16).contiguous() for k, v in model.state_dict().items()
             if k != "lm_head.weight"}
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file(state, str(out_dir / WEIGHTS.name))
    tok.save(str(out_dir / TOKENIZER.name))
    metrics = {"valid_perplexity": round(ppl, 3), "uniform_perplexity": config.vocab,
               "valid_tokens": int(len(ids["valid"])), "train_tokens": int(len(ids["train"])),
               "params": sum(p.numel() for p in model.parameters()), "config": asdict(config)}
    (out_dir / METRICS.name).write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics


def _mean_nll(model, ids, seq: int) -> float:
    """Mean next-token loss over non-overlapping windows of `seq` tokens."""
    import torch
    losses = []
    with torch.no_grad():
        for s in range(0, len(ids) - seq, seq):
            window = torch.from_numpy(ids[s:s + seq])[None]
            losses.append(model(window, labels=window).loss.item())
    return sum(losses) / len(losses)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    print(json.dumps(train(), indent=2))
