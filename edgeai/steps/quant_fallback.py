"""Accuracy-aware INT8: rank nodes by quantization error, keep the worst in FP32 until the metric drop fits."""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from edgeai.data import load_feeds, num_samples, split_labels, take
from edgeai.errors import DataError
from edgeai.steps import StepContext, StepReport, config_to_dict, get_artifact_step
from edgeai.steps import _onnx_graph as g

log = logging.getLogger(__name__)

# Ops that pass a tensor through elementwise; a quantizer may fuse them into the node before
# (Conv+Relu in QDQ), so a node's output is looked for downstream through them.
_UNARY = frozenset({"Relu", "Clip", "LeakyRelu", "Sigmoid", "Tanh", "HardSigmoid", "HardSwish",
                    "BatchNormalization", "Identity", "Gelu"})


@dataclass(frozen=True)
class FallbackTry:
    excluded: tuple[str, ...]   # nodes kept in FP32 in this try
    metric: float
    drop: float                 # baseline - metric (positive = worse)
    path: str


@dataclass
class FallbackReport:
    """Every try of the fallback loop and which one was chosen."""

    baseline: float
    max_drop: float
    tries: list[FallbackTry] = field(default_factory=list)
    chosen: int = 0
    within: bool = False                                       # the chosen try meets max_drop
    ranking: list[tuple[str, float | None]] = field(default_factory=list)  # (node, sensitivity), worst first

    @property
    def chosen_try(self) -> FallbackTry:
        return self.tries[self.chosen]

    def notes(self) -> list[str]:
        best = self.chosen_try
        if not best.excluded and self.within:
            return []
        if self.within:
            return [f"accuracy fallback: kept {len(best.excluded)} node(s) in FP32 "
                    f"({g.short_list(list(best.excluded))}) to stay within a drop of {self.max_drop:g}; "
                    f"drop {best.drop:.4g} after {len(self.tries)} tries"]
        return [f"accuracy fallback did NOT reach a drop within {self.max_drop:g} "
                f"after {len(self.tries)} tries; "
                f"best drop {best.drop:.4g} with {len(best.excluded)} node(s) in FP32 "
                f"({g.short_list(list(best.excluded))}); consider another scheme or FP16"]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for t in d["tries"]:
            t.pop("path")
            t["excluded"] = list(t["excluded"])
        d["ranking"] = [[n, None if s is None else round(s, 6)] for n, s in self.ranking]
        return d


def node_sensitivity(fp32_path: str | Path, quant_path: str | Path, feeds: Mapping[str, np.ndarray],
                     candidates: Sequence[str] | None = None) -> list[tuple[str, float | None]]:
    """(node name, error the node adds) for weighted FP32 nodes, largest first.

    Both models are run with the node's input and output tensors exposed as extra graph
    outputs (matched by tensor name). A node's score is the relative L2 error of its output
    (quantized vs FP32) minus the largest relative error among its inputs, i.e. the error
    it introduces rather than the error it inherits. Nodes none of whose outputs can be
    found in the quantized model come last, with score None.
    """
    from edgeai import runtime
    from edgeai.evaluate import run_batched
    m32, mq = g.load_model(fp32_path), g.load_model(quant_path)
    inits = {t.name for t in m32.graph.initializer}
    nodes = [n for n in m32.graph.node if (n.name in candidates if candidates is not None else
                                           n.op_type in g.WEIGHTED_OPS and any(i in inits for i in n.input))]
    produced_q = {o for n in mq.graph.node for o in n.output} | {i.name for i in mq.graph.input}
    consumers, consumers_q = _consumers(m32), _consumers(mq)

    def read_value(tensor: str) -> str:
        """In a QDQ model the next node reads tensor -> QuantizeLinear -> DequantizeLinear."""
        for q in consumers_q.get(tensor, []):
            if q.op_type == "QuantizeLinear":
                for dq in consumers_q.get(q.output[0], []):
                    if dq.op_type == "DequantizeLinear":
                        return dq.output[0]
        return tensor

    def match(tensor: str) -> tuple[str, str] | None:
        """(FP32 tensor, quantized tensor) holding the same value, starting from `tensor`."""
        for _ in range(4):  # follow unary ops a quantizer may have fused into the producer
            if tensor in produced_q:
                return tensor, read_value(tensor)
            nxt = consumers.get(tensor, [])
            if len(nxt) != 1 or nxt[0].op_type not in _UNARY:
                return None
            tensor = nxt[0].output[0]
        return None

    plan, unmatched = {}, []  # node -> ([(fp32 tensor, quantized tensor)] for inputs, same for outputs)
    for n in nodes:
        outs = [p for p in (match(o) for o in n.output if o) if p]
        ins = [p for p in (match(i) for i in n.input if i and i not in inits) if p]
        if outs:
            plan[n.name] = (ins, outs)
        else:
            unmatched.append(n.name)
            log.info("sensitivity: no output of node %s found in the quantized model", n.name)
    pairs = sorted({p for ins, outs in plan.values() for p in ins + outs})
    with g.work_dir() as work:
        values = []
        for tag, model, names in (("fp32", m32, {a for a, _ in pairs}), ("quant", mq, {b for _, b in pairs})):
            graph_out = {o.name for o in model.graph.output}
            model.graph.output.extend(_untyped_output(t) for t in sorted(names - graph_out))
            g.save_model(model, work / f"{tag}.onnx")
            values.append(run_batched(runtime.load(work / f"{tag}.onnx"), feeds))
    ref, got = values
    err = {p: _rel_err(got[p[1]], ref[p[0]]) for p in pairs}
    scores = []
    for name, (ins, outs) in plan.items():
        out_err = max(err.get(t, 0.0) for t in outs)
        in_err = max((err.get(t, 0.0) for t in ins), default=0.0)
        scores.append((name, out_err - in_err))
    return sorted(scores, key=lambda s: -s[1]) + [(name, None) for name in unmatched]


def _consumers(model) -> dict[str, list]:
    out: dict[str, list] = {}
    for n in model.graph.node:
        for i in n.input:
            out.setdefault(i, []).append(n)
    return out


def _untyped_output(name: str):
    import onnx
    return onnx.ValueInfoProto(name=name)  # onnxruntime infers the type of an extra output


def _rel_err(got: np.ndarray, ref: np.ndarray) -> float:
    if got.shape != ref.shape:
        return 0.0
    ref64 = ref.astype(np.float64)
    return float(np.linalg.norm(got.astype(np.float64) - ref64) / (np.linalg.norm(ref64) + 1e-12))


def fallback_until_within(fp32_path: str | Path, quantize: Callable[[tuple[str, ...]], Path],
                          evaluate: Callable[[Path], float], baseline: float, max_drop: float,
                          calib_feeds: Mapping[str, np.ndarray], max_tries: int = 8, *,
                          candidates: Sequence[str] | None = None,
                          sensitivity_samples: int = 16) -> FallbackReport:
    """Quantize; while the metric drops more than `max_drop` below `baseline`, keep one more node in FP32.

    `quantize(excluded_nodes)` writes a quantized model and returns its path; node names are
    those of the FP32 model at `fp32_path` (quantize exactly that model). `evaluate(path)`
    returns the metric, higher is better. Nodes are ranked once by `node_sensitivity` on the
    first `sensitivity_samples` samples of `calib_feeds`, then excluded cumulatively, one more
    per try, at most `max_tries` of them. The first try within `max_drop` is chosen, else the best one.
    """
    report = FallbackReport(baseline=float(baseline), max_drop=float(max_drop))

    def attempt(excluded: tuple[str, ...]) -> bool:
        path = quantize(excluded)
        metric = float(evaluate(path))
        report.tries.append(FallbackTry(excluded, metric, float(baseline) - metric, str(path)))
        log.info("fallback try %d: %d node(s) in FP32, metric %.5g (drop %.4g)",
                 len(report.tries), len(excluded), metric, baseline - metric)
        return baseline - metric <= max_drop

    ok = attempt(())
    if not ok:
        inputs, _ = split_labels(calib_feeds)
        ranking = node_sensitivity(fp32_path, Path(report.tries[0].path),
                                   take(inputs, sensitivity_samples), candidates)
        report.ranking = ranking
        excluded: tuple[str, ...] = ()
        for name, _ in ranking[:max_tries]:
            excluded += (name,)
            if attempt(excluded):
                ok = True
                break
    report.within = ok
    report.chosen = len(report.tries) - 1 if ok else min(
        range(len(report.tries)), key=lambda i: (report.tries[i].drop, len(report.tries[i].excluded)))
    return report


def quantize_with_fallback(step_name: str, src: str | Path, dst: str | Path, config: Any, ctx: StepContext,
                           evaluate: Callable[[Path], float], max_drop: float,
                           max_tries: int = 8) -> tuple[StepReport, FallbackReport]:
    """Run an ONNX INT8 step ("onnx:int8-static" / "onnx:int8-dynamic") with the fallback loop; write dst.

    The model is pre-processed once, the FP32 baseline is `evaluate` on it, and every try
    quantizes that same graph so node names match. Sample inputs for the sensitivity
    ranking come from ctx.calibration, else ctx.eval_data.
    """
    from edgeai.steps.quantize_onnx import preprocess
    step = get_artifact_step(step_name)
    src, dst = Path(src), Path(dst)
    samples = ctx.calibration if ctx.calibration is not None else ctx.eval_data
    if samples is None:
        raise DataError(f"accuracy fallback for {step_name} needs sample inputs: give calibration or "
                        "evaluation data")
    reports: dict[str, StepReport] = {}
    with g.work_dir() as work:
        fp32 = work / "fp32.onnx"
        pre_ran, pre_notes = preprocess(src, fp32) if getattr(config, "preprocess", True) else ("none", [])
        if not fp32.exists():
            g.save_model(g.load_model(src), fp32)
        feeds = load_feeds(samples, g.input_specs(g.load_model(fp32, with_weights=False)),
                           what="fallback sample data")
        if num_samples(feeds) == 0:
            raise DataError("fallback sample data holds no samples")
        baseline = float(evaluate(fp32))

        def quantize(excluded: tuple[str, ...]) -> Path:
            path = work / f"try{len(reports)}.onnx"
            cfg = replace(config, exclude_nodes=tuple(config.exclude_nodes) + excluded, preprocess=False)
            reports[str(path)] = step.fn(fp32, path, cfg, ctx)
            return path

        fb = fallback_until_within(fp32, quantize, evaluate, baseline, max_drop, feeds, max_tries)
        chosen = fb.chosen_try
        with g.staged_output(dst, src) as out:
            external = g.stores_external_data(chosen.path) or None
            extra = g.save_model(g.load_model(chosen.path), out, external=external)
    report = reports[chosen.path]
    # the config that reproduces this artifact from src in one run
    report.config = config_to_dict(replace(config, exclude_nodes=tuple(config.exclude_nodes) + chosen.excluded))
    report.notes = pre_notes + report.notes + fb.notes()
    report.details.update({"preprocessed": pre_ran, "extra_files": extra,
                           "fallback": fb.to_dict(), **g.stats(src, "before"),
                           "size_bytes_after": g.size_on_disk(dst)})
    return report, fb
