"""Accuracy-aware TFLite INT8: per-op ai-edge-quantizer recipes keep the ops that add the most error in float32."""
from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
from edgeai.errors import DataError
from edgeai.fsutil import atomic_write_bytes
from edgeai.steps import StepContext, StepReport, config_to_dict, get_artifact_step
from edgeai.steps import _onnx_graph as g
from edgeai.steps.quant_fallback import FallbackReport, fallback_until_within, per_byte

log = logging.getLogger(__name__)

# Ops whose weights ai-edge-quantizer stores in 8 bits; the units the fallback may keep in float.
WEIGHTED_OPS = frozenset({"FULLY_CONNECTED", "CONV_2D", "DEPTHWISE_CONV_2D", "TRANSPOSE_CONV", "BATCH_MATMUL",
                          "EMBEDDING_LOOKUP", "GATHER", "UNIDIRECTIONAL_SEQUENCE_LSTM"})
SENSITIVITY_SAMPLES = 8


def weighted_ops(path: str | Path) -> list[tuple[str, str, str, list[str]]]:
    """(op type, scope, first output tensor, input tensors) of the main graph's weighted ops.

    The scope is how ai-edge-quantizer names an op in a recipe: its output tensor names, each
    followed by ';'. A config's exclude_ops holds scopes.
    """
    return [op for op in _ops(path) if op[0] in WEIGHTED_OPS]


def weighted_units(path: str | Path) -> list[tuple[str, list[str], str, list[str]]]:
    """(scope of a weighted op, scopes of the unit, last output tensor, the weighted op's inputs).

    A unit is a weighted op with the unweighted ops that follow it up to the next weighted op
    (its epilogue: a BatchNorm after a ReLU, pooling, an activation), the ops before the first
    weighted op joining the first unit. In full INT8 those ops' activations are quantized too, so
    keeping only the conv in float can leave the error where it was (the zoo pitch CNN lost 1.9
    cents with every conv and dense layer in float, 1.7 with every one in INT8).
    """
    units: list[tuple[str, list[str], str, list[str]]] = []
    lead: list[str] = []
    for kind, scope, first, ins in _ops(path):
        if kind in WEIGHTED_OPS:
            units.append((scope, [scope] + lead, first, ins))
            lead = []
        elif units:
            head, members, _, head_ins = units[-1]
            units[-1] = (head, members + [scope], first, head_ins)
        else:
            lead.append(scope)
    return units


def _ops(path: str | Path) -> list[tuple[str, str, str, list[str]]]:
    """(op type, scope, first output tensor, input tensors) of every op of the main graph, in order."""
    sub, codes, _ = _main_graph(path)

    def name(i: int) -> str:
        return sub.Tensors(i).Name().decode()

    out = []
    for k in range(sub.OperatorsLength()):
        op = sub.Operators(k)
        kind = codes[op.OpcodeIndex()]
        if op.OutputsLength():
            ins = [name(op.Inputs(j)) for j in range(op.InputsLength()) if op.Inputs(j) >= 0]
            outs = [name(op.Outputs(j)) for j in range(op.OutputsLength()) if op.Outputs(j) >= 0]
            out.append((kind, "".join(f"{o};" for o in outs if o), outs[0], ins))
    return out


def _main_graph(path: str | Path):
    """(main subgraph, op type name per opcode index, TensorType number -> name) of a .tflite."""
    from edgeai.runtime.tflite_inspect import _enum_names, _schema

    schema = _schema()
    model = schema.Model.GetRootAs(Path(path).read_bytes(), 0)
    op_names = _enum_names(schema.BuiltinOperator)
    codes = [op_names.get(max(model.OperatorCodes(i).BuiltinCode(), model.OperatorCodes(i).DeprecatedBuiltinCode()))
             for i in range(model.OperatorCodesLength())]
    return model.Subgraphs(0), codes, _enum_names(schema.TensorType)


def int8_op_count(path: str | Path) -> int:
    """How many ops of the main graph read or write an INT8 tensor (weights or activations): 0 when a
    quantization step left every op in float."""
    sub, _, types = _main_graph(path)

    def int8(i: int) -> bool:
        return i >= 0 and types.get(sub.Tensors(i).Type()) == "INT8"

    count = 0
    for k in range(sub.OperatorsLength()):
        op = sub.Operators(k)
        tensors = [op.Inputs(j) for j in range(op.InputsLength())] + [op.Outputs(j) for j in range(op.OutputsLength())]
        count += any(int8(i) for i in tensors)
    return count


def tflite_ranker(src: Path, batches: list[dict]):
    """all-INT8 .tflite path -> (units, ranking): the cosine error each weighted op and its epilogue
    add (see weighted_units), from ai-edge-quantizer's tensor-by-tensor comparison of the two
    models in LiteRT."""
    from ai_edge_quantizer import model_validator
    from ai_edge_quantizer.utils import validation_utils

    def rank(quant_path: Path):
        metric = validation_utils.ValidationErrorMetric.COSINE_SIMILARITY
        result = model_validator.compare_model(Path(src).read_bytes(), Path(quant_path).read_bytes(),
                                               {"serving_default": batches}, [metric], num_threads=1)
        err = {t: 1.0 - float(v.get(metric.value, 1.0)) for t, v in result.get_all_tensor_results().items()
               if isinstance(v, dict)}
        units = weighted_units(src)
        scores = {scope: err.get(last, 0.0) - max((err.get(i, 0.0) for i in ins), default=0.0)
                  for scope, _, last, ins in units}
        consts = constant_bytes(src)
        sizes = {scope: sum(consts.get(i, 0) for i in set(ins)) for scope, _, _, ins in units}
        ranked = sorted(scores.items(), key=lambda kv: -per_byte(kv[1], sizes[kv[0]]))
        return {scope: members for scope, members, _, _ in units}, ranked, sizes
    return rank


def constant_bytes(path: str | Path) -> dict[str, int]:
    """{tensor name: bytes as float32} of the main graph's constant tensors (those with buffer data)."""
    from edgeai.runtime.tflite_inspect import _schema

    model = _schema().Model.GetRootAs(Path(path).read_bytes(), 0)
    sub = model.Subgraphs(0)
    out = {}
    for i in range(sub.TensorsLength()):
        t = sub.Tensors(i)
        if 0 < t.Buffer() < model.BuffersLength() and model.Buffers(t.Buffer()).DataLength():
            out[t.Name().decode()] = 4 * int(np.prod(t.ShapeAsNumpy(), dtype=np.int64)) if t.ShapeLength() else 4
    return out


def quantize_tflite_with_fallback(step_name: str, src: str | Path, dst: str | Path, config: Any, ctx: StepContext,
                                  evaluate: Callable[[Path], float], max_drop: float | None = None, *,
                                  min_metric: float | None = None, budget: str = "", samples: Any = None,
                                  max_evals: int = 8, budget_samples: int | None = None
                                  ) -> tuple[StepReport, FallbackReport]:
    """Run a TFLite INT8 step ("tflite:int8-dynamic" / "tflite:int8-static") with the fallback; write dst.

    Like the ONNX fallback: the FP32 .tflite is the baseline, ops are ranked by the error they add
    per float byte of their weights (compared tensor by tensor in LiteRT on a few samples), and the best buys are kept in
    float32 by a per-op recipe until the metric meets the budget. Static INT8 calibrates once.
    """
    from edgeai.runtime.tflite_inspect import inspect_tflite
    from edgeai.steps.quantize_tflite import _calibration_batches

    if (max_drop is None) == (min_metric is None):
        raise ValueError("give exactly one of max_drop and min_metric")
    step = get_artifact_step(step_name)
    src, dst = Path(src), Path(dst)
    sample_ctx = replace(ctx, calibration=samples if samples is not None else
                         (ctx.calibration if ctx.calibration is not None else ctx.eval_data))
    if sample_ctx.calibration is None:
        raise DataError(f"accuracy fallback for {step_name} needs sample inputs: give calibration or evaluation data")
    from edgeai.data import split_labels
    sample_ctx = replace(sample_ctx, calibration=split_labels(sample_ctx.calibration)[0])
    batches, _ = _calibration_batches(inspect_tflite(src), sample_ctx, SENSITIVITY_SAMPLES)
    reports: dict[str, StepReport] = {}
    with g.work_dir() as work:
        baseline = float(evaluate(src))
        target = baseline - max_drop if max_drop is not None else float(min_metric)
        try_ctx = replace(ctx, extra={**ctx.extra, "tflite_calibration": {}})

        def quantize(excluded: tuple[str, ...]) -> Path:
            path = work / f"try{len(reports)}.tflite"
            reports[str(path)] = step.fn(src, path, replace(config, exclude_ops=tuple(config.exclude_ops) + excluded),
                                         try_ctx)
            return path

        fb = fallback_until_within(quantize, evaluate, baseline, target, tflite_ranker(src, batches), max_evals,
                                   budget=budget or (f"drop <= {max_drop:g}" if max_drop is not None
                                                     else f"metric >= {min_metric:g}"), samples=budget_samples,
                                   deadline=ctx.extra.get("deadline"))
        chosen = fb.chosen_try
        atomic_write_bytes(dst, Path(chosen.path).read_bytes())
    report = reports[chosen.path]
    report.config = config_to_dict(replace(config, exclude_ops=tuple(config.exclude_ops) + chosen.excluded))
    report.notes = report.notes + fb.notes()
    report.details["fallback"] = fb.to_dict()
    return report, fb
