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


def _save(model, hf: Path) -> Path:
    """Jitter the fresh weights (trained models have no zero biases or unit norms), save with a tokenizer."""
    import torch
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    model.save_pretrained(hf)
    tokenizer(hf, model.config.vocab_size)
    return hf


def llama_hf(hf: Path, vocab_size: int = 256, hidden: int = 64) -> Path:
    """A 2-layer Llama (RoPE, RMSNorm, GQA 4/2 heads, SwiGLU), untied, as a save_pretrained folder."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      tie_word_embeddings=False)
    return _save(LlamaForCausalLM(cfg), hf)


def gpt2_hf(hf: Path, vocab_size: int = 256, hidden: int = 64) -> Path:
    """A 2-layer GPT-2 (tied embedding, Conv1D layers) as a save_pretrained folder."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel
    torch.manual_seed(0)
    return _save(GPT2LMHeadModel(GPT2Config(vocab_size=vocab_size, n_embd=hidden, n_layer=2, n_head=4,
                                            n_positions=512)), hf)


def exported(folder: Path, build) -> Path:
    """edgeai's decoder export (FP32) of the HF folder `build(folder / "hf")`, made once per folder."""
    out = folder / "out"
    if not (out / "manifest.json").is_file():
        import edgeai
        edgeai.export(f"hf:{build(folder / 'hf')}", out, task="text-generation")
    return out


def zoo_export(folder: Path, factory: str) -> Path:
    """`edgeai export edgeai.zoo.lm:FACTORY --task text-generation` (the CLI) into folder/out."""
    from edgeai.cli import main
    out = folder / "out"
    assert main(["export", f"edgeai.zoo.lm:{factory}", "--task", "text-generation", "-o", str(out), "-q"]) == 0
    return out


def optimum_gpt2(folder: Path) -> Path:
    """GPT-2 as Optimum exports it: its Conv1D layers stay Gemm nodes (the MatMulNBits pitfall)."""
    if not (folder / "model.onnx").is_file():
        from optimum.exporters.onnx import main_export
        main_export(str(gpt2_hf(folder / "hf")), output=str(folder), task="text-generation-with-past", device="cpu")
    return folder / "model.onnx"


def contract_decoder(path: Path, vocab: int = 256, hidden: int = 64, heads: int = 4, layers: int = 2,
                     tied: bool = False, max_positions: int = 512, seed: int = 0, gemm: bool = False) -> Path:
    """A GPT-style decoder written straight in ONNX (milliseconds, no torch) with edgeai's decoder contract:
    inputs input_ids, attention_mask, position_ids, past_key_values.N.key/value, logits_to_keep; outputs
    logits, present.N.key/value. tied: the embedding is kept once as lm_head's B (hidden, vocab) and the
    token lookup is Gather(axis=1) + Transpose, as edgeai's export writes a tied GPT-2. gemm: the linear layers
    are Reshape -> Gemm -> Reshape, as GPT-2's Conv1D exports through the TorchScript path (Optimum)."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    rng = np.random.default_rng(seed)
    hd = hidden // heads
    nodes, inits = [], []

    def w(name, *shape, scale=0.08):
        inits.append(numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name))
        return name

    def c(name, value, dtype=np.int64):
        inits.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def op(kind, ins, out, **attrs):
        nodes.append(helper.make_node(kind, ins, [out], name=f"node_{out}", **attrs))
        return out

    def linear(x, name, k, n):
        if gemm:
            flat = op("Reshape", [x, c(f"{name}.flat", [-1, k])], f"{name}_flat")
            y = op("Gemm", [flat, w(f"{name}.weight", k, n), w(f"{name}.bias", n, scale=0.02)], f"{name}_gemm")
            lead = op("Shape", [x], f"{name}_lead", start=0, end=2)           # (batch, seq)
            shape = op("Concat", [lead, c(f"{name}.n", [n])], f"{name}_shape", axis=0)
            return op("Reshape", [y, shape], f"{name}_out")
        return op("Add", [op("MatMul", [x, w(f"{name}.weight", k, n)], f"{name}_mm"), w(f"{name}.bias", n, scale=0.02)],
                  f"{name}_out")

    def norm(x, name):
        inits.append(numpy_helper.from_array((1 + 0.1 * rng.standard_normal(hidden)).astype(np.float32), f"{name}.g"))
        return op("LayerNormalization", [x, f"{name}.g", w(f"{name}.b", hidden, scale=0.02)], f"{name}_out", axis=-1)

    c("heads_shape", [0, 0, heads, hd])
    c("hidden_shape", [0, 0, hidden])
    c("zero", 0), c("one", 1), c("axis1", [1]), c("big", [2 ** 62])
    c("q_axes", [1, 3]), c("m_axes", [1, 2])
    c("scale", 1.0 / hd ** 0.5, np.float32), c("neg", -1e9, np.float32)
    if tied:
        table = w("lm_head.weight.T", hidden, vocab)
        tok = op("Transpose", [op("Gather", [table, "input_ids"], "tok_h", axis=1)], "tok", perm=[1, 2, 0])
    else:
        tok = op("Gather", [w("wte", vocab, hidden), "input_ids"], "tok")
    x = op("Add", [tok, op("Gather", [w("wpe", max_positions, hidden), "position_ids"], "pos")], "x0")
    qpos = op("Unsqueeze", ["position_ids", "q_axes"], "qpos")                       # (b, 1, s, 1)
    mask = op("Cast", [op("Unsqueeze", ["attention_mask", "m_axes"], "mask4")], "maskb", to=TensorProto.BOOL)
    outputs = []
    for i in range(layers):
        h = norm(x, f"h{i}.ln1")
        q, k, v = (op("Transpose", [op("Reshape", [linear(h, f"h{i}.{n}", hidden, hidden), "heads_shape"],
                                       f"h{i}.{n}_r")], f"h{i}.{n}_t", perm=[0, 2, 1, 3]) for n in "qkv")
        k_all = op("Concat", [f"past_key_values.{i}.key", k], f"present.{i}.key", axis=2)
        v_all = op("Concat", [f"past_key_values.{i}.value", v], f"present.{i}.value", axis=2)
        outputs += [k_all, v_all]
        scores = op("Mul", [op("MatMul", [q, op("Transpose", [k_all], f"h{i}.kT", perm=[0, 1, 3, 2])], f"h{i}.qk"),
                            "scale"], f"h{i}.scores")
        total = op("Gather", [op("Shape", [k_all], f"h{i}.kshape"), c(f"h{i}.two", 2)], f"h{i}.total")
        kpos = op("Range", ["zero", total, "one"], f"h{i}.kpos")                       # (t,)
        allowed = op("And", [op("LessOrEqual", [kpos, qpos], f"h{i}.causal"), mask], f"h{i}.allowed")
        probs = op("Softmax", [op("Where", [allowed, scores, "neg"], f"h{i}.masked")], f"h{i}.probs", axis=-1)
        ctx = op("Reshape", [op("Transpose", [op("MatMul", [probs, v_all], f"h{i}.pv")], f"h{i}.pvt", perm=[0, 2, 1, 3]),
                             "hidden_shape"], f"h{i}.ctx")
        x = op("Add", [x, linear(ctx, f"h{i}.o", hidden, hidden)], f"h{i}.x1")
        m = op("Relu", [linear(norm(x, f"h{i}.ln2"), f"h{i}.fc", hidden, 2 * hidden)], f"h{i}.act")
        x = op("Add", [x, linear(m, f"h{i}.proj", 2 * hidden, hidden)], f"h{i}.x2")
    x = norm(x, "ln_f")
    start = op("Neg", ["logits_to_keep"], "keep_start")                                 # 0 keeps every position
    x = op("Slice", [x, start, "big", "axis1"], "kept")
    op("MatMul", [x, "lm_head.weight.T" if tied else w("lm_head.weight", hidden, vocab)], "logits")
    past = [helper.make_tensor_value_info(f"past_key_values.{i}.{kv}", TensorProto.FLOAT, ["batch", heads, "past", hd])
            for i in range(layers) for kv in ("key", "value")]
    graph = helper.make_graph(
        nodes, "contract_decoder",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"]),
         helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "total"]),
         helper.make_tensor_value_info("position_ids", TensorProto.INT64, ["batch", "seq"]), *past,
         helper.make_tensor_value_info("logits_to_keep", TensorProto.INT64, [1])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", "kept", vocab]),
         *[helper.make_tensor_value_info(o, TensorProto.FLOAT, ["batch", heads, "total", hd]) for o in outputs]],
        initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def export_folder(folder: Path, quantize: tuple = (), eval_text: str | None = None, **decoder_options) -> Path:
    """An export folder as `edgeai export --task text-generation [--quantize ...]` writes it, around
    contract_decoder: model.onnx, tokenizer.json, manifest.json (FP32 + variants from decoder_variants)."""
    from datetime import datetime, timezone

    from edgeai.exporters.decoder import _entry
    from edgeai.manifest import Manifest
    from edgeai.recipe import DataConfig, Recipe
    from edgeai.steps.decoder_variants import decoder_variants
    opts = {"vocab": 256, "hidden": 64, "heads": 4, "layers": 2, "max_positions": 512, **decoder_options}
    contract_decoder(folder / "model.onnx", **opts)
    tokenizer(folder, opts["vocab"])
    decoder = {"kind": "causal-lm", "layers": opts["layers"], "kv_heads": opts["heads"],
               "head_dim": opts["hidden"] // opts["heads"], "vocab_size": opts["vocab"],
               "max_positions": opts["max_positions"], "cache_dtype": "float32",
               "past_key": "past_key_values.{}.key", "past_value": "past_key_values.{}.value",
               "present_key": "present.{}.key", "present_value": "present.{}.value",
               "logits_to_keep": "logits_to_keep", "tokenizer": "tokenizer.json", "eos_token_ids": [],
               "bos_token_id": None, "tied_embedding": bool(opts.get("tied"))}
    fp32 = _entry("fp32", folder, ["model.onnx", "tokenizer.json"], {"decoder": decoder}, {}, [])
    recipe = Recipe(model="decoder_kit", task="text-generation", quantize=tuple({q: {}} for q in quantize),
                    data=DataConfig(eval=eval_text))
    variants, failed = decoder_variants(recipe, folder, fp32, lambda msg: None)
    Manifest(source={"kind": "causal-lm", "task": "text-generation"}, artifacts=[fp32, *variants], failed=failed,
             versions={}, created=datetime.now(timezone.utc).isoformat(timespec="seconds")).write(folder)
    return folder
