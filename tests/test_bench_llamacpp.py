"""benchmarks/llm.py's llama.cpp anchor: skipped with a reason where it cannot run; the GGUF staging; and (slow,
where llama-cpp-python and llama.cpp's converter are installed) an F32 GGUF that greedy-decodes like transformers
and scores the perplexity edgeai's FP32 export scores."""
from __future__ import annotations

import importlib.util
import json
import os
import sys
import types
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"


def _module(name: str):
    sys.path.insert(0, str(BENCH))
    try:
        spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod
    finally:
        sys.path.remove(str(BENCH))


@pytest.fixture(scope="module")
def LL():
    return _module("llm_llamacpp")


def test_without_llama_cpp_python_the_backends_are_skipped_with_the_install_command(LL, monkeypatch):
    monkeypatch.setitem(sys.modules, "llama_cpp", None)   # import llama_cpp raises ImportError
    assert "llama-cpp-python is not installed" in LL.unavailable("/any/convert_hf_to_gguf.py")
    assert 'pip install -e ".[bench-llamacpp]"' in LL.unavailable(None)


def test_without_the_converter_the_reason_says_where_it_is(LL, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "llama_cpp", types.ModuleType("llama_cpp"))
    monkeypatch.delenv(LL.CONVERT_ENV, raising=False)
    assert "vendor/llama.cpp" in LL.unavailable(None)
    assert "does not exist" in LL.unavailable(str(tmp_path / "convert_hf_to_gguf.py"))
    script = tmp_path / "convert_hf_to_gguf.py"
    script.write_text("")
    monkeypatch.setenv(LL.CONVERT_ENV, str(script))
    assert LL.unavailable(None) is None


def test_staging_gives_gpt2_its_n_ctx_and_a_model_without_tokenizer_a_placeholder_of_its_vocab(LL, tmp_path):
    from tokenizers import Tokenizer
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_positions": 64, "vocab_size": 300}))
    (hf / "model.safetensors").write_bytes(b"weights")
    staged = LL.stage(hf, tmp_path / "stage")
    assert json.loads((staged / "config.json").read_text())["n_ctx"] == 64
    assert json.loads((hf / "config.json").read_text()).get("n_ctx") is None   # the source is not touched
    assert (staged / "model.safetensors").is_symlink() and (staged / "model.safetensors").read_bytes() == b"weights"
    tok = Tokenizer.from_file(str(staged / "tokenizer.json"))
    assert tok.get_vocab_size() == 300 and tok.token_to_id(LL.EOT) == 299
    ids = tok.encode("any text, é ✓").ids
    assert ids and max(ids) < 256   # every byte has a symbol; fillers fill the rest of the vocabulary


def test_a_failed_conversion_step_leaves_no_file_and_says_why(LL, tmp_path):
    out = tmp_path / "model.q4_0.gguf"
    with pytest.raises(RuntimeError, match="model.q4_0.gguf: exit 3: boom"):
        LL._child([sys.executable, "-c", "import sys; print('boom', file=sys.stderr); sys.exit(3)", str(out)], out)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_llama_cpp_f32_greedy_matches_transformers_and_scores_edgeais_perplexity(LL, tmp_path):
    pytest.importorskip("llama_cpp")
    if LL.unavailable(None):
        pytest.skip(LL.unavailable(None))
    pytest.importorskip("transformers")
    import torch
    from transformers import GenerationConfig

    from edgeai.cli import main
    from edgeai.evaluate.text import score_sessions
    from edgeai.runtime.generate import DecoderSession, decoder_details
    from edgeai.zoo.lm import save_hf, tiny_gpt2
    hf = save_hf(tmp_path / "hf")
    ggufs, _ = LL.build(hf, tmp_path / "gguf", None, lambda msg: None)
    assert set(ggufs) == {"f32", "q8_0", "q4_0"} and all(p.is_file() for p in ggufs.values())
    model, ids = tiny_gpt2(), [int(i) for i in np.random.default_rng(0).integers(1, 512, 24)]
    with torch.no_grad():
        cfg = GenerationConfig(max_new_tokens=24, do_sample=False, eos_token_id=None, pad_token_id=0)
        ref = model.generate(torch.tensor([ids]), generation_config=cfg)[0, 24:].tolist()
    prefill, step = LL.loop({"gguf": str(ggufs["f32"]), "ids": ids, "new_tokens": 24}, threads=1)
    got = [int(np.argmax(prefill(ids)))]
    while len(got) < 24:
        got.append(int(np.argmax(step(got[-1]))))
    assert got == ref
    out = tmp_path / "out"
    assert main(["export", f"hf:{hf}", "--task", "text-generation", "-o", str(out), "-q"]) == 0
    sessions = {"edgeai": DecoderSession(out / "model.onnx", decoder_details(out), out, threads=1),
                "llama.cpp": LL.LlamaLogits(str(ggufs["f32"]), window=64)}
    text = np.random.default_rng(1).integers(1, 512, 200)
    edge, llama = score_sessions(sessions, text, window=64, stride=32)
    assert abs(llama.perplexity / edge.perplexity - 1) < 1e-4 and llama.top1_agreement > 0.99
    assert os.path.getsize(ggufs["q4_0"]) < 0.5 * os.path.getsize(ggufs["f32"])


def test_keep_rows_keeps_the_other_models_rows_and_notes_and_says_from_which_run(monkeypatch, tmp_path):
    llm = _module("llm")
    written = tmp_path / "llm.json"
    written.write_text(json.dumps({"created": "T1", "kept_rows_from": {"qwen-0.5b": "T0"}, "rows": [
        {"model": "trained", "backend": "edgeai-fp32"}, {"model": "gpt2-124m", "backend": "llamacpp-q4_0"},
        {"model": "qwen-0.5b", "backend": "edgeai-fp32"}],
        "llama_cpp_quantize_notes": ["trained: Q4_0: falling back", "gpt2-124m: Q4_0: other"]}))
    monkeypatch.setattr(llm.C, "result_path", lambda name, write: written)
    rows, notes, since = llm.kept(["trained"])
    assert [r["model"] for r in rows] == ["gpt2-124m", "qwen-0.5b"]
    assert notes == ["gpt2-124m: Q4_0: other"] and since == {"gpt2-124m": "T1", "qwen-0.5b": "T0"}
    text = llm.notes([{"model": "trained", "backend": "llamacpp-f32", "greedy_match_transformers": 1.0,
                       "greedy_match_fp32": 1.0, "new_tokens": 128}],
                     {"kept_rows_from": since, "llama_cpp": "llama-cpp-python 0.3.36", "llama_cpp_quantize_notes": notes})
    assert "- qwen-0.5b: rows kept from the run of T0" in text and "llama.cpp quantizer: gpt2-124m: Q4_0: other" in text
    assert "trained: llama.cpp F32 greedy tokens match transformers on 100.0% of 128" in text
