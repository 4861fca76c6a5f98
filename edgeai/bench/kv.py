"""A decoder's KV-cache I/O read from its input specs, and a prefill/decode loop on onnxruntime (numpy only).

The decoder contract (edgeai export --task text-generation, Optimum's layout): inputs `input_ids`
(batch, seq), `attention_mask` (batch, past + seq), `position_ids` (batch, seq) and
`past_key_values.N.key/value` (batch, kv_heads, past, head_dim); outputs `logits` (batch, seq, vocab)
and `present.N.key/value` (batch, kv_heads, past + seq, head_dim). The first call takes an empty past.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from edgeai.errors import InputSpecError
from edgeai.specs import TensorSpec

_PAST = re.compile(r"^past_key_values\.(\d+)\.(key|value)$")


def is_decoder(inputs: Sequence[TensorSpec]) -> bool:
    names = {s.name for s in inputs}
    return "input_ids" in names and any(_PAST.match(n) for n in names)


@dataclass(frozen=True)
class DecoderIO:
    """Which inputs carry the cache and how an empty one is shaped."""

    past: tuple[str, ...]           # past_key_values.N.key/value, in layer order
    present: tuple[str, ...]        # the present.N.* output each past input is fed from
    kv_heads: int
    head_dim: int
    dtype: str                      # the cache's dtype ("float32", "float16")
    has_mask: bool
    has_positions: bool

    @classmethod
    def from_specs(cls, inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec]) -> "DecoderIO":
        if not is_decoder(inputs):
            raise InputSpecError("not a decoder with a KV cache: it needs inputs input_ids and "
                                 "past_key_values.N.key/value (export with --task text-generation)")
        past = sorted((s for s in inputs if _PAST.match(s.name)),
                      key=lambda s: (int(_PAST.match(s.name)[1]), _PAST.match(s.name)[2]))
        outs = {s.name for s in outputs}
        present = tuple(s.name.replace("past_key_values.", "present.") for s in past)
        missing = [p for p in present if p not in outs]
        if missing or "logits" not in outs:
            raise InputSpecError(f"decoder outputs lack {', '.join(missing + ([] if 'logits' in outs else ['logits']))}")
        heads, dim = past[0].shape[1], past[0].shape[3]
        if not isinstance(heads, int) or not isinstance(dim, int):
            raise InputSpecError(f"{past[0].name} has shape {past[0].shape}: kv heads and head dim must be fixed")
        names = {s.name for s in inputs}
        return cls(tuple(s.name for s in past), present, heads, dim, past[0].dtype,
                   "attention_mask" in names, "position_ids" in names)

    def empty_past(self, batch: int = 1) -> dict[str, np.ndarray]:
        return {n: np.zeros((batch, self.kv_heads, 0, self.head_dim), dtype=self.dtype) for n in self.past}

    def feeds(self, ids: np.ndarray, past_len: int) -> dict[str, np.ndarray]:
        """input_ids (batch, seq) plus the mask over past + seq and positions past .. past + seq - 1."""
        ids = np.asarray(ids, dtype=np.int64)
        batch, seq = ids.shape
        out = {"input_ids": ids}
        if self.has_mask:
            out["attention_mask"] = np.ones((batch, past_len + seq), dtype=np.int64)
        if self.has_positions:
            out["position_ids"] = np.broadcast_to(np.arange(past_len, past_len + seq, dtype=np.int64),
                                                  (batch, seq)).copy()
        return out


class KVLoop:
    """Prefill then decode one token at a time on an onnxruntime InferenceSession, batch 1.

    The cache stays in onnxruntime values: each step's present.* outputs are bound as the next
    step's past inputs (IO binding), so it is not copied into numpy per step.
    """

    def __init__(self, sess, io: DecoderIO):
        self.sess, self.io = sess, io
        self.outputs = ["logits", *io.present]
        self.past, self.past_len = None, 0

    def _run(self, ids: np.ndarray) -> np.ndarray:
        binding = self.sess.io_binding()
        for name, value in self.io.feeds(ids, self.past_len).items():
            binding.bind_cpu_input(name, value)
        if self.past is None:
            for name, value in self.io.empty_past(ids.shape[0]).items():
                binding.bind_cpu_input(name, value)
        else:
            for name, value in zip(self.io.past, self.past):
                binding.bind_ortvalue_input(name, value)
        for name in self.outputs:
            binding.bind_output(name, "cpu")
        self.sess.run_with_iobinding(binding)
        values = binding.get_outputs()
        self.past = values[1:]
        self.past_len += ids.shape[1]
        return values[0].numpy()

    def prefill(self, ids: Sequence[int]) -> np.ndarray:
        """Logits (seq, vocab) of a fresh prompt (or (1, vocab) for an export that keeps the last only)."""
        self.past, self.past_len = None, 0
        return self._run(np.asarray(ids, dtype=np.int64)[None])[0]

    def step(self, token: int) -> np.ndarray:
        """Logits (vocab,) after feeding one more token."""
        return self._run(np.array([[token]], dtype=np.int64))[0, -1]

    def greedy(self, ids: Sequence[int], new_tokens: int) -> list[int]:
        token = int(np.argmax(self.prefill(ids)[-1]))
        out = [token]
        for _ in range(new_tokens - 1):
            token = int(np.argmax(self.step(token)))
            out.append(token)
        return out
