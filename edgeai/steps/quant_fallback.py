"""Accuracy-aware INT8: rank nodes by quantization error per byte, keep the best buys in FP32 until the metric fits.

A node kept in float costs its weights' float bytes (3 more bytes per weight than INT8); what it buys
is the error it adds when quantized (measured tensor by tensor, see node_sensitivity). Units are
ranked by error removed per float byte, so a small sensitive MatMul is kept in float before a large
embedding table whose error matters less per byte, and the within-budget try with the fewest float
bytes is chosen.
"""
from __future__ import annotations

import logging
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from edgeai.data import load_feeds, num_samples, split_labels, take
from edgeai.errors import DataError
from edgeai.steps import StepContext, StepReport, config_to_dict, get_artifact_step
from edgeai.steps import _onnx_graph as g
from edgeai.steps._fallback_report import FallbackReport, FallbackTry

log = logging.getLogger(__name__)

# Ops that pass a tensor through elementwise; a quantizer may fuse them into the node before
# (Conv+Relu in QDQ), so a node's output is looked for downstream through them.
_UNARY = frozenset({"Relu", "Clip", "LeakyRelu", "Sigmoid", "Tanh", "HardSigmoid", "HardSwish",
                    "BatchNormalization", "Identity", "Gelu"})


SIZE_FLOOR_BYTES = 4096     # a node without weights (an activation MatMul) counts as this many float bytes


def node_sensitivity(fp32_path: str | Path, quant_path: str | Path, feeds: Mapping[str, np.ndarray],
                     candidates: Sequence[str] | None = None) -> list[tuple[str, float | None]]:
    """(node name, error the node adds) for weighted FP32 nodes, largest first.

    Both models are run with the node's input and output tensors exposed as extra graph
    outputs (matched by tensor name). A node's score is the relative L2 error of its output
    (quantized vs FP32, over the whole tensor) minus the largest relative error among its
    inputs, i.e. the error it introduces rather than the error it inherits. Nodes none of whose
    outputs can be found in the quantized model come last, with score None.
    """
    from edgeai import runtime
    m32, mq = g.load_model(fp32_path), g.load_model(quant_path)
    inits = {t.name for t in m32.graph.initializer}
    wanted = set(candidates) if candidates is not None else set(candidate_nodes(m32))
    nodes = [n for n in m32.graph.node if n.name in wanted]
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
            # one run on all samples: intermediate tensors need not be batch-major (an LSTM's Y is
            # (seq, dirs, batch, hidden); attention transposes), so they are compared whole
            values.append(runtime.load(work / f"{tag}.onnx").run(dict(feeds)))
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


# Ops a fallback may keep in FP32: weighted ops, activation MatMuls (attention in static INT8) and
# Gather on a weight table (an embedding).
_CANDIDATE_OPS = g.WEIGHTED_OPS | {"Gather"}
GROUP_ABOVE = 8   # with more candidate nodes than this, search whole blocks (a transformer layer) first


def candidate_nodes(model) -> list[str]:
    """Nodes whose quantization the fallback may undo, in graph order."""
    inits = {t.name for t in model.graph.initializer}
    out = []
    for n in model.graph.node:
        if n.op_type == "Gather":
            if n.input and n.input[0] in inits:
                out.append(n.name)
        elif n.op_type == "MatMul" or (n.op_type in _CANDIDATE_OPS and any(i in inits for i in n.input)):
            out.append(n.name)
    return out


def _scope(node) -> str | None:
    """The module a node's op ran in, from the torch exporter's metadata (None when absent).

    A Linear's MatMul runs in `layers.0.query`; its block is the parent `layers.0`.
    """
    for p in node.metadata_props:
        if p.key == "pkg.torch.onnx.name_scopes":
            scopes = [x.strip(" '\"") for x in p.value.strip("[]").split(",")]
            mods = [x for x in scopes[1:-1] if x]   # drop the root '' and the op's own name
            if not mods:
                return None
            return mods[-2] if len(mods) >= 2 and mods[-1].startswith(mods[-2] + ".") else mods[-1]
    return None


def search_units(model, candidates: Sequence[str]) -> dict[str, list[str]]:
    """{unit name: nodes}: one node per unit, or whole blocks (by exporter scope) when there are many.

    An LSTM/GRU is one node already; a transformer layer's MatMuls become one unit
    (`layers.0`), an embedding or a Conv outside any block stays alone.
    """
    if len(candidates) <= GROUP_ABOVE:
        return {n: [n] for n in candidates}
    by_name = {n.name: n for n in model.graph.node}
    units: dict[str, list[str]] = {}
    for name in candidates:
        scope = _scope(by_name[name])
        units.setdefault(scope or name, []).append(name)
    return units if len(units) < len(candidates) else {n: [n] for n in candidates}


# all-INT8 path -> (units, [(unit, sensitivity)] in the order to keep them in float, {unit or node: float bytes});
# the sizes may be left out (a 2-tuple)
Ranker = Callable[[Path], tuple]


def weight_bytes(model, nodes: Sequence[str]) -> dict[str, int]:
    """{node: float bytes of the initializers it reads} (weights, biases, an embedding table)."""
    sizes = {t.name: int(np.prod(t.dims, dtype=np.int64)) * 4 for t in model.graph.initializer
             if g._ELEM_DTYPES.get(t.data_type, "").startswith(("float", "bfloat"))}
    wanted = set(nodes)
    return {n.name: sum(sizes.get(i, 0) for i in set(n.input)) for n in model.graph.node if n.name in wanted}


def per_byte(score: float | None, nbytes: int) -> float:
    """Error a unit adds per float byte it would keep (the fallback's ranking key)."""
    return (score or 0.0) / max(nbytes, SIZE_FLOOR_BYTES)


def onnx_ranker(fp32_path: Path, calib_feeds: Mapping[str, np.ndarray], candidates: Sequence[str] | None = None,
                sensitivity_samples: int = 16) -> Ranker:
    """all-INT8 model path -> (units, units ranked by the error their nodes add per float byte, best buy first)."""
    def rank(quant_path: Path):
        model = g.load_model(fp32_path, with_weights=False)      # dims only
        nodes = list(candidates) if candidates is not None else candidate_nodes(model)
        units = search_units(model, nodes)
        nbytes = weight_bytes(model, nodes)
        inputs, _ = split_labels(calib_feeds)
        scores = dict(node_sensitivity(fp32_path, quant_path, take(inputs, sensitivity_samples), nodes))
        units = {u: sorted(members, key=lambda n: -per_byte(scores.get(n), nbytes.get(n, 0)))
                 for u, members in units.items()}
        score = {u: sum(scores.get(n) or 0.0 for n in members) for u, members in units.items()}
        size = {u: sum(nbytes.get(n, 0) for n in members) for u, members in units.items()}
        ranked = sorted(score.items(), key=lambda kv: -per_byte(kv[1], size[kv[0]]))
        return units, ranked, {**nbytes, **size}
    return rank


def fallback_until_within(quantize: Callable[[tuple[str, ...]], Path], evaluate: Callable[[Path], float],
                          baseline: float, target: float, rank: Ranker, max_evals: int = 8, *,
                          budget: str = "", samples: int | None = None,
                          deadline: float | None = None) -> FallbackReport:
    """Quantize; while the metric is below `target`, keep the most sensitive units in FP32.

    `quantize(excluded)` writes a quantized model with the named parts (ONNX node names, TFLite
    op output tensors) kept in float and returns its path; `evaluate(path)` returns the metric,
    higher is better. `rank(all-INT8 path)` gives the units (single nodes, or whole blocks when
    there are many) in the order to keep them in float (error removed per float byte, best
    first) and their float bytes, computed once. Then the first k units are kept in float,
    k = 1, 2, 4, ... until a try is within the budget, and k is bisected down between the last
    miss and that hit. When the k-th unit is a group, the same search then runs over its own
    nodes, keeping the first k-1 units. At most `max_evals` quantize+evaluate tries in all; the
    within-budget try with the fewest float bytes (then parts) is chosen, else the best try.
    `samples`: how many samples the metric is measured on (noted, with a warning below 32).
    `deadline` (time.time() seconds): no try starts that the slowest try so far says would end past it.
    """
    report = FallbackReport(baseline=float(baseline), target=float(target), budget=budget, samples=samples)
    sizes: dict[str, int] = {}
    slowest = [0.0]

    def evals_left() -> int:
        if deadline is not None and time.time() + slowest[0] > deadline:
            report.stopped_at_deadline = True
            return 0
        return max_evals - len(report.tries)

    def attempt(excluded: tuple[str, ...]) -> bool:
        t0 = time.time()
        path = quantize(excluded)
        metric = float(evaluate(path))
        report.tries.append(FallbackTry(excluded, metric, float(baseline) - metric, str(path),
                                        sum(sizes.get(n, 0) for n in excluded)))
        log.info("fallback try %d of at most %d: %d part(s) in float, metric %.5g (target %.5g)",
                 len(report.tries), max_evals, len(excluded), metric, target)
        slowest[0] = max(slowest[0], time.time() - t0)
        return metric >= target

    ok = attempt(())
    if not ok and max_evals > 1 and evals_left() > 0:
        log.info("fallback: all-INT8 misses the target; ranking the parts by the error they add")
        ranked = rank(Path(report.tries[0].path))     # a ranker without sizes: every unit costs the same
        report.units, report.ranking, sizes = ranked[0], ranked[1], (ranked[2] if len(ranked) > 2 else {})
        report.unit_bytes = {u: sizes.get(u, 0) for u in report.units}
        order = [u for u, _ in report.ranking]

        def with_units(k: int) -> bool:
            return attempt(tuple(n for u in order[:k] for n in report.units[u]))

        k = _smallest_prefix(len(order), with_units, evals_left)
        if k:
            ok = True
            members = report.units[order[k - 1]]   # worst node first
            if len(members) > 1:  # groups first, then the last group's own nodes
                base = tuple(n for u in order[:k - 1] for n in report.units[u])
                _smallest_prefix(len(members) - 1, lambda j: attempt(base + tuple(members[:j])), evals_left)
            report.chosen = min((i for i, t in enumerate(report.tries) if t.metric >= target),
                                key=lambda i: (report.tries[i].float_bytes, len(report.tries[i].excluded), i))
    report.within = ok
    if not ok:
        report.chosen = max(range(len(report.tries)),
                            key=lambda i: (report.tries[i].metric, -len(report.tries[i].excluded)))
    return report


def _smallest_prefix(n: int, within: Callable[[int], bool], evals_left: Callable[[], int]) -> int | None:
    """The smallest k in 1..n with within(k) found by doubling then bisecting, or None; calls within() at
    most evals_left() times."""
    seen: dict[int, bool] = {}
    k, miss = 1, 0
    while evals_left() > 0 and k <= n:
        seen[k] = within(k)
        if seen[k]:
            break
        miss, k = k, (n if k * 2 > n > k else k * 2)
    hits = [c for c, good in seen.items() if good]
    if not hits:
        return None
    lo, hi = miss, min(hits)   # lo misses (0: nothing kept), hi is within
    while hi - lo > 1 and evals_left() > 0:
        mid = (lo + hi) // 2
        seen[mid] = within(mid)
        lo, hi = (lo, mid) if seen[mid] else (mid, hi)
    return hi


def quantize_with_fallback(step_name: str, src: str | Path, dst: str | Path, config: Any, ctx: StepContext,
                           evaluate: Callable[[Path], float], max_drop: float | None = None, *,
                           min_metric: float | None = None, budget: str = "", samples: Any = None,
                           max_evals: int = 8, budget_samples: int | None = None) -> tuple[StepReport, FallbackReport]:
    """Run an ONNX INT8 step ("onnx:int8-static" / "onnx:int8-dynamic") with the fallback loop; write dst.

    The budget is `max_drop` below the FP32 baseline or an absolute `min_metric` (one of them).
    The model is pre-processed once, the FP32 baseline is `evaluate` on it, and every try
    quantizes that same graph so node names match; static INT8 is calibrated once and every try
    reuses the ranges. Sample inputs for the sensitivity ranking are `samples`, else
    ctx.calibration, else ctx.eval_data; `budget_samples` is how many samples `evaluate` measures on.
    """
    from edgeai.steps.quantize_onnx import preprocess
    if (max_drop is None) == (min_metric is None):
        raise ValueError("give exactly one of max_drop and min_metric")
    step = get_artifact_step(step_name)
    src, dst = Path(src), Path(dst)
    if samples is None:
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
        target = baseline - max_drop if max_drop is not None else float(min_metric)
        try_ctx = replace(ctx, extra={**ctx.extra, "calibration_cache": str(work / "calibration.json")})

        def quantize(excluded: tuple[str, ...]) -> Path:
            path = work / f"try{len(reports)}.onnx"
            cfg = replace(config, exclude_nodes=tuple(config.exclude_nodes) + excluded, preprocess=False)
            reports[str(path)] = step.fn(fp32, path, cfg, try_ctx)
            return path

        fb = fallback_until_within(quantize, evaluate, baseline, target, onnx_ranker(fp32, feeds), max_evals,
                                   budget=budget or (f"drop <= {max_drop:g}" if max_drop is not None
                                                     else f"metric >= {min_metric:g}"), samples=budget_samples,
                                   deadline=ctx.extra.get("deadline"))
        chosen = fb.chosen_try
        with g.staged_output(dst, src) as out:
            external = g.stores_external_data(chosen.path) or None
            extra = g.save_model(g.load_model(chosen.path), out, external=external)
    report = reports[chosen.path]
    # the config that reproduces this artifact from src in one run
    report.config = config_to_dict(replace(config, exclude_nodes=tuple(config.exclude_nodes) + chosen.excluded))
    if chosen.excluded and not config.exclude_nodes:  # the fallback's choice, not the user's
        report.notes = [n for n in report.notes if not n.startswith("kept in FP32 as asked")]
    report.notes = pre_notes + report.notes + fb.notes()
    report.details.update({"preprocessed": pre_ran, "extra_files": extra,
                           "fallback": fb.to_dict(), **g.stats(src, "before"),
                           "size_bytes_after": g.size_on_disk(dst)})
    return report, fb
