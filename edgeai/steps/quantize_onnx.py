"""ONNX artifact steps with onnxruntime's tools: FP16, dynamic INT8 and static (calibrated) INT8."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from edgeai import hw
from edgeai.data import load_feeds, num_samples, split_labels, take
from edgeai.errors import DataError, UnknownNameError
from edgeai.steps import ARTIFACT_STEPS, ArtifactStep, StepContext, StepReport, config_to_dict
from edgeai.steps import _onnx_graph as g
from edgeai.steps._onnx_calibrate import calibrate

log = logging.getLogger(__name__)

CALIBRATION_METHODS = {"minmax": "MinMax", "entropy": "Entropy", "percentile": "Percentile"}
QUANT_TYPES = {"qint8": "QInt8", "quint8": "QUInt8"}
FORMATS = {"qdq": "QDQ", "qoperator": "QOperator"}
CALIBRATION_BATCH = 32  # samples per calibration run when the model's batch dim is dynamic

# Why a weighted op can be left in float, per scheme; shown in the StepReport notes.
_STATIC_CANNOT = {
    "LSTM": "static QDQ cannot quantize LSTM; use int8-dynamic",
    "GRU": "static QDQ cannot quantize GRU and onnxruntime has no INT8 GRU kernel",
    "RNN": "static QDQ cannot quantize RNN",
}
_DYNAMIC_CANNOT = {
    "GRU": "onnxruntime's dynamic quantization has no GRU kernel",
    "RNN": "onnxruntime's dynamic quantization has no RNN kernel",
    "ConvTranspose": "onnxruntime's dynamic quantization has no ConvTranspose kernel",
}


def _tupled(cfg: Any, *names: str) -> None:
    """Frozen configs hold tuples, even when a recipe (YAML/JSON) gave lists."""
    for name in names:
        value = getattr(cfg, name)
        if value is not None and not isinstance(value, tuple):
            object.__setattr__(cfg, name, tuple(value))


def _choice(what: str, value: str, known: dict) -> None:
    if value not in known:
        raise UnknownNameError(f"no {what} named {value!r}; known: {', '.join(known)}")


@dataclass(frozen=True)
class Fp16Config:
    """Weights and compute in float16 (onnxruntime.transformers.float16): half the size, rarely faster on CPU."""

    keep_io_types: bool = True            # inputs/outputs stay float32 (Casts at the edges)
    op_block_list: tuple[str, ...] = ()   # op types kept in float32, on top of onnxruntime's defaults
    node_block_list: tuple[str, ...] = ()  # node names kept in float32

    def __post_init__(self):
        _tupled(self, "op_block_list", "node_block_list")


@dataclass(frozen=True)
class Int8DynamicConfig:
    """INT8 weights, activations quantized at run time; no calibration data needed."""

    # Conv is left out on purpose: ConvInteger is far slower than float Conv on CPU. Gather is
    # quantized only where it reads a weight table (an embedding): 4x smaller tables, same speed.
    op_types: tuple[str, ...] = ("MatMul", "Gemm", "LSTM", "GRU", "Attention", "Gather")
    # per output channel: a few outlier weights then cost only their own channel's precision
    # (BERT-shaped encoder, benchmarks/quantization.py: cosine to FP32 0.98 per-tensor, 0.999 per-channel)
    per_channel: bool = True
    reduce_range: bool | None = None      # None: edgeai.hw.default_reduce_range() for this CPU
    exclude_nodes: tuple[str, ...] = ()   # node names kept in float32
    weight_type: str = "qint8"
    preprocess: bool = True               # run onnxruntime's quant_pre_process first

    def __post_init__(self):
        _tupled(self, "op_types", "exclude_nodes")
        _choice("weight type", self.weight_type, QUANT_TYPES)


@dataclass(frozen=True)
class Int8StaticConfig:
    """INT8 weights and activations with ranges calibrated on sample inputs (ctx.calibration)."""

    needs_calibration: ClassVar[bool] = True  # the recipe is refused up front without calibration data

    method: str = "minmax"                # minmax | entropy | percentile
    per_channel: bool = True
    reduce_range: bool | None = None      # None: edgeai.hw.default_reduce_range() for this CPU
    op_types: tuple[str, ...] | None = None  # None: every op onnxruntime can quantize statically
    exclude_nodes: tuple[str, ...] = ()
    format: str = "qdq"                   # qdq | qoperator
    activation_type: str = "quint8"
    weight_type: str = "qint8"
    max_samples: int = 256                # calibration uses at most this many samples
    min_samples: int = 8                  # fewer is a DataError
    preprocess: bool = True

    def __post_init__(self):
        _tupled(self, "op_types", "exclude_nodes")
        _choice("calibration method", self.method, CALIBRATION_METHODS)
        _choice("quantization format", self.format, FORMATS)
        _choice("activation type", self.activation_type, QUANT_TYPES)
        _choice("weight type", self.weight_type, QUANT_TYPES)
        if not 1 <= self.min_samples <= self.max_samples:
            raise DataError(f"calibration needs 1 <= min_samples <= max_samples, got "
                            f"min_samples={self.min_samples}, max_samples={self.max_samples}")


def resolve_reduce_range(value: bool | None) -> tuple[bool, str]:
    """(reduce_range to use, why): the config's value, else what this CPU needs."""
    if value is not None:
        return bool(value), f"reduce_range={bool(value)} set in the config"
    info = hw.cpu_info()
    chosen = hw.default_reduce_range()
    if chosen:
        why = (f"reduce_range=True (default for this CPU, {info['model']}): x86 without VNNI, where "
               "onnxruntime's U8S8 kernels can saturate; 7-bit weights avoid it")
    elif hw.has_int8_dot_product():
        dot = sorted(set(info["flags"]) & {"avx512_vnni", "avx_vnni", "amx_int8", "asimddp", "i8mm"})
        why = (f"reduce_range=False (default for this CPU, {info['model']}): it has INT8 dot-product "
               f"instructions ({', '.join(dot)}); quantize with reduce_range=True for x86 targets without VNNI")
    else:
        why = f"reduce_range=False (default for this CPU, {info['model']}, {info['machine']}): not x86"
    return chosen, why


def cpu_record() -> dict:
    """The CPU facts that decided reduce_range and INT8 speed, for the manifest."""
    info = hw.cpu_info()
    return {"model": info["model"], "machine": info["machine"], "flags": info["flags"]}


def preprocess(src: str | Path, dst: str | Path) -> tuple[str, list[str]]:
    """onnxruntime's quant_pre_process (shape inference, basic graph optimizations) from src to dst.

    Symbolic shape inference fails on some exported graphs (e.g. Reshape of a computed
    shape); then it is retried without it. If that fails too, dst is a plain copy of src.
    Returns (what ran: "full" | "no-symbolic-shape" | "none", notes for the StepReport).
    """
    from onnxruntime.quantization import quant_pre_process
    src, dst = Path(src).resolve(), Path(dst).resolve()  # before the chdir below: paths may be relative
    external = g.stores_external_data(src)
    errors = []
    for skip_symbolic in (False, True):
        try:
            # a failing symbolic shape inference dumps its model (and weights) into the working folder
            with g.work_dir() as scratch, g.working_folder(scratch):
                quant_pre_process(str(src), str(dst), skip_symbolic_shape=skip_symbolic,
                                  save_as_external_data=external, all_tensors_to_one_file=True,
                                  external_data_location=f"{dst.name}.data")
            g.load_model(dst, with_weights=False)
        except Exception as e:  # the shape inferences and the optimizer fail on some exotic graphs
            first = (str(e).strip().splitlines() or [""])[0][:200]
            errors.append(f"{type(e).__name__}: {first}" if first else type(e).__name__)
            log.info("quant_pre_process (skip_symbolic_shape=%s) failed on %s: %s",
                     skip_symbolic, src, errors[-1])
            continue
        if not skip_symbolic:
            return "full", []
        return "no-symbolic-shape", [f"pre-processing ran without symbolic shape inference, which failed "
                                     f"({errors[0]})"]
    log.warning("quant_pre_process failed on %s: %s", src, errors[-1])
    g.save_model(g.load_model(src), dst, external=external)
    return "none", [f"onnxruntime's quantization pre-processing failed ({errors[-1]}); "
                    "quantized the model as exported"]


def _prepare(src: Path, work: Path, enabled: bool) -> tuple[Path, list[str], str]:
    """(model to quantize, notes, which pre-processing ran).

    Shapes recorded for initializers (value_info) are dropped: onnxruntime's quantizer rewrites
    some weights under the same name (a Gemm's transposed B), and onnx shape inference then
    fails on the stale shape ("Inferred shape and existing shape differ").
    """
    ran, notes = "none", []
    if enabled:
        pre = work / "preprocessed.onnx"
        ran, notes = preprocess(src, pre)
        src = pre
    header = g.load_model(src, with_weights=False)
    inits = {t.name for t in header.graph.initializer}
    if any(vi.name in inits for vi in header.graph.value_info):
        model = g.load_model(src)
        kept = [vi for vi in model.graph.value_info if vi.name not in inits]
        del model.graph.value_info[:]
        model.graph.value_info.extend(kept)
        src = work / "prepared.onnx"
        g.save_model(model, src, external=g.uses_external_data(header) or None)
    return src, notes, ran


def _origin(name: str, present: set[str]) -> str:
    """The input model's node name for a node onnxruntime renamed (Gemm -> `<name>_MatMul`)."""
    base = name.removesuffix("_MatMul")
    return base if name not in present and base in present else name


def _describe(report: StepReport, src: Path, quantized_from: Path, after: Path, scheme: str,
              op_types: tuple[str, ...] | None, exclude: tuple[str, ...]) -> None:
    """Fill `report` with what was and was not quantized, and notes for parts left in float.

    Op and weight counts compare `src` with `after`; node names are those of `quantized_from`
    (src after pre-processing), the names exclude_nodes refers to.
    """
    report.details.update({**g.stats(src, "before"), **g.stats(after, "after")})
    m1 = g.load_model(after, with_weights=False)
    w1 = report.details["weights_after"]
    present = {n.name for n in g.load_model(quantized_from, with_weights=False).graph.node}
    left = {op: [_origin(n, present) for n in names] for op, names in g.float_weighted_nodes(m1).items()}
    report.details.update({"quantized_nodes": g.quantized_node_count(m1), "left_in_fp32": left})
    missing = [n for n in exclude if n not in present]
    if missing:
        report.notes.append(f"exclude_nodes not found in the model (ignored): {g.short_list(missing)}")
    excluded = [n for names in left.values() for n in names if n in exclude]
    if excluded:
        report.notes.append(f"kept in FP32 as asked (exclude_nodes): {g.short_list(excluded)}")
    for op, names in left.items():
        names = [n for n in names if n not in exclude]
        if not names:
            continue
        if scheme == "static":
            why = _STATIC_CANNOT.get(op) or ("not in op_types" if op_types and op not in op_types
                                             else "onnxruntime did not quantize it")
        else:
            why = _DYNAMIC_CANNOT.get(op) or (
                "not in op_types (dynamic ConvInteger is slow on CPU; add 'Conv' to op_types: --quantize-option "
                "int8-dynamic.op_types=MatMul,Gemm,LSTM,GRU,Attention,Gather,Conv; or use "
                "int8-static)" if op == "Conv" and op not in (op_types or ()) else
                "not in op_types" if op_types and op not in op_types else "onnxruntime did not quantize it")
        report.notes.append(f"{op} node(s) {g.short_list(names)} left in FP32: {why}")
    if report.details["quantized_nodes"] == 0:
        report.notes.append("no node was quantized: this artifact computes in FP32 like its input")
    b0, b1 = report.details["weight_bytes_before"], report.details["weight_bytes_after"]
    int8 = sum(w1.get(t, {}).get("bytes", 0) for t in ("int8", "uint8"))
    if b1 and not int8:
        report.notes.append(f"no weights stored in 8 bits ({b0} -> {b1} bytes)")
    elif b1 and int8 < 0.5 * b1:
        share = 100 * int8 / b1
        report.notes.append(f"{'under 1' if share < 1 else f'{share:.0f}'}% of weight bytes are stored in 8 bits "
                            f"({b0} -> {b1} bytes)")


def fp16(src: Path, dst: Path, config: Fp16Config, ctx: StepContext) -> StepReport:
    """Convert float32 weights and compute to float16; blocked ops and the I/O (by default) stay float32."""
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16
    src, dst = Path(src), Path(dst)
    report = StepReport("onnx:fp16", config_to_dict(config))
    external = g.stores_external_data(src)
    model = g.load_model(src)
    block = sorted(set(DEFAULT_OP_BLOCK_LIST) | set(config.op_block_list))
    half = convert_float_to_float16(model, keep_io_types=config.keep_io_types, op_block_list=block,
                                    node_block_list=list(config.node_block_list))
    g.topological_sort(half)  # the converter appends its Casts at the end; onnx.checker wants order
    with g.staged_output(dst, src) as out:
        extra = g.save_model(half, out, external=external or None)
        report.details.update({**g.stats(src, "before"), **g.stats(out, "after"), "extra_files": extra})
        m1 = g.load_model(out, with_weights=False)
    kept32 = sorted(t.name for t in m1.graph.initializer if t.data_type == 1 and len(t.dims) >= 2)
    if kept32:
        report.notes.append(f"{len(kept32)} weight tensor(s) kept in float32 (blocked ops/nodes): "
                            f"{g.short_list(kept32)}")
    return report


def int8_dynamic(src: Path, dst: Path, config: Int8DynamicConfig, ctx: StepContext) -> StepReport:
    """INT8 weights for config.op_types, activations quantized per batch at run time."""
    from onnxruntime.quantization import QuantType, quantize_dynamic
    src, dst = Path(src), Path(dst)
    report = StepReport("onnx:int8-dynamic", config_to_dict(config))
    reduce_range, why = resolve_reduce_range(config.reduce_range)
    with g.work_dir() as work, g.staged_output(dst, src) as out:
        model_in, notes, pre = _prepare(src, work, config.preprocess)
        model = g.load_model(model_in, with_weights=False)
        with g.quantizer_warnings() as warned:
            quantize_dynamic(str(model_in), str(out), op_types_to_quantize=list(config.op_types),
                             per_channel=config.per_channel, reduce_range=reduce_range,
                             weight_type=getattr(QuantType, QUANT_TYPES[config.weight_type]),
                             nodes_to_exclude=_dynamic_exclude(model, config.exclude_nodes),
                             use_external_data_format=g.needs_external_data(model))
        report.notes.extend(notes + g.warning_note(warned))
        _describe(report, src, model_in, out, "dynamic", config.op_types, config.exclude_nodes)
        report.details.update({"preprocessed": pre, "reduce_range": reduce_range, "reduce_range_reason": why,
                               "cpu": cpu_record(),
                               "extra_files": [f.name for f in g.files_of(out)[1:]]})
    return report


def _dynamic_exclude(model, exclude: tuple[str, ...]) -> list[str]:
    """Exclusion names as onnxruntime checks them in dynamic mode.

    onnxruntime 1.31 rewrites Gemm as `<name>_MatMul` + `<name>_Add` before it looks at
    nodes_to_exclude, so an excluded Gemm would be quantized anyway; name its MatMul too.
    """
    gemms = {n.name for n in model.graph.node if n.op_type == "Gemm"}
    return list(exclude) + [f"{n}_MatMul" for n in exclude if n in gemms]


def _keep_fp32_nodes_fp32(path: Path, source: Path) -> list[str]:
    """Rewrite `path` so its float Conv/Gemm nodes stay float in onnxruntime; returns notes."""
    external = g.stores_external_data(path)
    model = g.load_model(path)
    rewired, stuck = g.feed_float_nodes_float(model, g.load_model(source, with_weights=False))
    if rewired:
        g.save_model(model, path, external=external or None)
        log.debug("float inputs rewired for %s", rewired)
    if stuck:
        return [f"node(s) {g.short_list(stuck)} have float weights but read quantized activations; "
                "onnxruntime will quantize their weights (per-tensor INT8) when it loads the model"]
    return []


def calibration_feeds(ctx: StepContext, model_path: Path, config: Int8StaticConfig) -> tuple[dict, list[str]]:
    """Checked calibration inputs for the model at `model_path` (labels dropped, capped at max_samples)."""
    if ctx.calibration is None:
        raise DataError("int8-static needs calibration data: pass an .npz (or .npy folder) of typical inputs, "
                        f"at least {config.min_samples} samples stacked on axis 0")
    specs = g.input_specs(g.load_model(model_path, with_weights=False))
    feeds, _ = split_labels(load_feeds(ctx.calibration, specs, what="calibration data",
                                       min_samples=config.min_samples))
    notes = []
    n = num_samples(feeds)
    if n > config.max_samples:
        notes.append(f"calibrated on the first {config.max_samples} of {n} samples (max_samples)")
        feeds = take(feeds, config.max_samples)
    return feeds, notes


def int8_static(src: Path, dst: Path, config: Int8StaticConfig, ctx: StepContext) -> StepReport:
    """INT8 weights and activations; activation ranges from ctx.calibration.

    Ranges are calibrated once into ctx.extra["calibration_cache"] when that names a file (the
    fallback's tries reuse it). Tensors whose calibrated range is non-finite or beyond
    EXTREME_RANGE (an additive attention mask of -3.4e38) are not quantized: their producers and
    consumers stay in float.
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    src, dst = Path(src), Path(dst)
    report = StepReport("onnx:int8-static", config_to_dict(config))
    reduce_range, why = resolve_reduce_range(config.reduce_range)
    method = getattr(CalibrationMethod, CALIBRATION_METHODS[config.method])
    with g.work_dir() as work, g.staged_output(dst, src) as out:
        model_in, notes, pre = _prepare(src, work, config.preprocess)
        feeds, cal_notes = calibration_feeds(ctx, model_in, config)
        model = g.load_model(model_in, with_weights=False)
        batch = g.fixed_batch(g.input_specs(model)) or CALIBRATION_BATCH
        cache = Path(ctx.extra.get("calibration_cache") or work / "calibration.json")
        with g.quantizer_warnings() as warned:
            if not cache.is_file():
                calibrate(model_in, feeds, batch, config, method, cache, work)
            float_nodes, extreme = g.extreme_range_nodes(model, cache, EXTREME_RANGE)
            exclude = list(config.exclude_nodes) + [n for n in float_nodes if n not in config.exclude_nodes]
            quantize_static(
                str(model_in), str(out), None, quant_format=getattr(QuantFormat, FORMATS[config.format]),
                op_types_to_quantize=list(config.op_types) if config.op_types else None,
                per_channel=config.per_channel, reduce_range=reduce_range,
                activation_type=getattr(QuantType, QUANT_TYPES[config.activation_type]),
                weight_type=getattr(QuantType, QUANT_TYPES[config.weight_type]),
                nodes_to_exclude=exclude, use_external_data_format=g.needs_external_data(model),
                calibrate_method=method, calibration_cache_path=str(cache),
                # explicit Relu/Clip, so a node kept in FP32 can read the activation in float
                extra_options={"QDQKeepRemovableActivations": bool(exclude or config.op_types)})
        if extreme:
            notes.append(f"{len(extreme)} tensor(s) with a non-finite or extreme calibrated range (e.g. an "
                         f"additive attention mask) stay in float with the {len(float_nodes)} node(s) around "
                         f"them: {g.short_list(extreme)}")
        report.notes.extend(notes + cal_notes + _keep_fp32_nodes_fp32(out, model_in) + g.warning_note(warned))
        _describe(report, src, model_in, out, "static", config.op_types, tuple(exclude))
        report.details.update({"preprocessed": pre, "reduce_range": reduce_range, "reduce_range_reason": why,
                               "cpu": cpu_record(), "float_range_nodes": float_nodes,
                               "calibration_samples": num_samples(feeds), "calibration_batch": batch,
                               "extra_files": [f.name for f in g.files_of(out)[1:]]})
    return report


# A calibrated range beyond this (in absolute value) is a mask or a fill, not an activation.
EXTREME_RANGE = 1e6


ARTIFACT_STEPS.add("onnx:fp16", ArtifactStep(Fp16Config, fp16, precision="fp16"))
ARTIFACT_STEPS.add("onnx:int8-dynamic", ArtifactStep(Int8DynamicConfig, int8_dynamic, precision="int8"))
ARTIFACT_STEPS.add("onnx:int8-static", ArtifactStep(Int8StaticConfig, int8_static, precision="int8"))
