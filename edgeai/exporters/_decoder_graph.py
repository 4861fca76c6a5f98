"""Normalize a traced decoder graph once: Gemm->MatMul, one copy of a tied embedding, `logits_to_keep`, dim names."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from edgeai.errors import ExportError

log = logging.getLogger(__name__)

LOGITS_TO_KEEP = "logits_to_keep"
EXTERNAL_DATA_LIMIT = 2 * 1024 ** 3 - 64 * 1024 ** 2  # protobuf's 2 GiB, less room for the graph itself
INT64_MAX = np.iinfo(np.int64).max


def normalize(path: Path, layout, *, external_data: bool = False) -> dict:
    """Rewrite the ONNX decoder at `path` in place (its external data too); return facts for the manifest."""
    import onnx
    model = onnx.load(str(path), load_external_data=True)
    for f in _external_locations(path):
        (path.parent / f).unlink(missing_ok=True)
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    gemms = _gemm_to_matmul(graph, inits)
    tied = _tie_embedding(graph, inits)
    shared = _share_equal_initializers(graph, inits)
    _add_logits_to_keep(graph, inits)
    _name_dims(graph, layout)
    del graph.value_info[:]  # torch.export's intermediate shapes name dims s0, s1...; ORT infers them again
    for node in graph.node:  # torch.export's per-node stack traces: most of a small model's file
        del node.metadata_props[:]
        node.doc_string = ""
    return {"gemm_rewritten": gemms, "tied_embedding": tied, "shared_initializers": shared,
            **save(model, path, external_data=external_data)}


def save(model, path: Path, *, external_data: bool = False) -> dict:
    """Write a decoder graph, its weights in `path`.data when asked or past ~2 GB; returns the size facts."""
    import onnx
    weight_bytes = sum(_nbytes(i) for i in model.graph.initializer)
    external = external_data or weight_bytes > EXTERNAL_DATA_LIMIT
    if external:
        onnx.save(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                  location=path.name + ".data", size_threshold=1024)
    else:
        onnx.save(model, str(path))
    return {"external_data": external, "weight_bytes": weight_bytes}


def _external_locations(path: Path) -> list[str]:
    from edgeai.exporters.onnx import external_files
    return external_files(path)


def _nbytes(init) -> int:
    from onnx import helper
    size = int(np.prod(init.dims)) if init.dims else 1
    return size * np.dtype(helper.tensor_dtype_to_np_dtype(init.data_type)).itemsize


def _consumers(graph, name: str) -> list:
    return [n for n in graph.node if name in n.input]


def _attr(node, name: str, default):
    from onnx import helper
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _replace_init(graph, inits: dict, name: str, array: np.ndarray) -> None:
    from onnx import numpy_helper
    new = numpy_helper.from_array(np.ascontiguousarray(array), name)
    graph.initializer.remove(inits[name])
    graph.initializer.append(new)
    inits[name] = new


def _gemm_to_matmul(graph, inits: dict) -> int:
    """Gemm(A, B[, C]) -> MatMul(A, B') [+ Add C]: ORT's weight-only quantizers rewrite MatMul only."""
    from onnx import helper, numpy_helper
    count = 0
    for node in list(graph.node):
        if node.op_type != "Gemm":
            continue
        if _attr(node, "transA", 0) or _attr(node, "alpha", 1.0) != 1.0 or _attr(node, "beta", 1.0) != 1.0:
            continue
        a, b = node.input[0], node.input[1]
        c = node.input[2] if len(node.input) > 2 and node.input[2] else None
        if b not in inits:
            continue
        if _attr(node, "transB", 0):
            if len(_consumers(graph, b)) != 1:
                continue  # a shared weight: transposing it would change its other users
            _replace_init(graph, inits, b, numpy_helper.to_array(inits[b]).T)
        at = list(graph.node).index(node)
        out = node.output[0]
        new = [helper.make_node("MatMul", [a, b], [out + "_mm" if c else out], name=(node.name or out) + "_MatMul")]
        if c:
            new.append(helper.make_node("Add", [out + "_mm", c], [out], name=(node.name or out) + "_Add"))
        graph.node.remove(node)
        for i, n in enumerate(new):
            graph.node.insert(at + i, n)
        count += 1
    return count


def _share_equal_initializers(graph, inits: dict) -> int:
    """One copy of initializers with equal bytes (GPT-2 keeps its causal-mask buffer once per layer: 12 MB
    in GPT-2 small); returns how many copies were dropped. Graphs with subgraphs are left alone."""
    import hashlib
    if any(a.type in (5, 10) for n in graph.node for a in n.attribute):  # GRAPH / GRAPHS attributes
        return 0
    first: dict[tuple, str] = {}
    alias: dict[str, str] = {}
    for init in list(graph.initializer):
        if init.data_location != 0 or not init.raw_data:
            continue  # external or typed-field tensors: compared only as raw bytes
        key = (init.data_type, tuple(init.dims), hashlib.sha256(init.raw_data).hexdigest())
        if key in first and inits[first[key]].raw_data == init.raw_data:
            alias[init.name] = first[key]
            graph.initializer.remove(init)
            inits.pop(init.name)
        else:
            first.setdefault(key, init.name)
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name in alias:
                node.input[i] = alias[name]
    return len(alias)


def _logits_matmul(graph):
    """The MatMul whose output reaches `logits` through elementwise ops only (softcapping, scaling)."""
    producer = {o: n for n in graph.node for o in n.output}
    name = "logits"
    for _ in range(8):
        node = producer.get(name)
        if node is None:
            break
        if node.op_type == "MatMul":
            return node
        if node.op_type not in ("Add", "Mul", "Div", "Tanh", "Identity", "Cast"):
            break
        name = node.input[0]
    raise ExportError("cannot find the lm_head MatMul that computes 'logits'; the decoder graph is not one "
                      "edgeai knows how to normalize")


def _tie_embedding(graph, inits: dict) -> bool:
    """One copy of a tied token embedding E (vocab, hidden): the lm_head MatMul reads E^T (hidden, vocab) as
    an initializer and the token lookup becomes Gather(E^T, ids, axis=1) -> (hidden, batch, seq) ->
    Transpose(1, 2, 0) -> (batch, seq, hidden). Returns whether the graph had a tied embedding."""
    from onnx import helper, numpy_helper
    head = _logits_matmul(graph)
    producer = {o: n for n in graph.node for o in n.output}
    weight = head.input[1]
    trans = producer.get(weight)
    if trans is not None and trans.op_type == "Transpose" and trans.input[0] in inits \
            and list(_attr(trans, "perm", [1, 0])) == [1, 0]:
        src = trans.input[0]                       # lm_head = MatMul(x, Transpose(E))
        table = numpy_helper.to_array(inits[src])
        gathers = [n for n in _consumers(graph, src) if n.op_type == "Gather" and _attr(n, "axis", 0) == 0]
    elif weight in inits:                          # lm_head = MatMul(x, W^T) next to a separate equal table
        wt = numpy_helper.to_array(inits[weight])
        gathers = [n for n in graph.node if n.op_type == "Gather" and n.input[0] in inits and _attr(n, "axis", 0) == 0
                   and tuple(inits[n.input[0]].dims) == wt.shape[::-1]
                   and np.array_equal(numpy_helper.to_array(inits[n.input[0]]), wt.T)]
        if not gathers:
            return False
        src, table = gathers[0].input[0], wt.T
    else:
        return False
    if not gathers or len(_consumers(graph, src)) != len(gathers) + (trans is not None and trans.input[0] == src):
        return False
    name = "lm_head.weight.T"                      # (hidden, vocab): the tied embedding, stored once
    graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(table.T), name))
    head.input[1] = name
    for g in gathers:
        at = list(graph.node).index(g)
        out = g.output[0]
        gathered = helper.make_node("Gather", [name, g.input[1]], [out + "_cols"], axis=1, name=(g.name or out) + "_T")
        back = helper.make_node("Transpose", [out + "_cols"], [out], perm=[1, 2, 0], name=(g.name or out) + "_perm")
        graph.node.remove(g)
        graph.node.insert(at, back)
        graph.node.insert(at, gathered)
    if trans is not None and not _consumers(graph, trans.output[0]):
        graph.node.remove(trans)
    for n in list(inits):
        if n in (src, weight) and not _consumers(graph, n):
            graph.initializer.remove(inits.pop(n))
    return True


def _add_logits_to_keep(graph, inits: dict) -> None:
    """A required int64 [1] input `logits_to_keep`: 0 = logits at every position (perplexity), 1 = the last
    only (generation); the lm_head sees hidden[:, -logits_to_keep:]. (An input with a default, i.e. an
    initializer, cannot be fed through onnxruntime's IO binding.)"""
    from onnx import TensorProto, helper, numpy_helper
    head = _logits_matmul(graph)
    x = head.input[0]
    consts = {"logits_to_keep_end": np.array([INT64_MAX], np.int64), "logits_to_keep_axis": np.array([1], np.int64)}
    for n, v in consts.items():
        graph.initializer.append(numpy_helper.from_array(v, n))
    graph.input.append(helper.make_tensor_value_info(LOGITS_TO_KEEP, TensorProto.INT64, [1]))
    at = list(graph.node).index(head)
    neg = helper.make_node("Neg", [LOGITS_TO_KEEP], ["logits_to_keep_start"], name="logits_to_keep_Neg")
    sl = helper.make_node("Slice", [x, "logits_to_keep_start", "logits_to_keep_end", "logits_to_keep_axis"],
                          [x + "_kept"], name="logits_to_keep_Slice")
    head.input[0] = x + "_kept"
    graph.node.insert(at, sl)
    graph.node.insert(at, neg)


def _name_dims(graph, layout) -> None:
    """Readable dim names on the graph's inputs and outputs (torch.export writes s0, s1, ...)."""
    names = {"input_ids": ["batch", "seq"], "attention_mask": ["batch", "total_seq"],
             "position_ids": ["batch", "seq"], "logits": ["batch", "logits_seq", layout.vocab_size]}
    for n in layout.past_names():
        names[n] = ["batch", layout.kv_heads, "past_seq", layout.head_dim]
    for n in layout.present_names():
        names[n] = ["batch", layout.kv_heads, "total_seq", layout.head_dim]
    for vi in list(graph.input) + list(graph.output):
        dims = names.get(vi.name)
        if dims is None:
            continue
        shape = vi.type.tensor_type.shape
        if len(shape.dim) != len(dims):
            raise ExportError(f"decoder {vi.name!r} has rank {len(shape.dim)}, expected {len(dims)}")
        for d, want in zip(shape.dim, dims):
            if isinstance(want, str):
                d.ClearField("dim_value")
                d.dim_param = want
            else:
                d.ClearField("dim_param")
                d.dim_value = want
