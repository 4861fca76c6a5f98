"""Graph work for weight-only quantization: find the weight MatMuls, lm_head and embeddings; rewrite them."""
from __future__ import annotations

import logging

import numpy as np

from edgeai.errors import ExportError
from edgeai.steps import _onnx_graph as g

log = logging.getLogger(__name__)

FLOAT32 = 1
# ops a value passes through unchanged in layout-free ways between lm_head and the `logits` output
_PASS_THROUGH = frozenset({"Reshape", "Identity", "Cast", "Slice", "Squeeze", "Unsqueeze", "Gather", "Flatten"})


def _inits(model) -> dict:
    return {t.name: t for t in model.graph.initializer}


def weight_matmuls(model) -> list:
    """MatMul nodes whose B is a 2-D float32 initializer (K, N): what MatMulNBits can replace."""
    inits = _inits(model)
    return [n for n in model.graph.node if n.op_type == "MatMul" and len(n.input) == 2
            and n.input[1] in inits and len(inits[n.input[1]].dims) == 2
            and inits[n.input[1]].data_type == FLOAT32]


def embedding_gathers(model) -> list:
    """Gather nodes reading rows of a 2-D float32 initializer (token and position embeddings), and the
    lookup of a tied embedding stored once as (hidden, vocab): Gather(axis=1) then Transpose (see
    _transposed_lookups)."""
    inits = _inits(model)
    tied = _transposed_lookups(model)
    return [n for n in model.graph.node if n.op_type == "Gather" and n.input and n.input[0] in inits
            and len(inits[n.input[0]].dims) == 2 and inits[n.input[0]].data_type == FLOAT32
            and (_attr(n, "axis", 0) == 0 or n.name in tied)]


def _transposed_lookups(model) -> dict:
    """{Gather name: its Transpose} for Gather(table (hidden, vocab), ids, axis=1) -> (hidden, *ids) whose only
    consumer moves hidden last (perm [1, .., r, 0]): the token lookup of a tied embedding kept as lm_head's B."""
    users: dict[str, list] = {}
    for n in model.graph.node:
        for i in n.input:
            users.setdefault(i, []).append(n)
    out = {}
    for n in model.graph.node:
        if n.op_type != "Gather" or _attr(n, "axis", 0) != 1:
            continue
        nxt = users.get(n.output[0], [])
        if len(nxt) != 1 or nxt[0].op_type != "Transpose":
            continue
        perm = next((list(a.ints) for a in nxt[0].attribute if a.name == "perm"), None)
        if perm and perm == list(range(1, len(perm))) + [0]:
            out[n.name] = nxt[0]
    return out


def _attr(node, name: str, default):
    for a in node.attribute:
        if a.name == name:
            return a.i
    return default


def lm_head_node(model, output: str = "logits") -> str | None:
    """The weight MatMul that produces `output` (through reshapes and slices), or None."""
    producers = {o: n for n in model.graph.node for o in n.output}
    names = [o.name for o in model.graph.output]
    tensor = output if output in names else (names[0] if names else None)
    weights = {n.name for n in weight_matmuls(model)}
    for _ in range(8):
        node = producers.get(tensor)
        if node is None:
            return None
        if node.op_type == "MatMul":
            return node.name if node.name in weights else None
        if node.op_type not in _PASS_THROUGH and node.op_type != "Add":
            return None
        tensor = node.input[0]
    return None


def refuse_gemm(model, path) -> None:
    """Weight-only quantization rewrites only MatMul: a Gemm with a weight would silently stay float."""
    inits = _inits(model)
    gemms = [n.name or n.output[0] for n in model.graph.node if n.op_type == "Gemm" and any(i in inits for i in n.input[1:2])]
    if gemms:
        raise ExportError(
            f"{path} has {len(gemms)} Gemm node(s) with weights ({g.short_list(gemms)}): onnxruntime's MatMulNBits "
            "quantizer rewrites only MatMul, so they would stay FP32 and only lm_head would shrink; export the "
            "decoder with `edgeai export --task text-generation`, which rewrites Gemm as MatMul")


def matmul_nbits(model, names: list[str], bits: int, config):
    """`model` with the MatMuls `names` replaced by MatMulNBits (block-wise, `bits`); returns the new model."""
    from onnxruntime.quantization import matmul_nbits_quantizer as mq
    from onnxruntime.quantization.quant_utils import QuantFormat
    keep = {n.name for n in model.graph.node if n.op_type == "MatMul"} - set(names)
    if config.algorithm == "hqq":
        algo = mq.HQQWeightOnlyQuantConfig(block_size=config.block_size, bits=bits, op_types_to_quantize=("MatMul",))
    else:
        algo = mq.DefaultWeightOnlyQuantConfig(block_size=config.block_size, is_symmetric=config.symmetric,
                                               accuracy_level=config.accuracy_level, bits=bits,
                                               quant_format=QuantFormat.QOperator, op_types_to_quantize=("MatMul",))
    quantizer = mq.MatMulNBitsQuantizer(model, bits=bits, block_size=config.block_size,
                                        is_symmetric=config.symmetric, accuracy_level=config.accuracy_level,
                                        nodes_to_exclude=sorted(keep), algo_config=algo)
    chatty = logging.getLogger(mq.__name__)  # it logs every node it skips at INFO
    level = chatty.level
    chatty.setLevel(logging.WARNING)
    try:
        with g.quantizer_warnings():
            quantizer.process()
    finally:
        chatty.setLevel(level)
    out = quantizer.model.model
    if config.algorithm == "hqq" and config.accuracy_level is not None:
        for n in out.graph.node:  # HQQ's config has no accuracy_level; set it on the nodes it wrote
            if n.op_type == "MatMulNBits" and not any(a.name == "accuracy_level" for a in n.attribute):
                from onnx import helper
                n.attribute.append(helper.make_attribute("accuracy_level", config.accuracy_level))
    return out


def quantize_table(table: np.ndarray, bits: int, block: int) -> tuple[np.ndarray, np.ndarray]:
    """(data, scales) of a (rows, cols) float table, symmetric per block of `block` along cols.

    8 bits: uint8 (rows, cols), value + 128. 4 bits: uint8 (rows, cols/2), two values + 8 per byte,
    the even column in the low nibble. scales: (rows, cols/block) float32. Zero points are implied
    (128 and 8), as GatherBlockQuantized assumes when none is given.
    """
    rows, cols = table.shape
    if cols % block:
        raise ValueError(f"table width {cols} is not a multiple of block {block}")
    qmax = 127 if bits == 8 else 7
    blocks = table.reshape(rows, cols // block, block).astype(np.float32)
    scales = np.abs(blocks).max(axis=-1) / qmax
    scales = np.where(scales == 0, 1.0, scales).astype(np.float32)
    q = np.clip(np.rint(blocks / scales[..., None]), -qmax - 1, qmax).astype(np.int16).reshape(rows, cols)
    if bits == 8:
        return (q + 128).astype(np.uint8), scales
    u = (q + 8).astype(np.uint8)
    return (u[:, 0::2] | (u[:, 1::2] << 4)).astype(np.uint8), scales


def quantize_gathers(model, names: list[str], bits: int, block: int) -> list[str]:
    """Replace each embedding Gather in `names` by GatherBlockQuantized in place; returns the ones skipped
    (a table whose width is not a multiple of `block`)."""
    from onnx import helper, numpy_helper
    inits = _inits(model)
    tied = _transposed_lookups(model)
    dropped = {tied[n].name for n in names if n in tied}   # their Transpose: the new lookup is (..., hidden)
    skipped, nodes = [], []
    for node in model.graph.node:
        if node.name in dropped and node.op_type == "Transpose":
            continue
        if node.name not in names:
            nodes.append(node)
            continue
        weight = inits[node.input[0]]
        table = numpy_helper.to_array(weight, base_dir="")
        table = table.T if node.name in tied else table   # (hidden, vocab) -> rows per token
        if table.shape[1] % block:
            skipped.append(node.name)
            nodes.append(node)
            if node.name in tied:
                nodes.append(tied[node.name])
            continue
        data, scales = quantize_table(np.ascontiguousarray(table), bits, block)
        stem = f"{weight.name}_q{bits}b{block}"
        if stem not in inits:
            model.graph.initializer.extend([numpy_helper.from_array(data, stem),
                                            numpy_helper.from_array(scales, f"{stem}_scales")])
            inits[stem] = True
        outputs = list(tied[node.name].output) if node.name in tied else list(node.output)
        nodes.append(helper.make_node("GatherBlockQuantized", [stem, node.input[1], f"{stem}_scales"], outputs,
                                      name=node.name, domain="com.microsoft", gather_axis=0, quantize_axis=1,
                                      block_size=block, bits=bits))
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    still_used = {i for n in model.graph.node for i in n.input}
    kept = [t for t in model.graph.initializer if t.name in still_used or t.name not in inits]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)
    if not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    return skipped
