"""`onnx:fuse`: onnxruntime's transformer optimizer fuses attention, LayerNorm and GELU subgraphs; kept if faster."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

from edgeai.errors import ConfigError
from edgeai.steps import ARTIFACT_STEPS, ArtifactStep, StepContext, StepReport, VariantNotKept, config_to_dict

log = logging.getLogger(__name__)

KEEP = ("if-faster", "always")
ROUNDS = 3   # interleaved timing rounds per graph; the median p50 decides


@dataclass(frozen=True)
class FuseConfig:
    """Fuse Transformer subgraphs into onnxruntime kernels (Attention, SkipLayerNormalization, Gelu, ...).

    The fused graph uses onnxruntime's contrib ops (domain com.microsoft): it runs only in
    onnxruntime. With keep="if-faster" both graphs are timed (batch 1) and the fused one is
    left out, with the numbers, unless it is at least `min_speedup` times faster.
    """

    model_type: str = "bert"     # optimizer family: bert (BERT, DistilBERT, RoBERTa, ViT encoders), gpt2, t5, ...
    num_heads: int = 0           # 0: read from the graph
    hidden_size: int = 0         # 0: read from the graph
    keep: str = "if-faster"      # "if-faster" or "always"
    min_speedup: float = 1.02
    threads: int = 1             # intra-op threads for the timing
    dims: Mapping[str, int] = field(default_factory=dict)  # timing sizes, e.g. {"seq": 128} (default: batch 1,
                                                           # other dims as in the example inputs)
    min_seconds: float = 0.3     # per graph and round

    def __post_init__(self):
        if self.keep not in KEEP:
            raise ConfigError(f"fuse keep={self.keep!r}; known: {', '.join(KEEP)}")


def fuse(src: Path, dst: Path, config: FuseConfig, ctx: StepContext) -> StepReport:
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    from edgeai.steps import _onnx_graph as g

    options = FusionOptions(config.model_type)
    # the fused Attention takes the 2-D mask as given: the default (a per-row count of real tokens)
    # is wrong for any mask that is not right-padded
    options.use_raw_attention_mask(True)
    # opt_level 0: only the fusions; onnxruntime applies its own graph optimizations at load time
    model = optimize_model(str(src), model_type=config.model_type, num_heads=config.num_heads,
                           hidden_size=config.hidden_size, optimization_options=options, opt_level=0)
    fused = {op: n for op, n in model.get_fused_operator_statistics().items() if n}
    if not fused:
        raise VariantNotKept(f"the {config.model_type} optimizer found nothing to fuse in this graph")
    model.save_model_to_file(str(dst), use_external_data_format=g.stores_external_data(src))
    report = StepReport("onnx:fuse", config_to_dict(config), details={"fused_ops": fused})
    report.notes.append("fused " + ", ".join(f"{n} {op}" for op, n in fused.items())
                        + " (onnxruntime contrib ops: runs only in onnxruntime)")
    if config.keep == "if-faster":
        before, after = _time_both(src, dst, ctx, config)
        speedup = before / after
        report.details.update({"p50_ms_unfused": before, "p50_ms_fused": after, "speedup": speedup})
        if speedup < config.min_speedup:
            raise VariantNotKept(f"the fused graph is not faster ({after:.3f} ms vs {before:.3f} ms unfused, "
                                 f"x{speedup:.2f} < x{config.min_speedup:g}; keep: always keeps it)")
        report.notes.append(f"kept: x{speedup:.2f} faster than unfused ({after:.3f} vs {before:.3f} ms p50, batch 1)")
    return report


def _time_both(src: Path, dst: Path, ctx: StepContext, config: FuseConfig) -> tuple[float, float]:
    """Median p50 (ms) of each graph over interleaved rounds, at batch 1 and the example sizes."""
    import numpy as np

    from edgeai.specs import random_feeds
    if not ctx.input_specs:
        raise ConfigError("onnx:fuse with keep=if-faster needs the model's input specs to time it")
    feeds = random_feeds(ctx.input_specs, {"batch": 1, **config.dims})
    times: dict[Path, list[float]] = {src: [], dst: []}
    for _ in range(ROUNDS):
        for path in times:
            times[path].append(p50_ms(path, feeds, config.threads, config.min_seconds))
    return float(np.median(times[src])), float(np.median(times[dst]))


def p50_ms(path: Path, feeds: dict, threads: int, min_seconds: float) -> float:
    from edgeai.bench import time_session
    from edgeai.runtime.onnx import OnnxSession
    return time_session(OnnxSession(path, threads=threads), feeds, warmup=5, min_seconds=min_seconds).p50_ms


ARTIFACT_STEPS.add("onnx:fuse", ArtifactStep(FuseConfig, fuse, precision="fp32"))
