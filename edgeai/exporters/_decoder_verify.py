"""Check a decoder export against PyTorch: logits at two prompt lengths, decode steps on the cache, greedy tokens."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from edgeai.errors import VerificationError
from edgeai.verify import Parity, Tolerance, compare, passes

PROMPT_LENGTHS = (5, 12)   # two prefill lengths, from an empty past
DECODE_STEPS = 4           # one-token steps on the cache after the longer prompt
GREEDY_PROMPTS = 2         # prompts whose greedy continuation must be identical
GREEDY_TOKENS = 8


def verify_decoder(source, model_path: Path, decoder: dict, tolerance: Tolerance, *, greedy: bool = True) -> dict:
    """Run the export in edgeai's runtime and the flat forward in PyTorch on the same tokens.

    Returns the manifest's parity dict (edgeai.verify.Parity's fields, plus `greedy`); raises
    VerificationError past `tolerance` or when a greedy token differs.
    """
    from edgeai.runtime.generate import DecoderSession
    session = DecoderSession(model_path, decoder, optimization="all")
    rng = np.random.default_rng(0)
    vocab = source.layout.vocab_size
    checks = []
    for n in PROMPT_LENGTHS:
        ids = rng.integers(0, vocab, (1, n))
        ref = _torch_logits(source, ids)
        checks.append({"dims": {"prompt": n}, "outputs": compare([ref[0]], [session.logits(ids)], ["logits"])})
    ids = rng.integers(0, vocab, (1, PROMPT_LENGTHS[-1] + DECODE_STEPS))
    n0 = PROMPT_LENGTHS[-1]
    session.prefill(ids[:, :n0])
    ref_all = _torch_logits(source, ids)[0]
    for k in range(DECODE_STEPS):
        got = session.step(int(ids[0, n0 + k]))
        checks.append({"dims": {"decode_step": k + 1, "past_seq": n0 + k},
                       "outputs": compare([ref_all[n0 + k]], [got], ["logits"])})
    parity = Parity(passes({f"{i}": e for i, c in enumerate(checks) for e in c["outputs"].values()}, tolerance),
                    "PyTorch (the flat KV-cache forward)", tolerance, checks, [])
    if not parity.passed:
        raise VerificationError(f"the decoder export computes something else: {parity.failure()}")
    out = parity.to_dict()
    if greedy:
        out["greedy"] = check_greedy(source, session, rng)
    return out


def _torch_logits(source, ids: np.ndarray) -> np.ndarray:
    """Full-sequence logits (1, n, vocab) of the flat forward from an empty past."""
    import torch
    layout = source.layout
    t = torch.from_numpy(np.asarray(ids, np.int64))
    n = t.shape[1]
    past = [torch.zeros(1, layout.kv_heads, 0, layout.head_dim) for _ in layout.past_names()]
    with torch.no_grad():
        out = source.flat(t, torch.ones(1, n, dtype=torch.int64), torch.arange(n)[None], *past)
    return out[0].float().numpy()


def torch_greedy(source, ids: list[int], new_tokens: int) -> list[int]:
    """The reference's greedy continuation: transformers generate() where there is one, else a loop on the
    flat forward (a factory's own module). End-of-sequence ids do not stop it."""
    import torch
    if source.hf_model is not None:
        from transformers import GenerationConfig
        cfg = GenerationConfig(max_new_tokens=new_tokens, do_sample=False, eos_token_id=None,
                               pad_token_id=source.eos_token_ids[0] if source.eos_token_ids else 0)
        with torch.no_grad():
            out = source.hf_model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.int64),
                                           generation_config=cfg)
        return [int(t) for t in out[0, len(ids):]]
    seq = list(ids)
    for _ in range(new_tokens):
        seq.append(int(np.argmax(_torch_logits(source, np.array([seq]))[0, -1])))
    return seq[len(ids):]


def runtime_greedy(session, ids: list[int], new_tokens: int) -> list[int]:
    """Greedy continuation in edgeai's runtime, end-of-sequence ids included (as torch_greedy)."""
    out = []
    logits = session.prefill(ids)
    for i in range(new_tokens):
        out.append(int(np.argmax(logits)))
        if i + 1 < new_tokens:
            logits = session.step(out[-1])
    return out


def check_greedy(source, session, rng, prompts: list[list[int]] | None = None, new_tokens: int = GREEDY_TOKENS) -> dict:
    """Greedy tokens of the export vs the reference on each prompt; VerificationError at the first difference."""
    vocab = source.layout.vocab_size
    prompts = prompts or [[int(i) for i in rng.integers(0, vocab, n)] for n in PROMPT_LENGTHS[:GREEDY_PROMPTS]]
    for p in prompts:
        ref, got = torch_greedy(source, p, new_tokens), runtime_greedy(session, p, new_tokens)
        if ref != got:
            at = next(i for i, (a, b) in enumerate(zip(ref, got)) if a != b)
            raise VerificationError(f"greedy tokens differ from PyTorch at new token {at} of a {len(p)}-token "
                                    f"prompt: {got[:at + 1]} vs {ref[:at + 1]}")
    return {"prompts": len(prompts), "new_tokens": new_tokens, "identical": True}
