"""The in-place KV cache: one preallocated buffer per past input, bound as both the past input and the present output.

onnxruntime's GroupQueryAttention (CPU kernel, `gqa_attention_base.h`) sets `past_present_share_buffer` when the
present output's data pointer is the past input's: it then writes the new keys/values at each row's valid length
(`seqlens_k`, from the attention mask) and neither zeroes nor copies the cache. With separate buffers
("concat" mode) every step allocates the present cache (batch, kv_heads, total, head_dim), zeroes it and copies
the whole past into it, in every layer. Only graphs whose attention reads the past's valid length from the mask
can share (edgeai's fused graph: the manifest's `decoder.past_present_share_buffer`); a traced graph's Concat
cannot. CPU only: the buffers are numpy arrays that onnxruntime reads and writes in place.
"""
from __future__ import annotations

import numpy as np

MIN_CAPACITY = 64   # positions allocated at least; the buffer doubles when a prompt outgrows it


class SharedCache:
    """Buffers (1, kv_heads, capacity, head_dim) bound once to an IO binding as past and present of each layer."""

    def __init__(self, sess, past_names: list[str], present_names: list[str], kv_heads: int, head_dim: int,
                 dtype: np.dtype, vocab: int, max_positions: int | None):
        import onnxruntime as ort
        self._ort, self._sess = ort, sess
        self._past, self._present = past_names, present_names
        self._shape, self._dtype, self.max_positions = (kv_heads, head_dim), dtype, max_positions
        self.capacity = 0
        self.buffers: list[np.ndarray] = []
        self._binding = sess.io_binding()
        self._logits = np.zeros((1, 1, vocab), np.float32)   # the one-position logits, written in place
        self._logits_value = ort.OrtValue.ortvalue_from_numpy(self._logits)
        self._binding.bind_ortvalue_output("logits", self._logits_value)   # bound first: get_outputs()[0]
        self._logits_bound = True
        self._inputs: dict[str, np.ndarray] = {}   # the arrays bound as inputs, reused while their shape holds

    def reserve(self, positions: int, valid: int) -> None:
        """Make room for `positions` tokens, keeping the first `valid` ones (doubling; at most max_positions
        unless more are asked for, which the model then refuses as it would in concat mode)."""
        if positions <= self.capacity:
            return
        cap = max(positions, 2 * self.capacity, MIN_CAPACITY)
        if self.max_positions:
            cap = max(positions, min(cap, self.max_positions))
        kvh, d = self._shape
        new = [np.zeros((1, kvh, cap, d), self._dtype) for _ in self._past]
        for old, buf in zip(self.buffers, new):
            buf[:, :, :valid] = old[:, :, :valid]   # (1, kv_heads, positions, head_dim): keep each head's prefix
        self.buffers, self.capacity = new, cap
        for past, present, buf in zip(self._past, self._present, new):
            value = self._ort.OrtValue.ortvalue_from_numpy(buf)   # wraps the numpy memory, no copy
            self._binding.bind_ortvalue_input(past, value)
            self._binding.bind_ortvalue_output(present, value)

    def run(self, feeds: dict[str, np.ndarray], keep: int, run_options) -> np.ndarray:
        """One run on the bound cache; the logits (1, kept, vocab) as a new array."""
        for name, arr in feeds.items():
            bound = self._inputs.get(name)
            if bound is not None and bound.shape == arr.shape:
                np.copyto(bound, arr)   # a decode step's ids/positions: same shape, no new binding
            else:
                bound = self._inputs[name] = np.array(arr, copy=True)   # bound by pointer: kept alive here
                self._binding.bind_cpu_input(name, bound)
        one = keep == 1
        if not one:   # every position: onnxruntime allocates the logits (a bound output keeps its last shape)
            self._binding.bind_output("logits", "cpu")
        elif not self._logits_bound:
            self._binding.bind_ortvalue_output("logits", self._logits_value)
        self._logits_bound = one
        self._sess.run_with_iobinding(self._binding, run_options)
        return self._logits.copy() if one else self._binding.get_outputs()[0].numpy()


__all__ = ["MIN_CAPACITY", "SharedCache"]
