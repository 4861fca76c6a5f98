"""Causal LM export (--task text-generation): one ONNX graph with a KV cache, verified; torch-free generation."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from decoder_kit import zoo_export
from edgeai import runtime
from edgeai.cli import main
from edgeai.manifest import Manifest
from edgeai.runtime.generate import DecoderSession
from edgeai.runtime.generate_sampling import Sampling

pytest.importorskip("transformers")

PROMPTS = ["the farmer carried", "in the morning , the old", "the rain fell softly , so the",
           "when the baker baked the", "the sailor tied the rope and"]


@pytest.fixture(scope="module")
def lm_export(tmp_path_factory) -> Path:
    """The zoo's trained GPT-2-architecture LM, saved as a Hugging Face folder and exported from it."""
    from edgeai.zoo.lm import save_hf
    root = tmp_path_factory.mktemp("lm")
    hf = save_hf(root / "hf")
    out = root / "out"
    assert main(["export", f"hf:{hf}", "--task", "text-generation-with-past", "-o", str(out), "-q"]) == 0
    return out


@pytest.fixture(scope="module")
def lm_traced_export(tmp_path_factory) -> Path:
    """The same LM through torch.export (--decoder-graph traced): the graph normalization's own checks."""
    from edgeai.zoo.lm import save_hf
    root = tmp_path_factory.mktemp("lm_traced")
    hf = save_hf(root / "hf")
    out = root / "out"
    assert main(["export", f"hf:{hf}", "--task", "text-generation", "--decoder-graph", "traced", "-o", str(out),
                 "-q"]) == 0
    return out


@pytest.fixture(scope="module")
def llama_export(tmp_path_factory) -> Path:
    return zoo_export(tmp_path_factory.mktemp("llama"), "tiny_llama")


@pytest.fixture(scope="module")
def lm():
    from edgeai.zoo.lm import tiny_gpt2
    return tiny_gpt2()


def hf_greedy(model, ids: list[int], new: int) -> list[int]:
    import torch
    from transformers import GenerationConfig
    cfg = GenerationConfig(max_new_tokens=new, do_sample=False, eos_token_id=None, pad_token_id=0)
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.int64),
                             generation_config=cfg)
    return out[0, len(ids):].tolist()


def raw_greedy(session: DecoderSession, ids: list[int], new: int) -> list[int]:
    from edgeai.exporters._decoder_verify import runtime_greedy
    return runtime_greedy(session, ids, new)


# ---- the trained LM (GPT-2 architecture) ------------------------------------------------------------

def test_trained_lm_fp32_greedy_tokens_are_identical_to_transformers_on_5_prompts(lm_export, lm):
    session = runtime.load(lm_export, threads=1)
    assert isinstance(session, DecoderSession)
    for prompt in PROMPTS:
        ids = session.encode(prompt)
        assert raw_greedy(session, ids, 32) == hf_greedy(lm, ids, 32), prompt


def test_trained_lm_continues_the_grammar_far_better_than_uniform(lm_export):
    """Perplexity on held-out text from the export's full-sequence logits (logits_to_keep = 0)."""
    from edgeai.zoo.lm import text
    session = runtime.load(lm_export)
    ids = np.array(session.encode(text("test")[:4000]))[:256]
    logits = session.logits(ids).astype(np.float64)
    logp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) - \
        logits.max(-1, keepdims=True)
    nll = -logp[np.arange(len(ids) - 1), ids[1:]].mean()
    assert np.exp(nll) < 12 < 512  # vocab 512: uniform guessing is perplexity 512


def test_manifest_records_parity_at_two_prompt_lengths_decode_steps_and_greedy(lm_export):
    entry = Manifest.read(lm_export).get("fp32")
    dims = [c["dims"] for c in entry.parity["checks"]]
    assert [d["prompt"] for d in dims if "prompt" in d] == [5, 12]
    assert [d["decode_step"] for d in dims if "decode_step" in d] == [1, 2, 3, 4]
    assert entry.parity["passed"] and entry.parity["max_abs"] < 1e-3
    assert entry.parity["greedy"] == {"prompts": 2, "new_tokens": 8, "identical": True}
    assert entry.details["decoder"]["kind"] == "causal-lm" and Manifest.read(lm_export).source["kind"] == "causal-lm"
    assert "tokenizer.json" in entry.extra_files and entry.digests["tokenizer.json"]


def test_the_default_graph_is_fused_from_the_weights_with_a_few_nodes_a_layer(lm_export, lm):
    """GroupQueryAttention holds the cache, SkipLayerNormalization the residuals: ~9 nodes a layer where
    the traced graph has ~65 (most of a small decoder's step time is per-node overhead)."""
    entry = Manifest.read(lm_export).get()
    ops: dict[str, int] = {}
    for node in onnx.load(str(lm_export / entry.file)).graph.node:
        ops[node.op_type] = ops.get(node.op_type, 0) + 1
    layers = lm.config.n_layer
    assert entry.details["export_path"] == "fused" and entry.details["normalize"]["graph"] == "fused"
    assert ops["GroupQueryAttention"] == layers and ops["SkipLayerNormalization"] == 2 * layers + 1
    assert ops["MatMul"] == 4 * layers + 1 and "Gemm" not in ops  # qkv, out, fc, proj; lm_head
    assert sum(ops.values()) <= 10 * layers + 12


@pytest.mark.slow   # a second (torch.export) export of the LM: ~40 s
def test_traced_graph_every_gemm_became_a_matmul(lm_traced_export, lm):
    """GPT-2's Conv1D layers trace to Gemm, which ORT's MatMulNBits quantizer skips: none may be left."""
    conv1d = sum(type(m).__name__ == "Conv1D" for m in lm.modules())
    entry = Manifest.read(lm_traced_export).get()
    ops = {}
    for node in onnx.load(str(lm_traced_export / entry.file)).graph.node:
        ops[node.op_type] = ops.get(node.op_type, 0) + 1
    assert entry.details["export_path"] == "traced"
    assert entry.details["normalize"]["gemm_rewritten"] == conv1d == 16  # the traced graph had 16 Gemm
    assert "Gemm" not in ops
    # each Conv1D, the lm_head, and attention's two products per layer
    assert ops["MatMul"] == conv1d + 1 + 2 * lm.config.n_layer


@pytest.mark.slow   # a second (torch.export) export of the LM: ~40 s
def test_traced_graph_tied_embedding_is_stored_once(lm_traced_export, lm):
    model = onnx.load(str(lm_traced_export / "model.onnx"))
    vocab, dim = lm.config.vocab_size, lm.config.n_embd
    shapes = {i.name: list(i.dims) for i in model.graph.initializer}
    assert shapes["lm_head.weight.T"] == [dim, vocab]
    assert not [n for n in shapes if "wte" in n or n.endswith("lm_head.weight")]
    params = sum(p.numel() for p in lm.parameters())  # a tied weight counts once
    mask = lm.config.n_positions ** 2  # GPT-2's bool causal-mask buffer, one per layer, equal: stored once
    assert Manifest.read(lm_traced_export).get().details["normalize"]["shared_initializers"] >= lm.config.n_layer - 1
    assert sum(n.endswith(".attn.bias") for n in shapes) == 1  # not c_attn.bias
    size = (lm_traced_export / "model.onnx").stat().st_size
    assert 4 * params + mask < size < 4 * params + mask + 64_000 < 4 * (params + vocab * dim)  # twice would not fit


def test_fused_graph_tied_embedding_is_stored_once(lm_export, lm):
    model = onnx.load(str(lm_export / "model.onnx"))
    vocab, dim = lm.config.vocab_size, lm.config.n_embd
    shapes = {i.name: list(i.dims) for i in model.graph.initializer}
    assert shapes["lm_head.weight.T"] == [dim, vocab]
    params = sum(p.numel() for p in lm.parameters())  # a tied weight counts once
    floats = sum(int(np.prod(i.dims)) for i in model.graph.initializer if i.data_type == onnx.TensorProto.FLOAT)
    assert floats == params   # every weight exactly once
    assert 4 * params < (lm_export / "model.onnx").stat().st_size < 4 * params + 64_000


@pytest.mark.slow   # a second (torch.export) export of the LM: ~40 s
def test_traced_and_fused_graphs_give_the_same_greedy_tokens(lm_export, lm_traced_export):
    fused, traced = runtime.load(lm_export, threads=1), runtime.load(lm_traced_export, threads=1)
    for prompt in PROMPTS[:2]:
        ids = fused.encode(prompt)
        assert raw_greedy(fused, ids, 24) == raw_greedy(traced, ids, 24)


def test_a_fused_graph_that_does_not_verify_falls_back_to_the_traced_one(tmp_path, monkeypatch, caplog):
    """A wrong fused graph (a weight perturbed, as a builder bug would) never ships: auto exports the traced
    graph and says why in the manifest; --decoder-graph fused fails instead."""
    from edgeai.errors import VerificationError
    from edgeai.exporters import _decoder_fused
    real = _decoder_fused.build

    def wrong(hf_model, layout, path, **kw):
        import torch
        with torch.no_grad():
            saved = hf_model.model.norm.weight.clone()
            hf_model.model.norm.weight.mul_(1.5)
            try:
                return real(hf_model, layout, path, **kw)
            finally:
                hf_model.model.norm.weight.copy_(saved)
    monkeypatch.setattr(_decoder_fused, "build", wrong)
    import edgeai
    out = tmp_path / "auto"
    edgeai.export("edgeai.zoo.lm:tiny_llama", out, task="text-generation")
    entry = Manifest.read(out).get()
    assert entry.details["export_path"] == "traced" and entry.parity["passed"]
    assert "did not verify" in entry.details["normalize"]["fused_skipped"]
    with pytest.raises(VerificationError):
        edgeai.export("edgeai.zoo.lm:tiny_llama", tmp_path / "strict", task="text-generation",
                      export={"decoder_graph": "fused"})
    assert not (tmp_path / "strict").exists()


def test_first_call_takes_an_empty_past_and_logits_to_keep_selects_positions(lm_export, lm):
    import onnxruntime as ort
    import torch
    sess = ort.InferenceSession(str(lm_export / "model.onnx"))
    ids = np.array([[5, 17, 42, 99, 3, 250]], np.int64)
    feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids), "position_ids": np.arange(6)[None]}
    feeds |= {i.name: np.zeros((1, 4, 0, 32), np.float32) for i in sess.get_inputs() if i.name.startswith("past")}
    with torch.no_grad():
        ref = lm(torch.from_numpy(ids)).logits.numpy()
    full = sess.run(["logits"], {**feeds, "logits_to_keep": np.array([0])})[0]
    last = sess.run(["logits", "present.3.value"], {**feeds, "logits_to_keep": np.array([1])})
    np.testing.assert_allclose(full, ref, atol=1e-4, rtol=1e-4)
    assert last[0].shape == (1, 1, 512) and last[1].shape == (1, 4, 6, 32)
    np.testing.assert_allclose(last[0][0, 0], ref[0, -1], atol=1e-4, rtol=1e-4)


def test_generate_cli_streams_text_and_writes_the_json_fields(lm_export, tmp_path, capsys):
    out = tmp_path / "gen.json"
    assert main(["generate", str(lm_export), "--prompt", PROMPTS[0], "--max-new-tokens", "20", "--greedy",
                 "--threads", "1", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert {"tokens", "text", "ttft_ms", "decode_tokens_per_s", "peak_rss_bytes"} <= set(data)
    session = runtime.load(lm_export)
    assert data["tokens"] == raw_greedy(session, session.encode(PROMPTS[0]), 20)
    assert data["text"] == session.decode(data["tokens"]) and data["text"] in capsys.readouterr().out
    assert data["ttft_ms"] > 0 and data["decode_tokens_per_s"] > 0 and data["peak_rss_bytes"] > 1e6


def test_a_stop_string_ends_generation_before_it(lm_export):
    session = runtime.load(lm_export)
    full = session.generate(PROMPTS[1], 40)
    stop = full.text.split()[6]   # a word in the middle of the continuation
    at = full.text.index(stop)
    pieces = []
    res = session.generate(PROMPTS[1], 40, stop=[stop], on_token=lambda t: pieces.append(t.text))
    assert res.stop_reason == "stop_string" and res.text == full.text[:at] == "".join(pieces)
    assert len(res.tokens) < len(full.tokens)


def test_io_binding_loop_and_numpy_loop_give_the_same_tokens(lm_export):
    bound, plain = (runtime.load(lm_export, io_binding=b, kv_cache="concat") for b in (True, False))
    ids = bound.encode(PROMPTS[2])
    assert raw_greedy(bound, ids, 24) == raw_greedy(plain, ids, 24)


def test_on_cpu_the_cache_stays_in_onnxruntimes_tensors_without_io_binding(lm_export):
    """The concatenating CPU loop relies on run() handing out views of onnxruntime's own tensors (no copy)."""
    session = runtime.load(lm_export, kv_cache="concat")
    assert not session.io_binding
    session.prefill(session.encode(PROMPTS[0]))
    cache = session._past[0]
    assert not cache.flags.owndata and type(cache.base).__name__ == "PyCapsule"


def test_sampling_is_reproducible_by_seed_and_top_k_1_is_greedy(lm_export):
    session = runtime.load(lm_export)
    greedy = session.generate(PROMPTS[3], 16).tokens
    a = session.generate(PROMPTS[3], 16, Sampling(greedy=False, temperature=1.5, seed=3)).tokens
    b = session.generate(PROMPTS[3], 16, Sampling(greedy=False, temperature=1.5, seed=3)).tokens
    c = session.generate(PROMPTS[3], 16, Sampling(greedy=False, temperature=1.5, seed=4)).tokens
    assert a == b and a != c
    assert session.generate(PROMPTS[3], 16, Sampling(greedy=False, top_k=1, seed=9)).tokens == greedy


# ---- Llama-style: RoPE, RMSNorm, GQA, SwiGLU ----------------------------------------------------------

def test_llama_style_export_matches_transformers_with_grouped_kv_heads(llama_export):
    from edgeai.zoo.lm import tiny_llama
    entry = Manifest.read(llama_export).get()
    dec = entry.details["decoder"]
    assert (dec["layers"], dec["kv_heads"], dec["head_dim"], dec["tied_embedding"]) == (2, 2, 16, False)
    past = next(i for i in entry.inputs if i["name"] == "past_key_values.0.key")
    assert past["shape"] == ["batch", 2, "past_seq", 16]
    assert entry.parity["passed"] and entry.parity["greedy"]["identical"]
    assert entry.details["export_path"] == "fused"   # GroupQueryAttention does the rotary embedding
    session, model = runtime.load(llama_export), tiny_llama()
    for ids in ([1, 40, 300, 7], list(range(3, 40, 3))):
        assert raw_greedy(session, ids, 12) == hf_greedy(model, ids, 12)


# ---- user mistakes ------------------------------------------------------------------------------------

def test_decoder_export_refuses_options_it_does_not_take(tmp_path, capsys):
    code = main(["export", "edgeai.zoo.lm:tiny_llama", "--task", "text-generation", "--input", "x:batch,4",
                 "-o", str(tmp_path / "o")])
    assert code == 2 and "does not take inputs" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_hf_decoder_with_remote_code_is_refused(tmp_path, capsys):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text(json.dumps({"model_type": "gpt2", "auto_map": {"AutoModel": "x.Y"}}))
    assert main(["export", f"hf:{tmp_path / 'm'}", "--task", "text-generation", "-o", str(tmp_path / "o")]) == 2
    assert "auto_map" in capsys.readouterr().err


def test_generate_on_a_folder_without_a_decoder_is_one_line(tmp_path, capsys):
    from test_bench import make_mlp, write_export_folder
    folder = write_export_folder(tmp_path / "e", (make_mlp(tmp_path / "a.onnx", 8),))
    assert main(["generate", str(folder), "--prompt", "x"]) == 2
    assert "holds no causal LM" in capsys.readouterr().err
    assert main(["generate", str(folder), "--prompt", "x", "--kv-cache", "shared"]) == 2
    assert "holds no causal LM" in capsys.readouterr().err


# ---- the torch-free device install --------------------------------------------------------------------

def test_generate_works_in_the_torch_free_device_install_with_the_llm_extra(lm_export, tmp_path_factory, tmp_path):
    import subprocess
    import sys

    from devicekit import CONSTRAINTS, device_venv
    python = device_venv(tmp_path_factory.getbasetemp())  # the plain install, shared with test_devices.py
    proc = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "-c", str(CONSTRAINTS),
                           "tokenizers"], capture_output=True, text=True)  # what the `llm` extra adds
    assert proc.returncode == 0, proc.stderr[-2000:]
    env = {"PATH": f"{python.parent}:/usr/bin:/bin", "OMP_NUM_THREADS": "1", "HOME": str(tmp_path)}
    probe = subprocess.run([str(python), "-c", "import importlib.util as u; print(u.find_spec('torch') is None)"],
                           capture_output=True, text=True, env=env, cwd=tmp_path)
    assert probe.stdout.strip() == "True"
    proc = subprocess.run([str(python.parent / "edgeai"), "generate", str(lm_export), "--prompt", PROMPTS[4],
                           "--max-new-tokens", "16", "--json", str(tmp_path / "g.json")],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr
    session = runtime.load(lm_export)
    data = json.loads((tmp_path / "g.json").read_text())
    assert data["tokens"] == raw_greedy(session, session.encode(PROMPTS[4]), 16)
    assert data["text"] and data["text"] in proc.stdout


# ---- a factory's own module (the forward contract) ----------------------------------------------------

CONTRACT_LM = '''
import torch


class TinyLM(torch.nn.Module):
    """One attention layer over a KV cache: forward(input_ids, attention_mask, position_ids, past)."""

    cache_layout = {"layers": 1, "kv_heads": 2, "head_dim": 8, "vocab_size": 64, "max_positions": 32}

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.emb, self.pos = torch.nn.Embedding(64, 16), torch.nn.Embedding(32, 16)
        self.qkv, self.head = torch.nn.Linear(16, 48), torch.nn.Linear(16, 64)

    def forward(self, input_ids, attention_mask, position_ids, past):
        x = self.emb(input_ids) + self.pos(position_ids)
        b, s, _ = x.shape
        q, k, v = (t.reshape(b, s, 2, 8).transpose(1, 2) for t in self.qkv(x).split(16, dim=-1))
        k, v = torch.cat([past[0][0], k], 2), torch.cat([past[0][1], v], 2)
        total = k.shape[2]
        causal = torch.arange(total)[None, :] <= (torch.arange(s)[:, None] + total - s)
        allowed = causal[None, None] & attention_mask[:, None, None, :].bool()
        att = (q @ k.transpose(-1, -2) / 8 ** 0.5).masked_fill(~allowed, float("-inf")).softmax(-1)
        return self.head(x + (att @ v).transpose(1, 2).reshape(b, s, 16)), [(k, v)]


def make():
    return TinyLM().eval()
'''


def test_a_factory_module_with_the_forward_contract_exports_and_generates(tmp_path):
    (tmp_path / "tiny_lm.py").write_text(CONTRACT_LM)
    out = tmp_path / "out"
    assert main(["export", f"{tmp_path / 'tiny_lm.py'}:make", "--task", "text-generation", "-o", str(out), "-q"]) == 0
    entry = Manifest.read(out).get()
    assert entry.parity["passed"] and entry.parity["greedy"]["identical"]
    assert entry.details["decoder"]["tokenizer"] is None and entry.details["decoder"]["kv_heads"] == 2
    session = runtime.load(out)
    res = session.generate([3, 9, 27], 6)
    assert len(res.tokens) == 6 and res.text == ""  # no tokenizer: ids only


QWEN2_TIED = '''
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM


def make():
    """Qwen2-style: q/k/v biases, a tied embedding, GQA 4/2 heads, rope_theta 1e6."""
    torch.manual_seed(1)
    cfg = Qwen2Config(vocab_size=300, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                      rope_theta=1e6, tie_word_embeddings=True, attn_implementation="eager")
    model = Qwen2ForCausalLM(cfg).eval()
    with torch.no_grad():   # biases large enough to matter (random init leaves them at zero)
        for layer in model.model.layers:
            for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                proj.bias.normal_(0, 0.5)
    return model
'''


def test_qwen2_style_biases_and_a_tied_embedding_take_the_fused_graph(tmp_path):
    (tmp_path / "qwen.py").write_text(QWEN2_TIED)
    out = tmp_path / "out"
    assert main(["export", f"{tmp_path / 'qwen.py'}:make", "--task", "text-generation", "--decoder-graph", "fused",
                 "-o", str(out), "-q"]) == 0
    entry = Manifest.read(out).get()
    assert entry.details["export_path"] == "fused" and entry.details["decoder"]["tied_embedding"]
    assert entry.parity["passed"] and entry.parity["greedy"]["identical"]
    names = {i.name for i in onnx.load(str(out / "model.onnx")).graph.initializer}
    assert "model.layers.0.self_attn.qkv_proj.bias" in names and "embed_tokens.weight" not in names


def test_decoder_graph_fused_refuses_a_model_it_cannot_write(tmp_path, capsys):
    """A factory with the flat forward contract (not a transformers model) has no fused graph."""
    (tmp_path / "tiny_lm.py").write_text(CONTRACT_LM)
    code = main(["export", f"{tmp_path / 'tiny_lm.py'}:make", "--task", "text-generation", "--decoder-graph", "fused",
                 "-o", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and "--decoder-graph fused: not for this model" in err[-1]
    assert not (tmp_path / "o").exists()


def test_external_data_keeps_the_weights_beside_the_graph_and_travels_with_it(tmp_path):
    """`export: {external_data: true}` (automatic past ~2 GB): model.onnx.data holds the weights, the manifest
    lists it with its digest, and the folder generates like one with the weights inside."""
    import edgeai
    out = tmp_path / "out"
    edgeai.export("edgeai.zoo.lm:tiny_llama", out, task="text-generation", export={"external_data": True})
    entry = Manifest.read(out).get()
    assert entry.details["normalize"]["external_data"] and "model.onnx.data" in entry.extra_files
    assert entry.digests["model.onnx.data"]
    assert (out / "model.onnx").stat().st_size < 100_000 < (out / "model.onnx.data").stat().st_size
    inline = tmp_path / "inline"
    edgeai.export("edgeai.zoo.lm:tiny_llama", inline, task="text-generation")
    assert runtime.load(out).generate([1, 40, 300], 8).tokens == runtime.load(inline).generate([1, 40, 300], 8).tokens
