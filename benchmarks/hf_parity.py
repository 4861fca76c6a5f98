"""The hf: acceptance check on a BERT-style folder: FP32 parity per real token and int8-dynamic sentence embeddings.

A random-weight BertModel with BERT-mini's shape (hidden 256, 4 layers, 4 heads, vocab 30522) is saved
with save_pretrained and exported with `edgeai export hf:FOLDER --task feature-extraction --quantize
int8-dynamic` (no --input flags). On 16 right-padded sentences of 64 tokens (lengths 4-64) it reports
the cosine of each real token's last_hidden_state to transformers', and of the mean-pooled sentence
embeddings, for FP32 and int8-dynamic.

    python benchmarks/hf_parity.py [--write-results]
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

import _common as C

BATCH, SEQ = 16, 64


def cosine(a, b):
    a, b = a.astype(np.float64), b.astype(np.float64)
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


def main() -> None:
    args = C.parser(__doc__).parse_args()
    import torch
    import transformers as t

    from edgeai import runtime
    from edgeai.cli import main as cli
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    cfg = t.BertConfig(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, intermediate_size=1024)
    rng = np.random.default_rng(0)
    lengths = rng.integers(4, SEQ + 1, size=BATCH)
    mask = (np.arange(SEQ)[None, :] < lengths[:, None]).astype(np.int64)
    feeds = {"input_ids": rng.integers(1000, cfg.vocab_size, size=(BATCH, SEQ)).astype(np.int64) * mask,
             "attention_mask": mask, "token_type_ids": np.zeros((BATCH, SEQ), dtype=np.int64)}
    rows = []
    with C.workdir() as tmp:
        folder, out = Path(tmp) / "bert", Path(tmp) / "out"
        torch.manual_seed(0)
        model = t.BertModel(cfg)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.02 * torch.randn_like(p))
        model.save_pretrained(folder)
        assert cli(["export", f"hf:{folder}", "--task", "feature-extraction", "--quantize", "int8-dynamic",
                    "--no-bench", "-o", str(out), "-q"]) == 0
        with torch.inference_mode():
            want = model.eval()(**{k: torch.from_numpy(v) for k, v in feeds.items()}).last_hidden_state.numpy()
        m = mask[..., None]
        pooled = (want * m).sum(1) / m.sum(1)
        sizes = {a["name"]: a["size_bytes"] for a in json.loads((out / "manifest.json").read_text())["artifacts"]}
        for name in ("fp32", "int8-dynamic"):
            got = runtime.load(out, artifact=name).run(feeds)["last_hidden_state"]
            rows.append({"variant": name, "size_mb": sizes[name] / 1e6, "tokens": int(mask.sum()),
                         "token_cos_min": float(cosine(want, got)[mask.astype(bool)].min()),
                         "sentence_cos_min": float(cosine(pooled, (got * m).sum(1) / m.sum(1)).min()),
                         "max_abs_err": float(np.abs(want - got)[mask.astype(bool)].max())})
    columns = [("variant", "variant", ""), ("size_mb", "size MB", ".2f"), ("tokens", "real tokens", ""), ("token_cos_min", "min cosine per token", ".6f"),
               ("sentence_cos_min", "min cosine per sentence (mean-pooled)", ".6f"),
               ("max_abs_err", "max abs err (real tokens)", ".2e")]
    C.write_results("hf_parity", rows, C.markdown_table(rows, columns), C.environment(),
                    {"batch": BATCH, "seq": SEQ, "model": "BertModel hidden 256, 4 layers, random weights"},
                    write_results=args.write_results)


if __name__ == "__main__":
    main()
