"""A decoder graph written directly from a Hugging Face model's weights with onnxruntime's fused operators.

The traced graph of a small decoder is mostly glue (reshapes, transposes, concats of the cache, mask
arithmetic: 278 nodes for a 4-layer GPT-2), and on a CPU each node costs a few microseconds whatever its
size, so a small model's decode step is dominated by node count, not arithmetic. For the architectures
below the graph is instead built the way onnxruntime-genai's model builder lays it out:

    embeddings -> per layer: [Skip]LayerNorm -> MatMul(QKV) -> GroupQueryAttention (KV cache, causal mask,
    rotary inside) -> MatMul(out) -> SkipLayerNorm (residual) -> MLP (FastGelu or SiLU-gated) -> ... -> lm_head

(about 9 nodes a layer). Same inputs and outputs as the traced export (`_decoder_torch`'s flat contract:
input_ids, attention_mask, position_ids, past_key_values.N.key/value, logits_to_keep -> logits, present.N.*),
weights as plain MatMul initializers (so weight-only quantization applies unchanged) and a tied embedding
stored once. The export verifies it against PyTorch like the traced one and falls back to tracing when it
does not match.

Supported: GPT2LMHeadModel; LlamaForCausalLM, Qwen2ForCausalLM, MistralForCausalLM with default RoPE and no
sliding window. Limits (stated in the docs): batch rows must be right-padded (attention_mask all ones up to
each row's length; GroupQueryAttention reads only the lengths), and with RoPE the positions are the cache
positions (position_ids is accepted but not read), which is what generation feeds.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from edgeai.exporters._decoder_graph import INT64_MAX, LOGITS_TO_KEEP, save
from edgeai.exporters._decoder_torch import PAST_KEY, PAST_VALUE, PRESENT_KEY, PRESENT_VALUE

log = logging.getLogger(__name__)

MS = "com.microsoft"
_GELUS = {"gelu_new": "FastGelu", "gelu_pytorch_tanh": "FastGelu", "gelu_fast": "FastGelu", "gelu": "BiasGelu"}
_LLAMA_LIKE = ("llama", "qwen2", "mistral")


def unsupported_reason(hf_model: Any) -> str | None:
    """Why `hf_model` cannot take the fused graph (None: it can)."""
    if hf_model is None:
        return "not a transformers model (a factory's own flat forward is traced)"
    cfg = hf_model.config
    kind = getattr(cfg, "model_type", None)
    if kind == "gpt2":
        if getattr(cfg, "activation_function", None) not in _GELUS:
            return f"activation {cfg.activation_function!r}"
        if not getattr(cfg, "scale_attn_weights", True) or getattr(cfg, "scale_attn_by_inverse_layer_idx", False):
            return "non-default attention scaling"
        if getattr(cfg, "add_cross_attention", False):
            return "cross-attention"
        return None
    if kind in _LLAMA_LIKE:
        if getattr(cfg, "hidden_act", None) != "silu":
            return f"activation {cfg.hidden_act!r}"
        rope = getattr(cfg, "rope_scaling", None) or {}
        if rope.get("rope_type", rope.get("type", "default")) != "default":
            return f"rope scaling {rope.get('rope_type', rope.get('type'))!r}"
        if getattr(cfg, "sliding_window", None) and getattr(cfg, "use_sliding_window", kind == "mistral"):
            return "sliding-window attention"
        if getattr(cfg, "mlp_bias", False):
            return "MLP biases"
        if float(getattr(hf_model.model.rotary_emb, "attention_scaling", 1.0)) != 1.0:
            return "scaled rotary attention"
        return None
    return f"model type {kind!r} (fused graphs exist for gpt2, {', '.join(_LLAMA_LIKE)})"


class _Graph:
    """A small builder: nodes, initializers, unique names."""

    def __init__(self):
        self.nodes, self.inits, self._n = [], [], 0

    def init(self, name: str, array: np.ndarray) -> str:
        from onnx import numpy_helper
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def op(self, op_type: str, inputs: list[str], outputs: int | list[str] = 1, name: str | None = None,
           domain: str = "", **attrs) -> list[str]:
        from onnx import helper
        self._n += 1
        name = name or f"{op_type}_{self._n}"
        outs = [f"{name}/out{i}" for i in range(outputs)] if isinstance(outputs, int) else outputs
        self.nodes.append(helper.make_node(op_type, inputs, outs, name=name, domain=domain or None, **attrs))
        return outs


def _np(t) -> np.ndarray:
    return t.detach().to("cpu").float().numpy()


def build(hf_model: Any, layout, path: Path, *, opset: int = 18, external_data: bool = False) -> dict:
    """Write the fused graph of `hf_model` to `path`; returns facts for the manifest's `normalize` details."""
    from onnx import TensorProto, helper
    cfg = hf_model.config
    sd = hf_model.state_dict()
    gpt2 = cfg.model_type == "gpt2"
    g = _Graph()
    L, kvh, d = layout.layers, layout.kv_heads, layout.head_dim
    heads = cfg.n_head if gpt2 else cfg.num_attention_heads

    # lengths for GroupQueryAttention: seqlens_k = valid tokens - 1 per row, total = the mask's width
    mask_sum = g.op("ReduceSum", ["attention_mask", g.init("axes_1", np.array([1], np.int64))], keepdims=0,
                    name="mask_sum")[0]
    seqlens = g.op("Cast", [g.op("Sub", [mask_sum, g.init("one_i64", np.array(1, np.int64))], name="mask_len_m1")[0]],
                   to=TensorProto.INT32, name="seqlens_k")[0]
    width = g.op("Gather", [g.op("Shape", ["attention_mask"], name="mask_shape")[0],
                            g.init("one_idx", np.array(1, np.int64))], axis=0, name="mask_width")[0]
    total = g.op("Cast", [width], to=TensorProto.INT32, name="total_seq_len")[0]

    # token embedding: tied -> one copy stored transposed as lm_head's weight, looked up by column
    emb_key = "transformer.wte.weight" if gpt2 else "model.embed_tokens.weight"
    head_w = sd.get("lm_head.weight")
    tied = head_w is None or head_w.data_ptr() == sd[emb_key].data_ptr() or bool((head_w == sd[emb_key]).all())
    table = _np(sd[emb_key])
    if tied:
        head_b = g.init("lm_head.weight.T", table.T)
        cols = g.op("Gather", [head_b, "input_ids"], axis=1, name="embed_tokens_T")[0]
        tok = g.op("Transpose", [cols], perm=[1, 2, 0], name="embed_tokens_perm")[0]
    else:
        tok = g.op("Gather", [g.init("embed_tokens.weight", table), "input_ids"], name="embed_tokens")[0]
        head_b = g.init("lm_head.weight.T", _np(head_w).T)

    if gpt2:
        eps = float(cfg.layer_norm_epsilon)
        pos = g.op("Gather", [g.init("wpe.weight", _np(sd["transformer.wpe.weight"])), "position_ids"],
                   name="embed_positions")[0]
        act = _GELUS[cfg.activation_function]
        branch, resid, bias = pos, tok, None          # the next SkipLayerNorm adds branch + resid (+ bias)
        for i in range(L):
            p = f"transformer.h.{i}."
            h, resid = _skip_ln(g, f"ln_1.{i}", branch, resid, bias, _np(sd[p + "ln_1.weight"]),
                                _np(sd[p + "ln_1.bias"]), eps)
            qkv = g.op("MatMul", [h, g.init(p + "attn.c_attn.weight", _np(sd[p + "attn.c_attn.weight"]))],
                       name=f"qkv_proj.{i}")[0]
            qkv = g.op("Add", [qkv, g.init(p + "attn.c_attn.bias", _np(sd[p + "attn.c_attn.bias"]))],
                       name=f"qkv_bias.{i}")[0]
            attn = _attention(g, i, qkv, seqlens, total, heads, kvh, d)
            o = g.op("MatMul", [attn, g.init(p + "attn.c_proj.weight", _np(sd[p + "attn.c_proj.weight"]))],
                     name=f"o_proj.{i}")[0]
            h, resid = _skip_ln(g, f"ln_2.{i}", o, resid, _np(sd[p + "attn.c_proj.bias"]),
                                _np(sd[p + "ln_2.weight"]), _np(sd[p + "ln_2.bias"]), eps)
            fc = g.op("MatMul", [h, g.init(p + "mlp.c_fc.weight", _np(sd[p + "mlp.c_fc.weight"]))],
                      name=f"fc.{i}")[0]
            fc = g.op(act, [fc, g.init(p + "mlp.c_fc.bias", _np(sd[p + "mlp.c_fc.bias"]))], name=f"act.{i}",
                      domain=MS)[0]
            branch = g.op("MatMul", [fc, g.init(p + "mlp.c_proj.weight", _np(sd[p + "mlp.c_proj.weight"]))],
                          name=f"fc_out.{i}")[0]
            bias = _np(sd[p + "mlp.c_proj.bias"])
        final, _ = _skip_ln(g, "ln_f", branch, resid, bias, _np(sd["transformer.ln_f.weight"]),
                            _np(sd["transformer.ln_f.bias"]), eps, want_sum=False)
    else:
        eps = float(cfg.rms_norm_eps)
        inv_freq = _np(hf_model.model.rotary_emb.inv_freq)
        positions = np.arange(layout.max_positions or cfg.max_position_embeddings, dtype=np.float32)
        freqs = np.outer(positions, inv_freq)
        cos, sin = g.init("cos_cache", np.cos(freqs)), g.init("sin_cache", np.sin(freqs))
        branch, resid = None, tok
        for i in range(L):
            p = f"model.layers.{i}."
            h, resid = _skip_rms(g, f"input_layernorm.{i}", branch, resid, _np(sd[p + "input_layernorm.weight"]), eps)
            a = p + "self_attn."
            w = np.concatenate([_np(sd[a + f"{x}_proj.weight"]).T for x in "qkv"], axis=1)
            qkv = g.op("MatMul", [h, g.init(a + "qkv_proj.weight", w)], name=f"qkv_proj.{i}")[0]
            if a + "q_proj.bias" in sd:
                b = np.concatenate([_np(sd[a + f"{x}_proj.bias"]) for x in "qkv"])
                qkv = g.op("Add", [qkv, g.init(a + "qkv_proj.bias", b)], name=f"qkv_bias.{i}")[0]
            attn = _attention(g, i, qkv, seqlens, total, heads, kvh, d, rotary=(cos, sin))
            o = g.op("MatMul", [attn, g.init(a + "o_proj.weight", _np(sd[a + "o_proj.weight"]).T)],
                     name=f"o_proj.{i}")[0]
            if a + "o_proj.bias" in sd:
                o = g.op("Add", [o, g.init(a + "o_proj.bias", _np(sd[a + "o_proj.bias"]))], name=f"o_bias.{i}")[0]
            h, resid = _skip_rms(g, f"post_attention_layernorm.{i}", o, resid,
                                 _np(sd[p + "post_attention_layernorm.weight"]), eps)
            m = p + "mlp."
            gu = np.concatenate([_np(sd[m + "gate_proj.weight"]).T, _np(sd[m + "up_proj.weight"]).T], axis=1)
            gate_up = g.op("MatMul", [h, g.init(m + "gate_up_proj.weight", gu)], name=f"gate_up_proj.{i}")[0]
            gate, up = g.op("Split", [gate_up, g.init(f"split_{i}", np.array([gu.shape[1] // 2] * 2, np.int64))],
                            outputs=2, axis=-1, name=f"gate_up_split.{i}")
            silu = g.op("Mul", [gate, g.op("Sigmoid", [gate], name=f"gate_sigmoid.{i}")[0]], name=f"silu.{i}")[0]
            prod = g.op("Mul", [silu, up], name=f"gate_mul.{i}")[0]
            branch = g.op("MatMul", [prod, g.init(m + "down_proj.weight", _np(sd[m + "down_proj.weight"]).T)],
                          name=f"down_proj.{i}")[0]
        final, _ = _skip_rms(g, "norm", branch, resid, _np(sd["model.norm.weight"]), eps, want_sum=False)

    # logits for the last `logits_to_keep` positions (0 = all)
    start = g.op("Neg", [LOGITS_TO_KEEP], name="logits_to_keep_Neg")[0]
    kept = g.op("Slice", [final, start, g.init("logits_to_keep_end", np.array([INT64_MAX], np.int64)),
                          g.init("logits_to_keep_axis", np.array([1], np.int64))], name="logits_to_keep_Slice")[0]
    g.op("MatMul", [kept, head_b], ["logits"], name="lm_head")

    i64, f32 = TensorProto.INT64, TensorProto.FLOAT
    inputs = [helper.make_tensor_value_info("input_ids", i64, ["batch", "seq"]),
              helper.make_tensor_value_info("attention_mask", i64, ["batch", "total_seq"]),
              helper.make_tensor_value_info("position_ids", i64, ["batch", "seq"])]
    outputs = [helper.make_tensor_value_info("logits", f32, ["batch", "logits_seq", layout.vocab_size])]
    for i in range(L):
        for past, present in ((PAST_KEY, PRESENT_KEY), (PAST_VALUE, PRESENT_VALUE)):
            inputs.append(helper.make_tensor_value_info(past.format(i), f32, ["batch", kvh, "past_seq", d]))
            outputs.append(helper.make_tensor_value_info(present.format(i), f32, ["batch", kvh, "total_seq", d]))
    inputs.append(helper.make_tensor_value_info(LOGITS_TO_KEEP, i64, [1]))
    graph = helper.make_graph(g.nodes, "edgeai_decoder_fused", inputs, outputs, g.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset), helper.make_opsetid(MS, 1)],
                              producer_name="edgeai", ir_version=10)   # onnxruntime 1.2x reads IR <= 10..13
    return {"graph": "fused", "nodes": len(g.nodes), "tied_embedding": bool(tied), "gemm_rewritten": 0,
            **save(model, path, external_data=external_data)}


def _attention(g: _Graph, i: int, qkv: str, seqlens: str, total: str, heads: int, kvh: int, d: int,
               rotary: tuple[str, str] | None = None) -> str:
    """GroupQueryAttention on packed QKV with layer i's cache; returns the attention output (B, S, heads*d)."""
    ins = [qkv, "", "", PAST_KEY.format(i), PAST_VALUE.format(i), seqlens, total]
    attrs = {"num_heads": heads, "kv_num_heads": kvh, "scale": float(d) ** -0.5}
    if rotary:
        ins += list(rotary)
        attrs.update(do_rotary=1, rotary_interleaved=0)
    outs = [f"attn.{i}", PRESENT_KEY.format(i), PRESENT_VALUE.format(i)]
    g.op("GroupQueryAttention", ins, outs, name=f"attn.{i}", domain=MS, **attrs)
    return outs[0]


def _skip_ln(g: _Graph, name: str, branch: str, resid: str, bias, gamma, beta, eps: float,
             want_sum: bool = True) -> tuple[str, str | None]:
    """LayerNorm(branch + resid + bias) and the sum (the next residual) in one SkipLayerNormalization."""
    ins = [branch, resid, g.init(name + ".weight", gamma), g.init(name + ".bias", beta)]
    if bias is not None:
        ins.append(g.init(name + ".skip_bias", bias))
    outs = [name + "/out", "", "", name + "/sum"] if want_sum else [name + "/out"]
    g.op("SkipLayerNormalization", ins, outs, name=name, domain=MS, epsilon=eps)
    return outs[0], (outs[3] if want_sum else None)


def _skip_rms(g: _Graph, name: str, branch: str | None, resid: str, gamma, eps: float,
              want_sum: bool = True) -> tuple[str, str | None]:
    """RMSNorm(branch + resid) and the sum; the first layer (no branch yet) normalizes the embeddings alone."""
    w = g.init(name + ".weight", gamma)
    if branch is None:
        out = g.op("SimplifiedLayerNormalization", [resid, w], [name + "/out"], name=name, axis=-1, epsilon=eps)[0]
        return out, resid
    outs = [name + "/out", "", "", name + "/sum"] if want_sum else [name + "/out"]
    g.op("SkipSimplifiedLayerNormalization", [branch, resid, w], outs, name=name, domain=MS, epsilon=eps)
    return outs[0], (outs[3] if want_sum else None)


__all__ = ["build", "unsupported_reason"]
