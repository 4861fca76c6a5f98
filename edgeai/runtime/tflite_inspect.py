"""Read a .tflite flatbuffer without running it: ops, transposes, I/O, weight bytes by dtype (no torch)."""
from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from edgeai.errors import MissingDependencyError, RuntimeLoadError

# Ops that run a whole recurrent sequence in one kernel; their absence next to an nn.LSTM/GRU
# means the converter unrolled the recurrence into per-time-step ops.
FUSED_RNN_OPS = ("UNIDIRECTIONAL_SEQUENCE_LSTM", "BIDIRECTIONAL_SEQUENCE_LSTM", "LSTM",
                 "UNIDIRECTIONAL_SEQUENCE_RNN", "BIDIRECTIONAL_SEQUENCE_RNN", "RNN")
# Ops that want NHWC activations: a rank-4 input they read directly is channels-last.
_NHWC_CONSUMERS = {"CONV_2D", "DEPTHWISE_CONV_2D", "AVERAGE_POOL_2D", "MAX_POOL_2D", "TRANSPOSE_CONV",
                   "RESIZE_BILINEAR", "RESIZE_NEAREST_NEIGHBOR", "SPACE_TO_DEPTH", "DEPTH_TO_SPACE"}


def _schema():
    try:
        from ai_edge_litert import schema_py_generated as schema
    except ImportError:
        raise MissingDependencyError("reading .tflite files needs ai-edge-litert; run: pip install ai-edge-litert") from None
    return schema


def _enum_names(cls) -> dict[int, str]:
    return {v: k for k, v in vars(cls).items() if not k.startswith("_") and isinstance(v, int)}


def _tensor_info(schema, sub, index: int, dtype_names: dict[int, str], name: str | None = None) -> dict:
    t = sub.Tensors(index)
    shape = [int(d) for d in t.ShapeAsNumpy()] if t.ShapeLength() else []
    sig = [int(d) for d in t.ShapeSignatureAsNumpy()] if t.ShapeSignatureLength() else shape
    return {"name": name or t.Name().decode(errors="replace"), "shape": shape, "shape_signature": sig,
            "dtype": dtype_names.get(t.Type(), f"unknown type {t.Type()}").lower(), "index": index}


def _signature_io(model, sub_index: int) -> tuple[dict[int, str], dict[int, str]] | None:
    """{tensor index: signature name} for inputs and outputs of the signature running `sub_index`."""
    for i in range(model.SignatureDefsLength()):
        sd = model.SignatureDefs(i)
        if sd.SubgraphIndex() == sub_index:
            ins = {sd.Inputs(j).TensorIndex(): sd.Inputs(j).Name().decode() for j in range(sd.InputsLength())}
            outs = {sd.Outputs(j).TensorIndex(): sd.Outputs(j).Name().decode() for j in range(sd.OutputsLength())}
            return ins, outs
    return None


def plain_name(tensor_name: str) -> str:
    """'serving_default_x:0' -> 'x': a tensor name without the TF signature prefix and output index."""
    return tensor_name.removeprefix("serving_default_").rsplit(":", 1)[0] or tensor_name


def io_names(in_idx: list[int], out_idx: list[int], raw: dict[int, str],
             signature: tuple[dict[int, str], dict[int, str]] | None) -> dict[int, str]:
    """The one naming rule for a .tflite's inputs and outputs, used by every path that feeds or reads it:
    the signature's names when its signature covers every input and output of the main graph, else
    the tensor names made plain ('serving_default_x:0' -> 'x') unless that makes two names equal."""
    if signature is not None and set(signature[0]) == set(in_idx) and set(signature[1]) == set(out_idx):
        return {**signature[0], **signature[1]}
    every = [*in_idx, *out_idx]
    plain = {i: plain_name(raw[i]) for i in every}
    return plain if len(set(plain.values())) == len(set(every)) else {i: raw[i] for i in every}


def _input_layout(shape: list[int], consumers: list[tuple[str, list[int] | None]]) -> str | None:
    """Guess the layout of a rank-4 input from the ops that read it (None when it cannot be told)."""
    if len(shape) != 4:
        return None
    for op, perm in consumers:
        if op == "TRANSPOSE" and perm == [0, 2, 3, 1]:
            return "NCHW"  # the converter moves channels last right after the input
        if op in _NHWC_CONSUMERS:
            return "NHWC"
    return None


def inspect_tflite(path: str | Path) -> dict[str, Any]:
    """Facts about a .tflite file: op count and histogram, TRANSPOSE count, signature I/O with
    guessed layouts, constant bytes per dtype, and whether recurrent ops are fused.

    Raises RuntimeLoadError when the file is missing or not a TFLite flatbuffer.
    """
    import numpy as np

    schema = _schema()
    path = Path(path)
    if not path.is_file():
        raise RuntimeLoadError(f"model {str(path)!r} does not exist")
    buf = path.read_bytes()
    if len(buf) < 8 or buf[4:8] != b"TFL3":
        raise RuntimeLoadError(f"{str(path)!r} is not a TFLite flatbuffer (no 'TFL3' identifier); "
                               "re-export the model")
    op_names = _enum_names(schema.BuiltinOperator)
    dtype_names = _enum_names(schema.TensorType)
    try:
        model = schema.Model.GetRootAs(buf, 0)
        codes = []
        for i in range(model.OperatorCodesLength()):
            oc = model.OperatorCodes(i)
            code = max(oc.BuiltinCode(), oc.DeprecatedBuiltinCode())
            custom = oc.CustomCode()
            codes.append(f"CUSTOM:{custom.decode()}" if custom else op_names.get(code, str(code)))
        hist: Counter[str] = Counter()
        sub_ops = []
        for s in range(model.SubgraphsLength()):
            sub = model.Subgraphs(s)
            sub_ops.append(sub.OperatorsLength())
            for k in range(sub.OperatorsLength()):
                hist[codes[sub.Operators(k).OpcodeIndex()]] += 1
        main = model.Subgraphs(0)
        inputs, outputs, layouts = _main_io(schema, model, main, codes, dtype_names, np)
        const_bytes = _constant_bytes(model, dtype_names)
        variables = sum(model.Subgraphs(s).Tensors(i).IsVariable() for s in range(model.SubgraphsLength())
                        for i in range(model.Subgraphs(s).TensorsLength()))
    except RuntimeLoadError:
        raise
    except Exception as e:  # a truncated or corrupted flatbuffer fails in many ways
        raise RuntimeLoadError(f"{str(path)!r} is not a readable TFLite model ({type(e).__name__}: {e})") from None
    return {
        "size_bytes": len(buf),
        "subgraphs": len(sub_ops),
        "op_count": sum(sub_ops),
        "op_count_main": sub_ops[0] if sub_ops else 0,
        "op_histogram": dict(hist.most_common()),
        "transpose_count": hist.get("TRANSPOSE", 0),
        "fused_rnn_ops": {k: v for k, v in hist.items() if k in FUSED_RNN_OPS},
        "inputs": inputs,
        "outputs": outputs,
        "input_layouts": layouts,
        "constant_bytes_by_dtype": const_bytes,
        "variable_tensors": int(variables),  # state kept between runs (fused LSTM h/c)
    }


def _main_io(schema, model, main, codes, dtype_names, np):
    """Inputs and outputs of subgraph 0 in graph (call) order, named by its signature if any, and input layouts."""
    in_idx = [int(i) for i in main.InputsAsNumpy()] if main.InputsLength() else []
    out_idx = [int(i) for i in main.OutputsAsNumpy()] if main.OutputsLength() else []
    raw = {i: main.Tensors(i).Name().decode(errors="replace") for i in (*in_idx, *out_idx)}
    names = io_names(in_idx, out_idx, raw, _signature_io(model, 0))
    inputs = [_tensor_info(schema, main, i, dtype_names, names[i]) for i in in_idx]
    outputs = [_tensor_info(schema, main, i, dtype_names, names[i]) for i in out_idx]
    consumers: dict[int, list[tuple[str, list[int] | None]]] = {i: [] for i in in_idx}
    for k in range(main.OperatorsLength()):
        op = main.Operators(k)
        name = codes[op.OpcodeIndex()]
        op_in = [int(i) for i in op.InputsAsNumpy()] if op.InputsLength() else []
        if op_in and op_in[0] in consumers:  # activations are operand 0 of the ops we look for
            perm = _const_ints(model, main, op_in[1], np) if name == "TRANSPOSE" and len(op_in) > 1 else None
            consumers[op_in[0]].append((name, perm))
    layouts = {d["name"]: _input_layout(d["shape"], consumers.get(d["index"], [])) for d in inputs}
    return inputs, outputs, layouts


def _const_ints(model, sub, tensor_index: int, np) -> list[int] | None:
    t = sub.Tensors(tensor_index)
    data = model.Buffers(t.Buffer()).DataAsNumpy()
    if not isinstance(data, np.ndarray) or data.size == 0:
        return None
    dtype = np.int64 if t.Type() == 4 else np.int32
    return [int(v) for v in data.view(dtype)]


def _constant_bytes(model, dtype_names) -> dict[str, int]:
    """Bytes of constant (weight) buffers per tensor dtype, over all subgraphs."""
    out: Counter[str] = Counter()
    seen: set[int] = set()
    for s in range(model.SubgraphsLength()):
        sub = model.Subgraphs(s)
        for i in range(sub.TensorsLength()):
            t = sub.Tensors(i)
            b = t.Buffer()
            if b == 0 or b in seen or b >= model.BuffersLength():
                continue
            seen.add(b)
            buf = model.Buffers(b)
            n = buf.DataLength() or (buf.Size() if buf.Offset() > 1 else 0)
            if n:
                out[dtype_names.get(t.Type(), str(t.Type())).lower()] += int(n)
    return dict(out)
