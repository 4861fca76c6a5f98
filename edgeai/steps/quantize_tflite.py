"""TFLite quantization with ai-edge-quantizer: FP16 weights, dynamic-range INT8, full INT8 (calibrated).

Each step reads a float .tflite and writes a new one (the source is never touched). Full INT8 keeps
float32 model inputs and outputs (QUANTIZE/DEQUANTIZE at the edges) so feeds and the PyTorch
reference compare directly.
"""
from __future__ import annotations

import contextlib
import io
import logging
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Iterator

from edgeai.errors import DataError, ExportError, MissingDependencyError
from edgeai.extras import install_command
from edgeai.steps import ARTIFACT_STEPS, ArtifactStep, StepContext, StepReport, config_to_dict

log = logging.getLogger(__name__)



@dataclass(frozen=True)
class TFLiteFP16Config:
    """Weights stored as float16 and dequantized to float32 at load; compute stays float32."""


@dataclass(frozen=True)
class TFLiteInt8DynamicConfig:
    """INT8 weights (per output channel); activations quantized on the fly by the kernels."""

    min_weight_elements: int = 0   # leave smaller weight tensors in float32 (1024 = TFLite's legacy rule)
    exclude_ops: tuple[str, ...] = ()  # ops kept in float32, by scope: their output tensor names, each + ';'

    def __post_init__(self):
        object.__setattr__(self, "exclude_ops", tuple(self.exclude_ops))


@dataclass(frozen=True)
class TFLiteInt8FullConfig:
    """INT8 weights and activations with ranges from calibration data; float32 model I/O."""

    needs_calibration: ClassVar[bool] = True  # the recipe is refused up front without calibration data

    max_samples: int = 256         # calibration samples used (from ctx.calibration, axis 0)
    exclude_ops: tuple[str, ...] = ()  # ops kept in float32, by scope: their output tensor names, each + ';'

    def __post_init__(self):
        object.__setattr__(self, "exclude_ops", tuple(self.exclude_ops))


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """ai-edge-quantizer draws tqdm bars on stderr for bigger models; keep its stderr for the debug log."""
    if log.isEnabledFor(logging.DEBUG):
        yield
        return
    buf = io.StringIO()
    try:
        with contextlib.redirect_stderr(buf), warnings.catch_warnings():
            # the calibrator keeps all tensors on purpose; LiteRT warns about that debug option
            warnings.filterwarnings("ignore", message=r".*experimental_preserve_all_tensors.*")
            yield
    finally:
        text = "\n".join(ln for ln in buf.getvalue().replace("\r", "\n").splitlines() if ln.strip() and "it/s]" not in ln)
        if text:
            log.debug("ai-edge-quantizer said:\n%s", text)


def _aeq():
    try:
        from ai_edge_quantizer import qtyping, quantizer, recipe
        from ai_edge_quantizer.algorithm_manager import AlgorithmName
    except ImportError:
        raise MissingDependencyError(f"TFLite quantization needs ai-edge-quantizer; run: {install_command('tflite')}") from None
    return quantizer, recipe, qtyping, AlgorithmName


def _check_src(src: Path) -> dict:
    from edgeai.runtime.tflite_inspect import inspect_tflite

    info = inspect_tflite(src)
    quantized = {k for k in info["constant_bytes_by_dtype"] if k in ("int8", "uint8", "int4", "float16", "int16")}
    if quantized:
        raise ExportError(f"{str(src)!r} already holds {', '.join(sorted(quantized))} weights; quantize the "
                          "float32 export, not an already quantized model")
    return info


def _calibration_batches(info: dict, ctx: StepContext, max_samples: int) -> tuple[list[dict], list[str]]:
    """Signature feeds for the calibrator, cut from ctx.calibration into the model's input shapes.

    ctx.calibration holds samples on axis 0 in the TORCH layout; a rank-4 input that the .tflite
    takes channels-last (ctx.extra["channels_last_inputs"], or inferred from the graph) is moved
    NCHW -> NHWC.
    """
    import numpy as np

    from edgeai.specs import check_finite

    if not ctx.calibration:
        raise DataError("tflite:int8-static needs calibration data (ctx.calibration: input name -> samples on "
                        "axis 0); pass a representative .npz, e.g. --calibration calib.npz")
    notes: list[str] = []
    check_finite(ctx.calibration, "calibration data")
    told = ctx.extra.get("channels_last_inputs")  # from the export's details, when the pipeline passes it
    inferred = {n for n, lay in info["input_layouts"].items() if lay == "NHWC"}
    arrays, batch = {}, None
    for inp in info["inputs"]:
        name, shape = inp["name"], inp["shape"]
        if name not in ctx.calibration:
            raise DataError(f"calibration data has no array for input {name!r} (has: {', '.join(ctx.calibration)})")
        arr = np.asarray(ctx.calibration[name])
        if arr.ndim == 4 and _needs_nhwc(name, arr, shape, told, inferred):
            arr = arr.transpose(0, 2, 3, 1)  # NCHW -> NHWC, the layout of the channels-last model
            notes.append(f"calibration input {name!r} moved NCHW -> NHWC for the channels-last model")
        if arr.ndim != len(shape) or any(s >= 0 and s != a for s, a in zip(inp["shape_signature"][1:], arr.shape[1:])):
            raise DataError(f"calibration input {name!r} has samples of shape {tuple(arr.shape[1:])}, the "
                            f"model takes {tuple(shape[1:])} (batch first)")
        b = shape[0] if inp["shape_signature"][0] >= 0 else 1
        batch = b if batch is None else batch
        arrays[name] = arr.astype(inp["dtype"], copy=False)
    n = min(len(a) for a in arrays.values())
    n = min(n, max_samples) // batch * batch
    if n == 0:
        raise DataError(f"calibration data is empty or smaller than the model's fixed batch ({batch})")
    feeds = [{k: np.ascontiguousarray(a[i:i + batch]) for k, a in arrays.items()} for i in range(0, n, batch)]
    notes.append(f"calibrated on {n} samples")
    return feeds, notes


def _needs_nhwc(name: str, arr, shape: list[int], told, inferred: set[str]) -> bool:
    """Whether NCHW calibration samples must be moved channels-last for this model input."""
    if told is not None:  # the export said which inputs are channels-last
        return name in told
    if tuple(arr.shape[1:]) == tuple(shape[1:]):
        return False
    return name in inferred or (*arr.shape[2:], arr.shape[1]) == tuple(shape[1:])


def _run(src: Path, dst: Path, step: str, config: Any, ctx: StepContext) -> StepReport:
    from edgeai.fsutil import atomic_write_bytes
    from edgeai.runtime.tflite_inspect import inspect_tflite

    quantizer, recipe, qtyping, AlgorithmName = _aeq()
    src, dst = Path(src), Path(dst)
    before = _check_src(src)
    notes: list[str] = []
    qt = quantizer.Quantizer(str(src))
    calibration = None
    with _quiet():
        try:
            if step == "tflite:fp16":
                qt.add_weight_only_config(regex=".*", operation_name=qtyping.TFLOperationName.ALL_SUPPORTED,
                                          num_bits=16, algorithm_key=AlgorithmName.FLOAT_CASTING)
            elif step == "tflite:int8-dynamic":
                rules = recipe.dynamic_wi8_afp32()
                for rule in rules:
                    rule["op_config"]["min_weight_elements"] = config.min_weight_elements
                qt.load_quantization_recipe(rules)
            else:
                qt.load_quantization_recipe(recipe.static_wi8_ai8())
                for op in (qtyping.TFLOperationName.INPUT, qtyping.TFLOperationName.OUTPUT):
                    qt.update_quantization_recipe(".*", op, None, AlgorithmName.NO_QUANTIZE)  # float32 I/O
            for name in getattr(config, "exclude_ops", ()):  # per-op recipe: this op stays float32
                qt.update_quantization_recipe(f"^{re.escape(name)}$", qtyping.TFLOperationName.ALL_SUPPORTED, None,
                                              AlgorithmName.NO_QUANTIZE)
            if step == "tflite:int8-static":
                feeds, calib_notes = _calibration_batches(before, ctx, config.max_samples)
                notes += calib_notes
                # the fallback's tries share one calibration (a dict in ctx.extra): ranges do not
                # depend on which ops stay float
                cache = ctx.extra.get("tflite_calibration")
                if cache is not None and "ranges" in cache:
                    calibration = cache["ranges"]
                else:
                    log.info("tflite:int8-static: calibrating ranges on %d batch(es)", len(feeds))
                    calibration = qt.calibrate({"serving_default": feeds}, num_threads=1)
                    if cache is not None:
                        cache["ranges"] = calibration
            result = qt.quantize(calibration, enable_progress_bar=False, enable_progress_report=False)
        except (DataError, ExportError):
            raise
        except Exception as e:
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
            raise ExportError(f"ai-edge-quantizer could not apply {step} to {str(src)!r}: "
                              f"{type(e).__name__}: {first}") from None
    atomic_write_bytes(dst, bytes(result.quantized_model))
    after = inspect_tflite(dst)
    if getattr(config, "exclude_ops", ()):
        notes.append(f"kept in float32 (exclude_ops): {', '.join(config.exclude_ops[:5])}"
                     + (f" and {len(config.exclude_ops) - 5} more" if len(config.exclude_ops) > 5 else ""))
    report = _report(step, config, before, after, notes)
    if step != "tflite:fp16":  # 0 when every op stayed float (the budget's check refuses such a variant)
        from edgeai.steps.quant_fallback_tflite import int8_op_count
        report.details["quantized_nodes"] = int8_op_count(dst)
    return report


def _report(step: str, config: Any, before: dict, after: dict, notes: list[str]) -> StepReport:
    size0, size1 = before["size_bytes"], after["size_bytes"]
    if size1 >= size0:
        notes.append(f"the file got larger ({size0 / 1e6:.3f} -> {size1 / 1e6:.3f} MB): the ops ai-edge-quantizer "
                     "skips keep float32 weights and it adds scales, QUANTIZE/DEQUANTIZE ops and int32 biases")
    weights = after["constant_bytes_by_dtype"]
    float_bytes = weights.get("float32", 0)
    total = sum(v for k, v in weights.items() if k != "int32") or 1
    if float_bytes / total > 0.25:
        notes.append(f"{100 * float_bytes / total:.0f}% of the weight bytes stay float32 "
                     "(ops ai-edge-quantizer does not quantize, or tensors below min_weight_elements)")
    if after["fused_rnn_ops"]:
        notes.append("ai-edge-quantizer leaves the fused LSTM op (UNIDIRECTIONAL_SEQUENCE_LSTM) and its weights "
                     "in float32; only the ops around it were converted")
    hist0, hist1 = before["op_histogram"], after["op_histogram"]
    details = {
        "size_bytes_before": size0, "size_bytes_after": size1, "size_ratio": round(size1 / size0, 4),
        "weight_bytes_by_dtype": weights,
        "op_count_before": before["op_count"], "op_count_after": after["op_count"],
        # the same facts the exporter records for FP32, so every variant's manifest entry has them
        "op_count": after["op_count"], "op_histogram": hist1, "transpose_count": after["transpose_count"],
        "ops_added": {k: hist1[k] - hist0.get(k, 0) for k in hist1 if hist1[k] > hist0.get(k, 0)},
        "io_dtypes": {d["name"]: d["dtype"] for d in after["inputs"] + after["outputs"]},
    }
    return StepReport(step=step, config=config_to_dict(config), notes=notes, details=details)


def fp16(src: Path, dst: Path, config: TFLiteFP16Config, ctx: StepContext) -> StepReport:
    return _run(src, dst, "tflite:fp16", config, ctx)


def int8_dynamic(src: Path, dst: Path, config: TFLiteInt8DynamicConfig, ctx: StepContext) -> StepReport:
    return _run(src, dst, "tflite:int8-dynamic", config, ctx)


def int8_static(src: Path, dst: Path, config: TFLiteInt8FullConfig, ctx: StepContext) -> StepReport:
    """Calibrated full-integer INT8 (the scheme ONNX calls int8-static too; `int8-full` is an alias)."""
    return _run(src, dst, "tflite:int8-static", config, ctx)


ARTIFACT_STEPS.add("tflite:fp16", ArtifactStep(TFLiteFP16Config, fp16, precision="fp16"))
ARTIFACT_STEPS.add("tflite:int8-dynamic", ArtifactStep(TFLiteInt8DynamicConfig, int8_dynamic, precision="int8"))
ARTIFACT_STEPS.add("tflite:int8-static", ArtifactStep(TFLiteInt8FullConfig, int8_static, precision="int8"))
