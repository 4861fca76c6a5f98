"""llama.cpp as benchmarks/llm.py's anchor (benchmark only): GGUF conversion and quantization, a decode loop, logits.

Needs llama-cpp-python (`pip install -e ".[bench-llamacpp]"`: it builds llama.cpp from source, ~10+ CPU-minutes)
and llama.cpp's own converter, `convert_hf_to_gguf.py`, which the llama-cpp-python sdist vendors
(`pip download --no-deps --no-binary :all: llama-cpp-python==0.3.36`, unpack it, then point
EDGEAI_LLAMA_CPP_CONVERT or --llama-cpp-convert at `llama_cpp_python-0.3.36/vendor/llama.cpp/convert_hf_to_gguf.py`).
Without either, benchmarks/llm.py prints why and runs without the llama.cpp rows.

The Hugging Face folder is converted to an F32 GGUF by that script, run as it is with two adaptations in a staging
folder (nothing in the model changes): GPT-2's converter reads `n_ctx`, which transformers no longer writes
(it is `n_positions`), and a model saved without a tokenizer (the random-weight speed models) gets a placeholder
byte-level vocabulary of the model's size (the benchmark feeds token ids; text never passes through it). The
zoo LM's own byte-level BPE tokenizer is not in the converter's table of known pre-tokenizers, so it is
declared GPT-2's, which is the pre-tokenizer it uses. Q8_0 and Q4_0 come from the F32 file through llama.cpp's
quantizer (`llama_model_quantize`); what it did differently from the requested type (e.g. a fallback when a
row length is not a multiple of a block) is kept from its log.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

QUANTS = {"f32": 0, "q8_0": 7, "q4_0": 2}   # llama.cpp's LLAMA_FTYPE_ALL_F32, MOSTLY_Q8_0, MOSTLY_Q4_0
CONVERT_ENV = "EDGEAI_LLAMA_CPP_CONVERT"
EOT = "<|endoftext|>"

# run inside a child: llama.cpp's converter with the pre-tokenizer adaptation (see the module docstring)
_CONVERT = r"""
import runpy, sys
script, src, out = sys.argv[1:4]
sys.path.insert(0, str(__import__("pathlib").Path(script).parent))
import conversion.base as base
known = base.TextModel.get_vocab_base_pre
def vocab_pre(self, tokenizer):
    try:
        return known(self, tokenizer)
    except NotImplementedError:   # a byte-level BPE the table does not list: GPT-2's pre-tokenizer
        return "gpt-2"
base.TextModel.get_vocab_base_pre = vocab_pre
sys.argv = [script, src, "--outfile", out, "--outtype", "f32"]
runpy.run_path(script, run_name="__main__")
"""
_QUANTIZE = r"""
import ctypes, sys
import llama_cpp
src, ftype, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
params = llama_cpp.llama_model_quantize_default_params()
params.ftype, params.nthread = ftype, 1
sys.exit(llama_cpp.llama_model_quantize(src.encode(), out.encode(), ctypes.byref(params)))
"""


def unavailable(convert: str | None) -> str | None:
    """Why the llama.cpp backends cannot run here (None: they can)."""
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        return "llama-cpp-python is not installed (benchmark only: pip install -e \".[bench-llamacpp]\")"
    script = convert_script(convert)
    if script is None:
        return (f"llama.cpp's convert_hf_to_gguf.py was not given (--llama-cpp-convert or {CONVERT_ENV}; it is "
                "in the llama-cpp-python sdist under vendor/llama.cpp/)")
    if not script.is_file():
        return f"{script} does not exist"
    return None


def convert_script(convert: str | None) -> Path | None:
    path = convert or os.environ.get(CONVERT_ENV)
    return Path(path) if path else None


def version() -> str:
    import llama_cpp
    return llama_cpp.__version__


def placeholder_tokenizer(vocab_size: int) -> str:
    """A byte-level BPE tokenizer.json with `vocab_size` entries: 256 byte symbols, one merge (two spaces:
    llama.cpp refuses a BPE vocabulary without merges), fillers, and GPT-2's end-of-text token last
    (transformers' GPT-2 tokenizer adds it when it is missing)."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    symbols = list(pre_tokenizers.ByteLevel.alphabet())
    vocab = {s: i for i, s in enumerate(sorted(symbols))}
    vocab["\u0120\u0120"] = len(vocab)   # byte-level "  "
    vocab.update({f"<t{i}>": i for i in range(len(vocab), vocab_size - 1)})
    vocab[EOT] = vocab_size - 1
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[("\u0120", "\u0120")]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(EOT, special=True)])
    return tok.to_str()


def stage(hf: Path, folder: Path) -> Path:
    """A copy of the Hugging Face folder the converter reads as is (config with n_ctx; a tokenizer)."""
    folder.mkdir(parents=True, exist_ok=True)
    config = json.loads((hf / "config.json").read_text())
    if config.get("model_type") == "gpt2":
        config.setdefault("n_ctx", config["n_positions"])
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    for f in hf.iterdir():
        if f.name != "config.json" and not (folder / f.name).exists():
            (folder / f.name).symlink_to(f.resolve())
    if not (folder / "tokenizer.json").exists():
        (folder / "tokenizer.json").write_text(placeholder_tokenizer(int(config["vocab_size"])))
    return folder


def build(hf: Path, folder: Path, convert: str | None, log) -> tuple[dict[str, Path], list[str]]:
    """({quant: GGUF path}, notes): the F32 conversion and its Q8_0/Q4_0 quantizations, cached in `folder`."""
    script = convert_script(convert)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {q: folder / f"model.{q}.gguf" for q in QUANTS}
    notes_file = folder / "quantize-notes.json"
    notes = json.loads(notes_file.read_text()) if notes_file.is_file() else {}
    if not paths["f32"].is_file():
        log(f"converting {hf} to GGUF (llama.cpp's convert_hf_to_gguf.py)")
        src = stage(hf, folder / "staging")
        _child([sys.executable, "-c", _CONVERT, str(script), str(src), str(paths["f32"])], paths["f32"])
        shutil.rmtree(src)
    for q, ftype in QUANTS.items():
        if q == "f32" or paths[q].is_file():
            continue
        log(f"quantizing the GGUF to {q.upper()} (llama_model_quantize)")
        err = _child([sys.executable, "-c", _QUANTIZE, str(paths["f32"]), str(ftype), str(paths[q])], paths[q])
        notes[q] = sorted({" ".join(line.split()) for line in err.splitlines()
                           if "falling back" in line or "fallback" in line})
        notes_file.write_text(json.dumps(notes, indent=2))
    return paths, [f"{q.upper()}: {line}" for q, lines in notes.items() for line in lines]


def _child(cmd: list[str], out: Path) -> str:
    """Run a conversion step whose last argument is `out`, writing a temp name renamed on success; its stderr;
    RuntimeError with its tail."""
    tmp = out.with_name(out.name + ".tmp")
    proc = subprocess.run([*cmd[:-1], str(tmp)], capture_output=True, text=True)
    if proc.returncode != 0 or not tmp.is_file():
        tmp.unlink(missing_ok=True)
        tail = " | ".join((proc.stderr or proc.stdout).strip().splitlines()[-3:])
        raise RuntimeError(f"{out.name}: exit {proc.returncode}: {tail}")
    tmp.rename(out)
    return proc.stderr


def _llama(path: str, n_ctx: int, threads: int, logits_all: bool):
    from llama_cpp import Llama
    return Llama(model_path=path, n_ctx=n_ctx, n_batch=n_ctx, n_ubatch=n_ctx, n_threads=threads,
                 n_threads_batch=threads, logits_all=logits_all, verbose=False)


def loop(job: dict, threads: int):
    """(prefill(ids) -> last logits, step(token) -> logits) on llama.cpp, greedy chosen by the caller as for
    every other backend; the logits are llama.cpp's own buffer (no copy)."""
    import numpy as np
    llm = _llama(job["gguf"], len(job["ids"]) + job["new_tokens"] + 8, threads, logits_all=False)
    vocab = llm.n_vocab()

    def last():
        return np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(vocab,))

    def prefill(ids):
        llm.reset()
        llm.eval([int(i) for i in ids])
        return last()

    def step(token):
        llm.eval([int(token)])
        return last()

    return prefill, step


class LlamaLogits:
    """`logits(ids)` (n, vocab) from an empty cache, what edgeai.evaluate.text.score_sessions reads."""

    def __init__(self, path: str, window: int, threads: int = 1):
        self._llm = _llama(path, window, threads, logits_all=True)
        self.max_positions = None

    def logits(self, ids):
        import numpy as np
        ids = [int(i) for i in np.asarray(ids).reshape(-1)]
        self._llm.reset()
        self._llm.eval(ids)
        return np.array(self._llm.scores[:len(ids)], np.float32)


__all__ = ["QUANTS", "LlamaLogits", "build", "loop", "placeholder_tokenizer", "stage", "unavailable"]
