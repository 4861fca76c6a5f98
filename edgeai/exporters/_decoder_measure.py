"""The transformers generate() backend of edgeai.runtime.generate_measure (PyTorch; run as its own process)."""
from __future__ import annotations

import json
import time


def measure_transformers(model_spec: str, *, prompt_tokens: int = 32, new_tokens: int = 128, threads: int = 1,
                         seed: int = 0) -> dict:
    """Greedy generate() of the model `model_spec` (hf:FOLDER or a factory) on the benchmark prompt: TTFT is
    a max_new_tokens=1 call, decode tokens/s comes from the full call minus it."""
    import torch
    from transformers import GenerationConfig

    from edgeai.bench.env import peak_rss_bytes
    from edgeai.exporters._decoder_torch import load_decoder
    from edgeai.runtime.generate_measure import _result, prompt_ids
    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    source = load_decoder(model_spec)
    load_s = time.perf_counter() - t0
    if source.hf_model is None:
        raise ValueError(f"{model_spec} is not a transformers model: it has no generate()")
    model = source.hf_model
    ids = torch.tensor([prompt_ids(source.layout.vocab_size, prompt_tokens, seed)])
    mask = torch.ones_like(ids)

    def run(n: int):
        cfg = GenerationConfig(max_new_tokens=n, min_new_tokens=n, do_sample=False, eos_token_id=None, pad_token_id=0)
        t = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(ids, attention_mask=mask, generation_config=cfg)
        return time.perf_counter() - t, out[0, ids.shape[1]:].tolist()

    run(4)  # warm-up
    ttft_s, _ = run(1)
    total_s, tokens = run(new_tokens)
    return _result("transformers", ttft_s, max(total_s - ttft_s, 1e-9), tokens, prompt_tokens, threads, load_s,
                   peak_rss_bytes())


if __name__ == "__main__":
    from edgeai.runtime.generate_measure import parse_args
    a = parse_args()
    print(json.dumps(measure_transformers(a.target, prompt_tokens=a.prompt_tokens, new_tokens=a.new_tokens,
                                          threads=a.threads, seed=a.seed)))
