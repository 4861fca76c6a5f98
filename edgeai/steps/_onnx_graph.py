"""Helpers for the ONNX artifact steps: load/save with external data, staged output, op and weight counts."""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections import Counter
from pathlib import Path
from typing import Iterator

from edgeai.errors import ModelLoadError, OutputError
from edgeai.fsutil import ensure_writable_dir
from edgeai.specs import TensorSpec

# Ops whose weights are what quantization shrinks; a node of these ops reading a float
# initializer of rank >= 2 directly (not through DequantizeLinear) computes in float.
WEIGHTED_OPS = frozenset({"Conv", "ConvTranspose", "MatMul", "Gemm", "LSTM", "GRU", "RNN",
                          "Attention", "MultiHeadAttention"})
# ORT's integer/dynamic kernels: a node of these ops is quantized whatever feeds it.
INTEGER_OPS = frozenset({"MatMulInteger", "ConvInteger", "DynamicQuantizeMatMul", "MatMulIntegerToFloat",
                         "DynamicQuantizeLSTM", "QAttention", "QLinearConv", "QLinearMatMul", "QGemm",
                         "QEmbedLayerNormalization"})
QDQ_OPS = frozenset({"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"})
# Above this many weight bytes a model is written with its weights in an external .data file.
EXTERNAL_DATA_BYTES = 1_500_000_000

_ELEM_DTYPES = {1: "float32", 10: "float16", 11: "float64", 7: "int64", 6: "int32", 3: "int8",
                2: "uint8", 9: "bool", 16: "bfloat16", 5: "int16", 4: "uint16"}
_ITEMSIZE = {"float32": 4, "float16": 2, "float64": 8, "int64": 8, "int32": 4, "int8": 1, "uint8": 1,
             "bool": 1, "bfloat16": 2, "int16": 2, "uint16": 2}


def load_model(path: str | Path, *, with_weights: bool = True):
    """onnx.load with a one-line ModelLoadError; external weights are read from beside `path`."""
    import onnx
    try:
        return onnx.load(str(path), load_external_data=with_weights)
    except Exception as e:
        raise ModelLoadError(f"cannot read ONNX model {str(path)!r}: {type(e).__name__}: {e}") from None


def uses_external_data(model) -> bool:
    """True if any initializer's bytes live in a separate file (of a model loaded without weights)."""
    from onnx import TensorProto
    return any(t.data_location == TensorProto.EXTERNAL for t in model.graph.initializer)


def stores_external_data(path: str | Path) -> bool:
    """True if the model file at `path` keeps weights in separate files."""
    return uses_external_data(load_model(path, with_weights=False))


def needs_external_data(model) -> bool:
    return uses_external_data(model) or weight_bytes(model) > EXTERNAL_DATA_BYTES


def save_model(model, path: str | Path, external: bool | None = None) -> list[str]:
    """Save `model` to `path`; weights go to `<name>.data` beside it if `external` (default: when large).

    Returns the names of the extra files written next to `path`.
    """
    import onnx
    path = Path(path)
    external = needs_external_data(model) if external is None else external
    if external:
        onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=f"{path.name}.data", size_threshold=1024, convert_attribute=False)
        return [f"{path.name}.data"] if (path.parent / f"{path.name}.data").exists() else []
    onnx.save_model(model, str(path))
    return []


def files_of(path: str | Path) -> list[Path]:
    """The model file and the external data files it references (existing ones)."""
    path = Path(path)
    model = load_model(path, with_weights=False)
    extra = set()
    for t in model.graph.initializer:
        for entry in t.external_data:
            if entry.key == "location":
                extra.add(entry.value)
    return [path] + [path.parent / e for e in sorted(extra) if (path.parent / e).exists()]


def size_on_disk(path: str | Path) -> int:
    return sum(f.stat().st_size for f in files_of(path))


@contextlib.contextmanager
def staged_output(dst: str | Path, src: str | Path | None = None) -> Iterator[Path]:
    """Yield a temp path to write the model (and its .data) to; moved onto `dst` only on success.

    Files are renamed into dst's folder one by one, the model file last, so a reader never
    sees a model whose weights are missing. `src` is refused as a destination.
    """
    dst = Path(dst)
    if src is not None and dst.resolve() == Path(src).resolve():
        raise OutputError(f"refusing to overwrite the input model {str(src)!r}; choose another output path")
    folder = ensure_writable_dir(dst.parent)
    tmp = Path(tempfile.mkdtemp(prefix=".edgeai-step-", dir=folder))
    try:
        yield tmp / dst.name
        staged = sorted(tmp.iterdir(), key=lambda p: p.name == dst.name)
        for f in staged:
            os.replace(f, folder / f.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def work_dir() -> Iterator[Path]:
    tmp = Path(tempfile.mkdtemp(prefix="edgeai-work-"))
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def op_histogram(model) -> dict[str, int]:
    """{op type: count} over the main graph, most frequent first."""
    return dict(Counter(n.op_type for n in model.graph.node).most_common())


def _tensor_numel(t) -> int:
    n = 1
    for d in t.dims:
        n *= int(d)
    return n


def weight_stats(model) -> dict[str, dict[str, int]]:
    """{dtype: {"tensors", "elements", "bytes"}} over the initializers (works without loading weights)."""
    stats: dict[str, dict[str, int]] = {}
    for t in model.graph.initializer:
        dtype = _ELEM_DTYPES.get(t.data_type, f"type{t.data_type}")
        numel = _tensor_numel(t)
        s = stats.setdefault(dtype, {"tensors": 0, "elements": 0, "bytes": 0})
        s["tensors"] += 1
        s["elements"] += numel
        s["bytes"] += numel * _ITEMSIZE.get(dtype, 4)
    return dict(sorted(stats.items(), key=lambda kv: -kv[1]["bytes"]))


def weight_bytes(model) -> int:
    return sum(s["bytes"] for s in weight_stats(model).values())


def stats(path: str | Path, when: str) -> dict:
    """{"ops_<when>", "weights_<when>", "weight_bytes_<when>", "size_bytes_<when>"} of the model at `path`."""
    model = load_model(path, with_weights=False)
    return {f"ops_{when}": op_histogram(model), f"weights_{when}": weight_stats(model),
            f"weight_bytes_{when}": weight_bytes(model), f"size_bytes_{when}": size_on_disk(path)}


def float_weighted_nodes(model) -> dict[str, list[str]]:
    """{op type: [node names]} of WEIGHTED_OPS nodes that read float weights directly (compute in float)."""
    floats = {t.name for t in model.graph.initializer
              if _ELEM_DTYPES.get(t.data_type, "").startswith(("float", "bfloat")) and len(t.dims) >= 2}
    left: dict[str, list[str]] = {}
    for node in model.graph.node:
        if node.op_type in WEIGHTED_OPS and any(i in floats for i in node.input):
            left.setdefault(node.op_type, []).append(node.name or node.output[0])
    return left


def quantized_node_count(model) -> int:
    """Nodes running an integer kernel or reading at least one DequantizeLinear output (QDQ)."""
    dq_out = {o for n in model.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    return sum(1 for n in model.graph.node if n.op_type in INTEGER_OPS or (
        n.op_type not in QDQ_OPS and any(i in dq_out for i in n.input)))


def input_specs(model) -> list[TensorSpec]:
    """The graph inputs that are not initializers, as TensorSpecs (unknown dims named)."""
    inits = {t.name for t in model.graph.initializer}
    specs = []
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        tt = vi.type.tensor_type
        shape = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or f"dim{i}")
                      for i, d in enumerate(tt.shape.dim))
        specs.append(TensorSpec(vi.name, shape, _ELEM_DTYPES.get(tt.elem_type, "float32")))
    return specs


def fixed_batch(specs: list[TensorSpec]) -> int | None:
    """The batch size the model is fixed to (first dim an int), or None when it is dynamic."""
    dims = [s.shape[0] for s in specs if s.shape and isinstance(s.shape[0], int)]
    return dims[0] if dims else None


def short_list(names: list[str], limit: int = 5) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


# onnxruntime's WeightBiasQuantization transformer (1.20+, on at every optimization level)
# quantizes, at session load, the float weights of these ops when their input comes from a
# DequantizeLinear: a node left in FP32 in a QDQ model would silently run in INT8.
_LOAD_TIME_QUANTIZED = frozenset({"Conv", "ConvTranspose", "Gemm"})


def feed_float_nodes_float(model, source) -> tuple[list[str], list[str]]:
    """Let FP32 Conv/ConvTranspose/Gemm nodes of a QDQ `model` read the float tensor, not Q -> DQ.

    Rewires input 0 of such a node from a DequantizeLinear back to the QuantizeLinear's input,
    when that tensor holds the same value as in `source` (the unquantized model: same
    producer op type, so no activation was folded into the Q), then drops unused Q/DQ
    pairs. Returns (rewired node names, node names that could not be rewired).
    """
    producer = {o: n for n in model.graph.node for o in n.output}
    src_producer = {o: n.op_type for n in source.graph.node for o in n.output}
    src_inputs = {i.name for i in source.graph.input}
    floats = {t.name for t in model.graph.initializer if t.data_type == 1}
    rewired, stuck = [], []
    for node in model.graph.node:
        if node.op_type not in _LOAD_TIME_QUANTIZED or len(node.input) < 2 or node.input[1] not in floats:
            continue
        dq = producer.get(node.input[0])
        if dq is None or dq.op_type != "DequantizeLinear":
            continue
        q = producer.get(dq.input[0])
        t = q.input[0] if q is not None and q.op_type == "QuantizeLinear" else None
        made_by = producer[t].op_type if t in producer else "input"
        if t is not None and (t in src_inputs or src_producer.get(t) == made_by):
            node.input[0] = t
            rewired.append(node.name)
        else:
            stuck.append(node.name)
    if rewired:
        _drop_unused(model, {"QuantizeLinear", "DequantizeLinear"})
    return rewired, stuck


def _drop_unused(model, op_types: set[str]) -> None:
    """Remove nodes of `op_types` whose outputs nobody reads, until none is left."""
    graph_outputs = {o.name for o in model.graph.output}
    while True:
        used = {i for n in model.graph.node for i in n.input} | graph_outputs
        dead = [n for n in model.graph.node if n.op_type in op_types and not any(o in used for o in n.output)]
        if not dead:
            return
        for n in dead:
            model.graph.node.remove(n)


def topological_sort(model) -> bool:
    """Reorder the main graph's nodes so each comes after the producers of its inputs; True if it moved any.

    onnxruntime's float16 converter appends Cast nodes at the end of the graph, which onnx.checker
    rejects. Names no node produces (graph inputs, initializers, outer scope) count as available.
    """
    nodes = list(model.graph.node)
    producer = {o: i for i, n in enumerate(nodes) for o in n.output if o}
    waiting = [{producer[x] for x in n.input if x in producer and producer[x] != i} for i, n in enumerate(nodes)]
    users: dict[int, list[int]] = {}
    for i, deps in enumerate(waiting):
        for d in deps:
            users.setdefault(d, []).append(i)
    ready = [i for i, deps in enumerate(waiting) if not deps]
    order: list[int] = []
    while ready:
        i = ready.pop(0)
        order.append(i)
        for u in users.get(i, []):
            waiting[u].discard(i)
            if not waiting[u]:
                ready.append(u)
    if len(order) != len(nodes):  # a cycle: leave the graph as it is for the checker to report
        return False
    if order == list(range(len(nodes))):
        return False
    del model.graph.node[:]
    model.graph.node.extend(nodes[i] for i in order)
    return True


@contextlib.contextmanager
def quantizer_warnings() -> Iterator[list[str]]:
    """Collect what onnxruntime's quantizer logs (root logger) or warns, instead of printing it."""
    import logging
    import warnings

    caught: list[str] = []

    def grab(record) -> bool:
        if record.levelno >= logging.WARNING:
            caught.append(record.getMessage())
        return False

    root = logging.getLogger()
    root.addFilter(grab)
    try:
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            yield caught
        caught.extend(str(x.message) for x in w)
    finally:
        root.removeFilter(grab)


# onnxruntime's advice to pre-process; edgeai pre-processes unless told not to
_KNOWN_ADVICE = ("Please consider to run pre-processing before quantization",)


def warning_note(messages: list[str]) -> list[str]:
    """One note summarizing the quantizer's warnings (the distinct ones, most frequent first)."""
    msgs = [" ".join(m.split()) for m in messages if not m.startswith(_KNOWN_ADVICE)]
    if not msgs:
        return []
    counts = Counter(m[:160] for m in msgs)
    shown = "; ".join(f"{m} (x{c})" if c > 1 else m for m, c in counts.most_common(3))
    more = f"; and {len(counts) - 3} other kind(s)" if len(counts) > 3 else ""
    return [f"onnxruntime's quantizer warned {len(msgs)} time(s): {shown}{more}"]


def extreme_range_nodes(model, calibration_cache: str | Path, limit: float) -> tuple[list[str], list[str]]:
    """(nodes to keep in float, tensors) for tensors whose calibrated range is non-finite or beyond `limit`.

    Such a tensor (an additive attention mask of float32 min, a -inf fill) cannot get a usable
    INT8 scale; its producers and consumers are kept in float so it is never quantized.
    """
    import numpy as np
    from onnxruntime.quantization.calibrate import load_tensors_data
    ranges = load_tensors_data(calibration_cache)
    extreme = []
    for name, data in ranges.items():
        bounds = np.concatenate([np.ravel(np.asarray(v, dtype=np.float64)) for v in data.range_value])
        if not np.isfinite(bounds).all() or np.abs(bounds).max(initial=0.0) > limit:
            extreme.append(name)
    names = set(extreme)
    nodes = [n.name for n in model.graph.node if names & (set(n.input) | set(n.output))]
    return nodes, sorted(extreme)
