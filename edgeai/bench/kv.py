"""Open any decoder artifact as edgeai.runtime's DecoderSession (the one KV-cache loop that generates, is
benchmarked and is scored): an export folder's manifest describes its cache; a bare .onnx file's inputs do.

The decoder contract (edgeai export --task text-generation): inputs `input_ids`, `attention_mask` (past + new),
`position_ids`, `logits_to_keep` and `past_key_values.N.key/value` (batch, kv_heads, past, head_dim);
outputs `logits` and `present.N.key/value`. The first call takes an empty past.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Sequence

from edgeai.errors import InputSpecError
from edgeai.specs import TensorSpec

_PAST = re.compile(r"^past_key_values\.(\d+)\.(key|value)$")
LOGITS_TO_KEEP = "logits_to_keep"


def is_decoder(inputs: Sequence[TensorSpec]) -> bool:
    names = {s.name for s in inputs}
    return "input_ids" in names and any(_PAST.match(n) for n in names)


def details_from_specs(inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec]) -> dict:
    """The manifest's `details.decoder` of a decoder, read from its inputs and outputs (a file without a manifest)."""
    names = {s.name for s in inputs}
    if not is_decoder(inputs):
        raise InputSpecError("not a decoder with a KV cache: it needs inputs input_ids and "
                             "past_key_values.N.key/value (export with edgeai export --task text-generation)")
    if LOGITS_TO_KEEP not in names:
        raise InputSpecError("this decoder has no logits_to_keep input: it was not exported by edgeai; export it "
                             "with edgeai export --task text-generation")
    past = [s for s in inputs if _PAST.match(s.name)]
    layers = 1 + max(int(_PAST.match(s.name)[1]) for s in past)
    heads, dim = past[0].shape[1], past[0].shape[3]
    if not isinstance(heads, int) or not isinstance(dim, int):
        raise InputSpecError(f"{past[0].name} has shape {past[0].shape}: kv heads and head dim must be fixed")
    outs = {s.name for s in outputs}
    missing = [f"present.{i}.{kv}" for i in range(layers) for kv in ("key", "value") if f"present.{i}.{kv}" not in outs]
    if missing or "logits" not in outs:
        raise InputSpecError(f"decoder outputs lack {', '.join(missing + ([] if 'logits' in outs else ['logits']))}")
    return {"kind": "causal-lm", "layers": layers, "kv_heads": heads, "head_dim": dim, "cache_dtype": past[0].dtype,
            "past_key": "past_key_values.{}.key", "past_value": "past_key_values.{}.value",
            "present_key": "present.{}.key", "present_value": "present.{}.value", "logits_to_keep": LOGITS_TO_KEEP,
            "tokenizer": None, "eos_token_ids": []}


def as_decoder(session, path: str | Path | None = None):
    """`session` itself when it is a DecoderSession, else a DecoderSession on the same file (same threads)."""
    from edgeai.runtime.generate import DecoderSession
    if isinstance(session, DecoderSession):
        return session
    details = details_from_specs(session.inputs, session.outputs)
    return DecoderSession(path or session.path, details, provider=getattr(session, "provider", "cpu"),
                          threads=getattr(session, "threads", None))


def open_decoder(path: str | Path, artifact: str | None = None, threads: int | None = 1,
                 verify_digest: bool = True):
    """A DecoderSession on a decoder artifact: a .onnx file or an export folder's artifact."""
    from edgeai import runtime
    return as_decoder(runtime.load(path, artifact=artifact, threads=threads, verify_digest=verify_digest))
