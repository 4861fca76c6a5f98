"""Weight-only ONNX quantization for decoders: block-wise INT8/INT4 MatMul weights (MatMulNBits) and embeddings
(GatherBlockQuantized); activations stay float (accuracy_level 4: INT8 dot products inside the kernel)."""
from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path

from edgeai.errors import ConfigError, UnknownNameError
from edgeai.steps import ARTIFACT_STEPS, ArtifactStep, StepContext, StepReport, config_to_dict
from edgeai.steps import _onnx_graph as g
from edgeai.steps import _weight_graph as wg

log = logging.getLogger(__name__)

ALGORITHMS = ("rtn", "hqq")   # round-to-nearest, or HQQ (half-quadratic; ORT's quantizer ships both)


@dataclass(frozen=True)
class WeightOnlyConfig:
    """Block-wise weight-only quantization; `bits` for the transformer's MatMuls, the others per role."""

    bits: int = 4
    block_size: int = 32                  # weights per scale along K (a power of two >= 16)
    symmetric: bool = True                # no zero points: int8 [-127, 127], int4 [-8, 7]
    accuracy_level: int | None = 4        # 4: the kernel quantizes activations to INT8 per block (fastest on CPU)
    algorithm: str = "rtn"                # rtn | hqq
    lm_head_bits: int = 4                 # the MatMul that produces the logits: 4, 8 or 0 (float)
    embedding_bits: int = 4               # Gather on a weight table (token/position embeddings): 4, 8 or 0
    int8_nodes: tuple[str, ...] = ()      # MatMuls/embeddings raised to 8 bits (the accuracy fallback adds here)
    float_nodes: tuple[str, ...] = ()     # MatMuls/embeddings kept in float
    eval_text: str | None = None          # .txt to check the LM accuracy budget on (else ctx.extra["eval_text"])
    max_ppl_increase: float = 0.01        # budget: perplexity at most 1% above FP32 ...
    min_top1_agreement: float = 0.97      # ... and teacher-forced top-1 agreement with FP32 at least 97%
    window: int = 128                     # eval windows (tokens) and their stride
    stride: int = 64
    max_tokens: int = 4096                # eval text is cut to this many tokens
    max_tries: int = 6                    # quantize+evaluate tries of the fallback

    def __post_init__(self):
        for name in ("int8_nodes", "float_nodes"):
            value = getattr(self, name)
            if not isinstance(value, tuple):
                object.__setattr__(self, name, tuple(value))
        if self.bits not in (4, 8):
            raise ConfigError(f"bits must be 4 or 8, got {self.bits}")
        for name in ("lm_head_bits", "embedding_bits"):
            if getattr(self, name) not in (0, 4, 8):
                raise ConfigError(f"{name} must be 0 (float), 4 or 8, got {getattr(self, name)}")
        if self.block_size < 16 or self.block_size & (self.block_size - 1):
            raise ConfigError(f"block_size must be a power of two >= 16, got {self.block_size}")
        if self.algorithm not in ALGORITHMS:
            raise UnknownNameError(f"no weight-only algorithm named {self.algorithm!r}; known: {', '.join(ALGORITHMS)}")
        if self.accuracy_level not in (None, 0, 1, 2, 3, 4):
            raise ConfigError(f"accuracy_level must be 0-4 or null, got {self.accuracy_level}")
        if not 0 < self.max_ppl_increase or not 0 <= self.min_top1_agreement <= 1:
            raise ConfigError("max_ppl_increase must be > 0 and min_top1_agreement within [0, 1]")
        if not 0 < self.stride <= self.window:
            raise ConfigError(f"need 0 < stride <= window, got stride={self.stride}, window={self.window}")


@dataclass(frozen=True)
class Int4WeightConfig(WeightOnlyConfig):
    """INT4 weights everywhere (MatMuls, lm_head, embeddings)."""


@dataclass(frozen=True)
class Int8WeightConfig(WeightOnlyConfig):
    """INT8 weights everywhere; the fallback keeps MatMuls in float."""

    bits: int = 8
    lm_head_bits: int = 8
    embedding_bits: int = 8


@dataclass(frozen=True)
class MixedWeightConfig(WeightOnlyConfig):
    """INT4 transformer MatMuls, lm_head and embeddings at INT8 (they carry most of the INT4 error)."""

    lm_head_bits: int = 8
    embedding_bits: int = 8


def plan_bits(model, config: WeightOnlyConfig) -> dict[str, int]:
    """{node name: bits (0 = float)} for every MatMul with a weight and every Gather on a weight table."""
    lm_head = wg.lm_head_node(model)
    plan = {}
    for node in wg.weight_matmuls(model):
        bits = config.lm_head_bits if node.name == lm_head else config.bits
        if node.name in config.int8_nodes and bits:
            bits = max(bits, 8)
        plan[node.name] = 0 if node.name in config.float_nodes else bits
    for node in wg.embedding_gathers(model):
        bits = max(config.embedding_bits, 8) if node.name in config.int8_nodes and config.embedding_bits else \
            config.embedding_bits
        plan[node.name] = 0 if node.name in config.float_nodes else bits
    return plan


def quantize_file(src: Path, dst: Path, config: WeightOnlyConfig) -> dict:
    """Write `src` with its weights quantized per plan_bits to `dst` (no budget); returns details."""
    model = g.load_model(src)
    wg.refuse_gemm(model, src)
    plan = plan_bits(model, config)
    by_bits = {b: [n for n, nb in plan.items() if nb == b] for b in (0, 4, 8)}
    gathers = {n.name for n in wg.embedding_gathers(model)}
    for bits in (8, 4):
        matmuls = [n for n in by_bits[bits] if n not in gathers]
        if matmuls:
            model = wg.matmul_nbits(model, matmuls, bits, config)
        tables = [n for n in by_bits[bits] if n in gathers]
        for name in wg.quantize_gathers(model, tables, bits, config.block_size) if tables else []:
            plan[name] = 0  # its width is not a multiple of block_size
    extra = g.save_model(model, dst, external=g.stores_external_data(src) or None)
    return {"bits_per_node": plan, "extra_files": extra, "lm_head": wg.lm_head_node(g.load_model(src, with_weights=False)),
            "nodes_by_bits": {str(b): sum(1 for nb in plan.values() if nb == b) for b in (0, 4, 8)}}


def weight_only(src: Path, dst: Path, config: WeightOnlyConfig, ctx: StepContext, key: str) -> StepReport:
    """The registered handler: quantize, then (with eval text) hold the LM accuracy budget by raising the
    precision of the most sensitive MatMuls first."""
    from edgeai.steps._weight_budget import eval_text_for, quantize_within_lm_budget
    src, dst = Path(src), Path(dst)
    report = StepReport(key, config_to_dict(config))
    text = eval_text_for(config, ctx)
    with g.staged_output(dst, src) as out:
        if text is None:
            details = quantize_file(src, out, config)
            report.notes.append("no eval text (eval_text in the step's options): the LM accuracy budget "
                                "(perplexity, top-1 agreement) was not checked")
            chosen = config
        else:
            details, chosen, notes = quantize_within_lm_budget(src, out, config, text)
            report.notes.extend(notes)
        report.details.update({**details, **g.stats(src, "before"), **g.stats(out, "after"),
                               "quantized_nodes": sum(1 for b in details["bits_per_node"].values() if b)})
    report.config = config_to_dict(replace(chosen, eval_text=config.eval_text))
    b0, b1 = report.details["weight_bytes_before"], report.details["weight_bytes_after"]
    report.details["size_ratio"] = round(b1 / b0, 4) if b0 else None
    if report.details["quantized_nodes"] == 0:
        report.notes.append("no MatMul or embedding was quantized: this artifact computes in FP32 like its input")
    return report


def _handler(key: str):
    def fn(src: Path, dst: Path, config: WeightOnlyConfig, ctx: StepContext) -> StepReport:
        return weight_only(src, dst, config, ctx, key)
    fn.__name__ = key.split(":")[1].replace("-", "_")
    return fn


ARTIFACT_STEPS.add("onnx:int4-weight", ArtifactStep(Int4WeightConfig, _handler("onnx:int4-weight"),
                                                    precision="int4-weight"))
ARTIFACT_STEPS.add("onnx:int8-weight", ArtifactStep(Int8WeightConfig, _handler("onnx:int8-weight"),
                                                    precision="int8-weight"))
ARTIFACT_STEPS.add("onnx:mixed", ArtifactStep(MixedWeightConfig, _handler("onnx:mixed"), precision="int4-mixed"))

__all__ = ["Int4WeightConfig", "Int8WeightConfig", "MixedWeightConfig", "WeightOnlyConfig", "plan_bits",
           "quantize_file"]
