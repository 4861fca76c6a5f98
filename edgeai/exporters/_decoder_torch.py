"""Causal LMs on the torch side: load (hf: folder or factory), the flat KV-cache forward, the ONNX trace.

The flat forward every decoder export traces (and that a factory's own module may implement):

    forward(input_ids, attention_mask, position_ids, *past) -> (logits, *present)
      input_ids      int64 (batch, seq)            the new tokens
      attention_mask int64 (batch, past_seq + seq)  1 = attend, 0 = padding; covers past AND new tokens
      position_ids   int64 (batch, seq)            positions of the new tokens (past_seq, past_seq+1, ...)
      past           2 * layers float32 tensors, layer i's key then value, each (batch, kv_heads, past_seq,
                     head_dim); past_seq is 0 on the first call (empty tensors)
      logits         float32 (batch, seq, vocab)
      present        the past with the new tokens appended: (batch, kv_heads, past_seq + seq, head_dim)
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeai.errors import ExportError, ModelLoadError

log = logging.getLogger(__name__)

TASKS = ("text-generation", "text-generation-with-past")  # the second is Optimum's name, accepted as an alias
PAST_KEY, PAST_VALUE = "past_key_values.{}.key", "past_key_values.{}.value"
PRESENT_KEY, PRESENT_VALUE = "present.{}.key", "present.{}.value"
FIXED_INPUTS = ("input_ids", "attention_mask", "position_ids")


@dataclass(frozen=True)
class CacheLayout:
    """The shape of the KV cache: `layers` pairs of (batch, kv_heads, seq, head_dim) tensors."""

    layers: int
    kv_heads: int
    head_dim: int
    vocab_size: int
    max_positions: int | None = None

    def past_names(self) -> list[str]:
        return [n.format(i) for i in range(self.layers) for n in (PAST_KEY, PAST_VALUE)]

    def present_names(self) -> list[str]:
        return [n.format(i) for i in range(self.layers) for n in (PRESENT_KEY, PRESENT_VALUE)]


@dataclass
class DecoderSource:
    """A causal LM ready to export: the flat forward, its cache layout and what travels with it."""

    origin: str
    flat: Any                         # nn.Module with the flat forward above
    layout: CacheLayout
    hf_model: Any = None              # the transformers model (its generate() is the greedy reference)
    tokenizer: str | None = None      # a `tokenizers` JSON (the text), written into the export folder as tokenizer.json
    eos_token_ids: list[int] = field(default_factory=list)
    bos_token_id: int | None = None
    provenance: dict[str, Any] = field(default_factory=dict)


def canonical_task(task: str | None) -> str | None:
    return "text-generation" if task in TASKS else task


# ---------------------------------------------------------------------------- loading

def load_decoder(spec: str, *, trust_pickle: bool = False) -> DecoderSource:
    """`hf:FOLDER`/`hf:ORG/NAME` (safetensors unless trust_pickle, no remote code) or `file.py:factory`."""
    if spec.startswith("hf:"):
        return _from_hf(spec, trust_pickle)
    from edgeai.source import _looks_like_factory, call_factory
    if not _looks_like_factory(spec):
        raise ModelLoadError(f"--task text-generation takes hf:FOLDER, hf:ORG/NAME or a factory file.py:function, "
                             f"not {spec!r}")
    module = call_factory(spec).eval()
    if _is_hf_causal_lm(module):
        return _hf_source(spec, module.float(), _tokenizer_file(module, spec), {"loader": "factory"})
    return _contract_source(spec, module)


def _from_hf(spec: str, trust_pickle: bool) -> DecoderSource:
    from edgeai.hf import SAFE_WEIGHTS, _auto_config, _one_line, resolve
    ref = resolve(spec, trust_pickle)  # refuses auto_map (remote code) and pickled weights unless trusted
    config = _auto_config(ref)
    try:
        from transformers import AutoModelForCausalLM
        model = AutoModelForCausalLM.from_pretrained(
            ref.folder, config=config, trust_remote_code=False, local_files_only=True,
            use_safetensors=ref.weights in SAFE_WEIGHTS, attn_implementation="eager", dtype="float32")
    except (OSError, ValueError, RuntimeError, KeyError) as e:
        raise ModelLoadError(f"{ref.model_id!r} does not load as a causal LM (AutoModelForCausalLM): "
                             f"{_one_line(e)}") from None
    tokenizer = _hf_tokenizer(ref.folder)
    prov = {"loader": "hf", "model_id": ref.model_id, "revision": ref.revision, "weights": ref.weights}
    return _hf_source(spec, model.eval(), tokenizer, prov)


def _hf_tokenizer(folder: Path) -> str | None:
    """The folder's tokenizer.json, or one converted from a slow tokenizer's files; None without one."""
    if (folder / "tokenizer.json").is_file():
        return (folder / "tokenizer.json").read_text()
    try:
        from transformers import AutoTokenizer
        tok = AutoTokenizer.from_pretrained(folder, use_fast=True, trust_remote_code=False, local_files_only=True)
        backend = tok.backend_tokenizer
    except (OSError, ValueError, AttributeError, KeyError, TypeError):
        log.warning("%s has no tokenizer edgeai can convert: the export generates from token ids only", folder)
        return None
    return backend.to_str()


def _is_hf_causal_lm(module) -> bool:
    try:
        from transformers import PreTrainedModel
    except ImportError:
        return False
    return isinstance(module, PreTrainedModel) and hasattr(module, "generate")


def _hf_source(spec: str, model, tokenizer, prov: dict) -> DecoderSource:
    cfg = model.config
    heads = cfg.num_attention_heads
    layout = CacheLayout(layers=cfg.num_hidden_layers, kv_heads=getattr(cfg, "num_key_value_heads", None) or heads,
                         head_dim=getattr(cfg, "head_dim", None) or cfg.hidden_size // heads,
                         vocab_size=cfg.vocab_size, max_positions=getattr(cfg, "max_position_embeddings", None))
    gen = getattr(model, "generation_config", None)
    eos = getattr(gen, "eos_token_id", None) if gen is not None else None
    eos = cfg.eos_token_id if eos is None else eos
    eos_ids = [] if eos is None else [int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos])]
    prov = {**prov, "model_type": cfg.model_type, "architecture": type(model).__name__}
    return DecoderSource(spec, HFFlat(model, layout.layers), layout, hf_model=model, tokenizer=tokenizer,
                         eos_token_ids=eos_ids,
                         bos_token_id=getattr(cfg, "bos_token_id", None), provenance=prov)


def _contract_source(spec: str, module) -> DecoderSource:
    layout = getattr(module, "cache_layout", None)
    if not isinstance(layout, dict) or not {"layers", "kv_heads", "head_dim", "vocab_size"} <= set(layout):
        raise ModelLoadError(
            f"factory {spec!r} returned {type(module).__name__}, which is neither a transformers causal LM nor a "
            "module with a `cache_layout` dict (layers, kv_heads, head_dim, vocab_size); see docs/decoders.md")
    return DecoderSource(spec, ContractFlat(module, int(layout["layers"])), CacheLayout(**layout),
                         tokenizer=_tokenizer_file(module, spec),
                         eos_token_ids=list(getattr(module, "eos_token_ids", [])),
                         provenance={"loader": "factory", "architecture": type(module).__name__})


def _tokenizer_file(module, spec: str) -> str | None:
    """The text of the file a factory's model names in `tokenizer_file` (None when it names none)."""
    path = getattr(module, "tokenizer_file", None)
    if not path:
        return None
    try:
        return Path(path).read_text()
    except OSError as e:
        raise ModelLoadError(f"factory {spec!r}: cannot read its tokenizer_file {str(path)!r} ({e.strerror})") from None


# ---------------------------------------------------------------------------- flat forwards

def _torch():
    import torch
    return torch


def _flat_module(name: str, call):
    torch = _torch()

    def forward(self, input_ids, attention_mask, position_ids, *past):
        pairs = [(past[2 * i], past[2 * i + 1]) for i in range(self.layers)]
        logits, present = call(self, input_ids, attention_mask, position_ids, pairs)
        return (logits, *[t for kv in present for t in kv])

    return type(name, (torch.nn.Module,), {"forward": forward, "__module__": __name__})


def HFFlat(model, layers: int):
    """A transformers causal LM behind the flat forward (a DynamicCache built from the past tensors)."""
    def call(self, input_ids, attention_mask, position_ids, pairs):
        from transformers import DynamicCache
        cache = DynamicCache()
        for i, (k, v) in enumerate(pairs):
            cache.update(k, v, i)
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                         past_key_values=cache, use_cache=True, return_dict=True)
        cache = out.past_key_values
        return out.logits, [(cache.layers[i].keys, cache.layers[i].values) for i in range(self.layers)]

    flat = _flat_module("HFFlatDecoder", call)()
    flat.model, flat.layers = model, layers
    return flat.eval()


def ContractFlat(module, layers: int):
    """A factory's module with forward(input_ids, attention_mask, position_ids, past) -> (logits, present)."""
    def call(self, input_ids, attention_mask, position_ids, pairs):
        logits, present = self.model(input_ids, attention_mask, position_ids, pairs)
        if len(present) != self.layers:
            raise ExportError(f"the model returned {len(present)} present (key, value) pairs; its cache_layout "
                              f"says {self.layers} layers")
        return logits, present

    flat = _flat_module("ContractFlatDecoder", call)()
    flat.model, flat.layers = module, layers
    return flat.eval()


# ---------------------------------------------------------------------------- export

def example_feeds(layout: CacheLayout, batch: int, seq: int, past: int, seed: int = 0) -> dict:
    """Torch feeds of the flat forward: random ids, a full mask, positions after `past` random cache entries."""
    torch = _torch()
    g = torch.Generator().manual_seed(seed)
    feeds = {"input_ids": torch.randint(0, layout.vocab_size, (batch, seq), generator=g),
             "attention_mask": torch.ones(batch, past + seq, dtype=torch.int64),
             "position_ids": torch.arange(past, past + seq).expand(batch, seq).contiguous()}
    for name in layout.past_names():
        feeds[name] = torch.randn(batch, layout.kv_heads, past, layout.head_dim, generator=g)
    return feeds


def trace_onnx(source: DecoderSource, out_path: Path, opset: int = 18) -> None:
    """torch.export the flat forward with dynamic batch, seq and past_seq; write `out_path` and its weights
    beside it (external data: any size; the normalizer decides where they end up)."""
    import contextlib
    import io
    import warnings

    from edgeai.exporters import interrupts_propagate
    from edgeai.exporters.onnx import _quiet_torch_logs, root_cause
    torch = _torch()
    layout = source.layout
    feeds = example_feeds(layout, batch=2, seq=3, past=4)  # no size-0/1 dims: torch.export would specialise them
    batch, seq, past = (torch.export.Dim(n) for n in ("batch", "seq", "past_seq"))
    total = torch.export.Dim("total_seq")
    dyn = {"input_ids": {0: batch, 1: seq}, "attention_mask": {0: batch, 1: total},
           "position_ids": {0: batch, 1: seq}, "past": tuple({0: batch, 2: past} for _ in layout.past_names())}
    try:
        with interrupts_propagate(), warnings.catch_warnings(), _quiet_torch_logs(), \
                contextlib.redirect_stdout(io.StringIO()), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(source.flat, tuple(feeds.values()), str(out_path), dynamo=True,
                              input_names=list(feeds), output_names=["logits", *layout.present_names()],
                              dynamic_shapes=dyn, opset_version=opset, optimize=True, external_data=True)
    except Exception as e:
        raise ExportError(f"torch.export of the decoder failed: {root_cause(e)}") from e
