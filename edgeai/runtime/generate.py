"""Generation from a decoder export: the KV cache kept in onnxruntime values (IO binding), streamed tokens.

`edgeai.runtime.load(folder)` returns a `DecoderSession` when the artifact's manifest entry has
`details.decoder.kind == "causal-lm"`. Imports numpy, onnxruntime and (for text) tokenizers; never torch.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np

from edgeai.errors import ConfigError, InputSpecError, RuntimeLoadError
from edgeai.runtime.generate_sampling import Sampling
from edgeai.runtime.generate_text import TextStream, load_tokenizer
from edgeai.runtime.onnx import OnnxSession

KIND = "causal-lm"
LOGITS_TO_KEEP = "logits_to_keep"
KV_CACHE_MODES = ("auto", "shared", "concat")


@dataclass(frozen=True)
class Token:
    id: int | None     # None: no new token, only the text held back until the end (a possible stop-string start)
    text: str          # the text this token made final (may be "" while a character or stop string is pending)


@dataclass
class Generation:
    """One generate() call: the new token ids, their text, and how fast they came."""

    prompt_ids: list[int]
    tokens: list[int] = field(default_factory=list)
    text: str = ""
    ttft_ms: float = 0.0              # prompt in -> first new token chosen
    decode_s: float = 0.0             # the steps after the first token
    stop_reason: str = "length"       # length | eos | stop_string | stop_id

    @property
    def decode_tokens_per_s(self) -> float:
        steps = len(self.tokens) - 1
        return steps / self.decode_s if steps > 0 and self.decode_s > 0 else 0.0


def decoder_details(folder: Path, artifact: str | None = None) -> dict | None:
    """The manifest's decoder description of `artifact` in an export folder (None: not a decoder)."""
    from edgeai.manifest import MANIFEST_NAME, Manifest
    if not (Path(folder) / MANIFEST_NAME).is_file():
        return None
    entry = Manifest.read(folder).get(artifact)
    info = entry.details.get("decoder")
    if not isinstance(info, dict) or info.get("kind") != KIND:
        return None
    fused = any(s.get("type") == "export.onnx-decoder" and (s.get("config") or {}).get("graph") == "fused"
                for s in entry.steps)
    if fused and "past_present_share_buffer" not in info:   # exports from before the key was written
        info = {**info, "past_present_share_buffer": True}
    return info


class DecoderSession(OnnxSession):
    """An ONNX causal LM with a KV cache: `prefill`/`step` (logits), `stream`/`generate` (tokens, text).

    Batch 1. `kv_cache="shared"` keeps the cache in one preallocated buffer per layer that is both the past
    input and the present output (GroupQueryAttention's past_present_share_buffer, `generate_cache.py`): no
    per-step allocation, zeroing or copy of the cache (measured faster, docs/decoders.md). Only for graphs
    whose manifest says they can (`decoder.past_present_share_buffer`: edgeai's fused graph) and on CPU;
    the default "auto" picks it there and "concat" everywhere else (traced graphs, bare files, CUDA).

    In "concat" mode each step's presents are new tensors, and the cache never passes through a numpy copy:
    on CPU, onnxruntime (>= 1.16) hands run()'s outputs out as numpy views of its own tensors and takes
    contiguous numpy inputs without a copy, so the default (`io_binding=None`) feeds the presents back
    through run(); with another provider (CUDA) the cache stays on the device through IO binding.
    `io_binding=True` forces IO binding on CPU too (measured slower there: more Python calls per step).
    """

    def __init__(self, path: str | Path, decoder: dict, folder: str | Path | None = None, *, provider: str = "cpu",
                 threads: int | None = None, optimization: str = "all", io_binding: bool | None = None,
                 kv_cache: str = "auto"):
        super().__init__(path, provider=provider, threads=threads, optimization=optimization)
        self.decoder = decoder
        self.layers, self.kv_heads, self.head_dim = (int(decoder[k]) for k in ("layers", "kv_heads", "head_dim"))
        self.past_names = [n.format(i) for i in range(self.layers) for n in (decoder["past_key"], decoder["past_value"])]
        self.present_names = [n.format(i) for i in range(self.layers)
                              for n in (decoder["present_key"], decoder["present_value"])]
        self.eos_ids = set(decoder.get("eos_token_ids") or [])
        self.max_positions = decoder.get("max_positions")
        tok = decoder.get("tokenizer")
        self._tokenizer_path = Path(folder) / tok if tok and folder is not None else None
        self._tokenizer = None
        self.io_binding = provider != "cpu" if io_binding is None else io_binding
        self._cache_dtype = np.dtype(decoder.get("cache_dtype", "float32"))
        self._device = "cuda" if provider == "cuda" else "cpu"
        self.kv_cache = _cache_mode(kv_cache, bool(decoder.get("past_present_share_buffer")), provider)
        self._shared = None
        if self.kv_cache == "shared":
            from edgeai.runtime.generate_cache import SharedCache
            self._shared = SharedCache(self._sess, self.past_names, self.present_names, self.kv_heads,
                                       self.head_dim, self._cache_dtype, int(decoder["vocab_size"]),
                                       self.max_positions)
        self.reset()

    # ------------------------------------------------------------ the cache
    def reset(self) -> None:
        """Forget the KV cache (the next call is a prefill with an empty past; a shared buffer is kept)."""
        self.position = 0
        self._mask = np.ones((1, 256), np.int64)
        if self._shared is not None:
            return
        import onnxruntime as ort
        empty = np.zeros((1, self.kv_heads, 0, self.head_dim), self._cache_dtype)
        self._past = [ort.OrtValue.ortvalue_from_numpy(empty, self._device) if self.io_binding else empty
                      for _ in self.past_names]

    def reserve(self, positions: int) -> None:
        """Allocate a shared cache for `positions` tokens now (generate does, so no step ever grows it)."""
        if self._shared is not None:
            self._shared.reserve(positions, self.position)

    def _run(self, ids: np.ndarray, keep: int) -> np.ndarray:
        """Run the new tokens `ids` (1, n) on the cache; keep the presents; return logits (kept, vocab)."""
        n = ids.shape[1]
        total = self.position + n
        if total > self._mask.shape[1]:
            self._mask = np.ones((1, max(total, 2 * self._mask.shape[1])), np.int64)
        feeds = {"input_ids": np.ascontiguousarray(ids, np.int64), "attention_mask": self._mask[:, :total],
                 "position_ids": np.arange(self.position, total, dtype=np.int64)[None],
                 LOGITS_TO_KEEP: np.array([keep], np.int64)}
        try:
            if self._shared is not None:
                self._shared.reserve(total, self.position)
                logits = self._shared.run(feeds, keep, self._run_options)
            elif self.io_binding:
                binding = self._sess.io_binding()
                for name, arr in feeds.items():
                    binding.bind_cpu_input(name, arr)
                for name, value in zip(self.past_names, self._past):
                    binding.bind_ortvalue_input(name, value)
                binding.bind_output("logits", "cpu")  # the logits are read by the sampler
                for name in self.present_names:
                    binding.bind_output(name, self._device)  # onnxruntime allocates; the values stay there
                self._sess.run_with_iobinding(binding, self._run_options)
                outs = binding.get_outputs()
                logits, self._past = outs[0].numpy(), list(outs[1:])
            else:
                outs = self._sess.run(["logits", *self.present_names], {**feeds, **dict(zip(self.past_names, self._past))},
                                      self._run_options)
                logits, self._past = outs[0], outs[1:]
        except Exception as e:
            text = " ".join(str(e).split())[:300] or type(e).__name__
            raise RuntimeLoadError(f"onnxruntime failed to run {self.path.name!r}: {text}") from None
        self.position = total
        return logits[0]

    def prefill(self, ids: Sequence[int] | np.ndarray) -> np.ndarray:
        """Start over with prompt `ids`; return the last position's logits (vocab,)."""
        ids = np.asarray(ids, np.int64).reshape(1, -1)
        if ids.shape[1] == 0:
            raise InputSpecError("the prompt has no tokens")
        self.reset()
        return self._run(ids, keep=1)[-1]

    def step(self, token: int) -> np.ndarray:
        """Append one token to the cache; return its logits (vocab,)."""
        return self._run(np.array([[token]], np.int64), keep=1)[-1]

    def logits(self, ids: Sequence[int] | np.ndarray) -> np.ndarray:
        """Logits at every position of `ids` (n, vocab) from an empty cache (perplexity); resets the cache."""
        ids = np.asarray(ids, np.int64).reshape(1, -1)
        self.reset()
        out = self._run(ids, keep=0)
        self.reset()
        return out

    # ------------------------------------------------------------ text
    @property
    def tokenizer(self):
        if self._tokenizer is None:
            if self._tokenizer_path is None:
                raise InputSpecError("this export has no tokenizer: pass token ids instead of text")
            self._tokenizer = load_tokenizer(self._tokenizer_path)
        return self._tokenizer

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text).ids)

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    # ------------------------------------------------------------ generation
    def stream(self, prompt: str | Sequence[int], max_new_tokens: int = 64, sampling: Sampling | None = None,
               stop: Sequence[str] = (), stop_ids: Sequence[int] = (), *, result: Generation | None = None
               ) -> Iterator[Token]:
        """Yield each new token as it is chosen (with the text it makes final). Ends after
        `max_new_tokens`, at an end-of-sequence id, at one of `stop_ids` (not yielded) or when the
        text contains one of `stop` (the text ends before it). Pass `result` to get the totals."""
        ids = self.encode(prompt) if isinstance(prompt, str) else [int(i) for i in prompt]
        if max_new_tokens < 1:
            raise InputSpecError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        if self.max_positions and len(ids) + max_new_tokens > self.max_positions:
            raise InputSpecError(f"prompt ({len(ids)} tokens) + max_new_tokens ({max_new_tokens}) exceeds the "
                                 f"model's {self.max_positions} positions")
        res = result if result is not None else Generation(ids)
        res.prompt_ids = ids
        sampler = (sampling or Sampling()).sampler()
        self.reserve(len(ids) + max_new_tokens)
        text = TextStream(self._tokenizer_or_none(stop), stop)
        ends = self.eos_ids | set(int(i) for i in stop_ids)
        t0 = time.perf_counter()
        logits = self.prefill(ids)
        t1 = None
        for i in range(max_new_tokens):
            token = sampler.pick(logits)
            if i == 0:
                res.ttft_ms = (time.perf_counter() - t0) * 1e3
                t1 = time.perf_counter()
            if token in ends:
                res.stop_reason = "eos" if token in self.eos_ids else "stop_id"
                break
            res.tokens.append(token)
            piece = text.push(token)
            if text.stopped:
                res.stop_reason = "stop_string"
                yield Token(token, piece)
                break
            yield Token(token, piece)
            if i + 1 < max_new_tokens:
                logits = self.step(token)
        res.decode_s = time.perf_counter() - t1 if t1 is not None else 0.0
        rest = text.flush()
        if rest:
            yield Token(None, rest)
        res.text = text.text

    def generate(self, prompt: str | Sequence[int], max_new_tokens: int = 64, sampling: Sampling | None = None,
                 stop: Sequence[str] = (), stop_ids: Sequence[int] = (),
                 on_token: Callable[[Token], None] | None = None) -> Generation:
        """Generate and return the whole result; `on_token` sees each token as it comes (streaming)."""
        res = Generation([])
        for tok in self.stream(prompt, max_new_tokens, sampling, stop, stop_ids, result=res):
            if on_token is not None:
                on_token(tok)
        return res

    def _tokenizer_or_none(self, stop: Sequence[str]):
        if self._tokenizer_path is None:
            if stop:
                raise InputSpecError("stop strings need a tokenizer, and this export has none; use stop ids")
            return None
        return self.tokenizer

    def describe(self) -> dict:
        return {**super().describe(), "kind": KIND, "io_binding": self.io_binding, "kv_cache": self.kv_cache}


def _cache_mode(asked: str, can_share: bool, provider: str) -> str:
    """"shared" or "concat" for a session's KV cache (see DecoderSession)."""
    if asked not in KV_CACHE_MODES:
        raise ConfigError(f"unknown kv_cache mode {asked!r}; known: {', '.join(KV_CACHE_MODES)}")
    if asked == "shared" and not can_share:
        raise ConfigError("kv_cache='shared' needs a graph whose attention shares the past and present buffers "
                          "(edgeai's fused decoder graph); this one concatenates: use 'concat' or 'auto'")
    if asked == "shared" and provider != "cpu":
        raise ConfigError(f"kv_cache='shared' runs on the CPU provider only, not {provider!r}")
    if asked == "auto":
        return "shared" if can_share and provider == "cpu" else "concat"
    return asked
