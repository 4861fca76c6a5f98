"""Look inside a model file before torch loads it: what the file is, and whether loading it could run code."""
from __future__ import annotations

import io
import json
import re
import tokenize
import zipfile
from pathlib import Path

from edgeai.errors import ModelLoadError
from edgeai.opcheck import HIGHER_ORDER_OPS, op_refusal

TRUST_HINT = "if you trust the file, pass --trust-pickle (Python: trust_pickle=True)"

# .pt2 archive layout (torch/csrc/export/pt2_archive_constants.h), relative to the archive's root folder
_PT2_VERSION = "archive_version"
_PT2_MODELS = "models/"
_PT2_AOTI = "data/aotinductor/"
_PT2_PAYLOAD_CONFIGS = ("data/weights/", "data/constants/")
_PT2_RAW_PREFIXES = ("weight_", "tensor_")   # raw tensor bytes; custom_obj_/opaque_obj_ are pickles

# graph targets torch resolves to callables: operators (torch.ops.NS.NAME.OVERLOAD, checked against the
# schema allowlist), higher-order operators, arithmetic from operator and math, torch.sym_*
_NAME = r"(?!__)\w+"  # no dunder attributes
_OPERATORS = ("getitem add sub mul truediv floordiv mod pow neg pos abs invert and_ or_ xor not_ "
              "eq ne lt le gt ge lshift rshift").split()  # not call, attrgetter, methodcaller, ...
_OP_TARGET = re.compile(rf"torch\.ops\.(?P<ns>{_NAME})\.(?P<name>{_NAME})(\.(?P<overload>{_NAME}))?")
_PY_TARGET = re.compile(rf"_operator\.({'|'.join(_OPERATORS)})|math\.{_NAME}|torch\._?sym_[a-z]\w*")
# names a symbolic shape expression may use: shape symbols (s0, u1) and the sympy functions torch prints
_SYMBOL = re.compile(r"[a-z]{1,3}\d+")
_SYMPY_NAMES = frozenset(
    "Symbol Integer Rational Float Max Min Abs Mod Pow Mul Add Eq Ne Lt Le Gt Ge And Or Not True False "
    "oo zoo nan floor ceiling sqrt Piecewise ITE FloorDiv ModularIndexing Where PythonMod CleanDiv "
    "CeilToInt FloorToInt CeilDiv LShift RShift PowByNatural FloatPow FloatTrueDiv IntTrueDiv "
    "IsNonOverlappingAndDenseIndicator TruncToFloat TruncToInt RoundToInt RoundDecimal ToFloat Identity "
    "BitwiseFn_bitwise_and BitwiseFn_bitwise_or OpaqueUnaryFn_sqrt "
    "positive negative nonnegative nonpositive integer real finite infinite zero nonzero even odd "
    "rational commutative".split())
_SAFE_OPS = frozenset("+ - * / // % ** ( ) , = < > <= >= == != & | ~".split())
# guards ("L['x'].size()[1] == 7") also index the inputs and read their sizes
_GUARD_NAMES = frozenset("L and or not is None".split())
_GUARD_ATTRS = frozenset("size stride storage_offset dim numel".split())


def sniff(path: Path) -> str:
    """What `path` holds, judged from its bytes: pt2, torchscript, torch-zip, pickle, onnx, tflite, zip,
    safetensors, hdf5, empty or unknown."""
    with open(path, "rb") as f:
        head = f.read(16)
    if not head:
        return "empty"
    if head.startswith(b"PK\x03\x04"):
        names = _zip_names(path)
        roots = {_strip_root(n) for n in names}
        if _PT2_VERSION in roots or any(r.startswith(_PT2_MODELS) for r in roots):
            return "pt2"
        if any(r == "constants.pkl" or r.startswith("code/") for r in roots):
            return "torchscript"
        if "data.pkl" in roots:
            return "torch-zip"
        return "zip"
    if head[:1] == b"\x80" and 2 <= head[1] <= 5:  # pickle PROTO opcode: torch.save's legacy format too
        return "pickle"
    if head[4:8] == b"TFL3":
        return "tflite"
    if head.startswith(b"\x89HDF"):
        return "hdf5"
    if len(head) >= 10 and head[8:10] == b'{"':  # 8-byte header length, then a JSON header
        return "safetensors"
    if head[:1] == b"\x08" and _is_onnx(path):  # ModelProto starts with field 1 (ir_version)
        return "onnx"
    return "unknown"


def not_a_model_message(path: Path, kind: str) -> str:
    """A one-line explanation for a file torch cannot load, saying what it is instead."""
    what = {
        "empty": "is empty (0 bytes)",
        "onnx": "is an ONNX model, not a PyTorch file: rename it to .onnx and pass that",
        "tflite": "is a TFLite model; edgeai exports from PyTorch or ONNX and cannot re-export a .tflite",
        "hdf5": "is an HDF5 file (Keras?), not a PyTorch model",
        "safetensors": "is a safetensors file (weights only): load it in a factory, "
                       "e.g. 'model.py:make_model', and pass that",
        "zip": "is a zip archive, but not one torch.save, TorchScript or torch.export.save writes",
    }.get(kind, "is not a PyTorch model file (neither a pickle nor a zip archive torch writes)")
    return f"{str(path)!r} {what}"


def check_pt2(path: Path) -> None:
    """Refuse a .pt2 whose loading could run code from the file: pickled records, compiled code,
    guard code, or graph strings that torch evaluates. Raises ModelLoadError naming --trust-pickle."""
    if not zipfile.is_zipfile(path):
        raise ModelLoadError(f"{str(path)!r} is not a .pt2 archive from torch.export.save (not a zip file)")
    with zipfile.ZipFile(path) as z:
        records = {_strip_root(n): n for n in z.namelist()}
        if _PT2_VERSION not in records:
            _refuse(path, "uses the old .pt2 layout, which torch loads with full unpickling")
        if any(r.startswith(_PT2_AOTI) for r in records):
            _refuse(path, "holds AOTInductor compiled code, which loading it would run")
        for rel, name in records.items():
            if rel.startswith(_PT2_PAYLOAD_CONFIGS) and rel.endswith("_config.json"):
                _check_payload_config(path, rel, _read_json(path, z, name))
            elif rel.startswith(_PT2_MODELS) and rel.endswith(".json"):
                _check_graph(path, rel, _read_json(path, z, name))
            elif rel.endswith(".pt"):
                _check_weights_only(path, rel, z.read(name))


def _refuse(path: Path, why: str) -> None:
    raise ModelLoadError(f"{str(path)!r} {why}, which can run arbitrary code; {TRUST_HINT}")


def _check_payload_config(path: Path, rel: str, config: dict) -> None:
    for fqn, meta in (config.get("config") or {}).items():
        if not isinstance(meta, dict) or meta.get("use_pickle") is not False \
                or not str(meta.get("path_name", "")).startswith(_PT2_RAW_PREFIXES):
            _refuse(path, f"stores {fqn!r} ({rel}) as a pickle")


def _check_graph(path: Path, rel: str, program: dict) -> None:
    for guard in program.get("guards_code") or []:
        if not isinstance(guard, str) or not _safe_expr(guard, guard=True):
            _refuse(path, f"carries guard code torch would execute ({str(guard)[:80]!r})")
    for key, value in _walk(program):
        if key == "target" and isinstance(value, str):
            _check_target(path, rel, value)
        if key == "expr_str" and isinstance(value, str) and not _safe_expr(value):
            _refuse(path, f"carries a shape expression torch would evaluate as Python ({value[:80]!r})")
    for symbol in program.get("range_constraints") or {}:
        if not _safe_expr(str(symbol)):
            _refuse(path, f"carries a shape expression torch would evaluate as Python ({str(symbol)[:80]!r})")


def check_graph_module(path: Path, graph_module) -> None:
    """The same operator check on a loaded ExportedProgram's graphs (subgraphs of cond/map included)."""
    import torch
    for module in graph_module.modules():
        graph = getattr(module, "graph", None)
        for node in (graph.nodes if isinstance(graph, torch.fx.Graph) else ()):
            if node.op in ("call_module", "call_method"):
                _refuse(path, f"has a graph node that calls {node.op} {node.target!r}, which exported programs never hold")
            if node.op == "call_function":
                _check_target(path, "the loaded graph", _target_name(node.target))


def _target_name(target) -> str:
    """The serialized name of an fx call_function target ("torch.ops.aten.add.Tensor", "_operator.add")."""
    import torch
    if isinstance(target, torch._ops.OpOverload):
        return f"torch.ops.{target.namespace}.{target._opname}.{target._overloadname}"
    if isinstance(target, torch._ops.HigherOrderOperator):
        return f"torch.ops.higher_order.{target.name()}"
    return f"{getattr(target, '__module__', '')}.{getattr(target, '__qualname__', '')}"


def _check_target(path: Path, rel: str, target: str) -> None:
    op = _OP_TARGET.fullmatch(target)
    if op and op["ns"] == "higher_order" and not op["overload"]:
        if op["name"] not in HIGHER_ORDER_OPS:
            _refuse_op(path, rel, target, f"a higher-order operator outside {', '.join(sorted(HIGHER_ORDER_OPS))}")
    elif op and op["overload"]:
        overload = "" if op["overload"] == "default" else op["overload"]
        why = op_refusal(f"{op['ns']}::{op['name']}", overload)
        if why:
            _refuse_op(path, rel, f"{op['ns']}::{op['name']}.{op['overload']}", why)
    elif not _PY_TARGET.fullmatch(target):
        _refuse(path, f"calls {target[:80]!r} ({rel}), which is not a PyTorch operator")


def _refuse_op(path: Path, rel: str, op: str, why: str) -> None:
    raise ModelLoadError(f"{str(path)!r} calls {op} ({rel}), {why}; {TRUST_HINT}")


def _check_weights_only(path: Path, rel: str, data: bytes) -> None:
    """A record torch loads with torch.load: it must load with weights_only=True (torch falls back
    to full unpickling otherwise)."""
    import torch
    try:
        torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception:
        _refuse(path, f"has a record ({rel}) that needs full unpickling")


def _safe_expr(text: str, guard: bool = False) -> bool:
    """True when `text` (a sympy expression, or with `guard` a guard such as
    "L['x'].size()[1] == 7") uses only shape symbols, numbers, known functions and operators:
    nothing that could call Python code when torch evaluates it."""
    try:
        tokens = list(tokenize.generate_tokens(io.StringIO(text).readline))
    except (tokenize.TokenError, SyntaxError, IndentationError):
        return False
    prev = None
    for tok in tokens:
        if tok.type in (tokenize.NEWLINE, tokenize.NL, tokenize.ENDMARKER):
            continue
        s = tok.string
        if prev == ".":
            ok = guard and tok.type == tokenize.NAME and s in _GUARD_ATTRS
        elif tok.type == tokenize.NAME:
            ok = s in _SYMPY_NAMES or bool(_SYMBOL.fullmatch(s)) or (guard and s in _GUARD_NAMES)
        elif tok.type == tokenize.OP:
            ok = s in _SAFE_OPS or (guard and s in ("[", "]", "."))
        elif tok.type == tokenize.STRING:
            ok = bool(re.fullmatch(r"'[A-Za-z_]\w*'|\"[A-Za-z_]\w*\"", s))
        else:
            ok = tok.type == tokenize.NUMBER
        if not ok:
            return False
        prev = s
    return True


def _walk(obj, key=None):
    """Every (key, value) pair in a JSON tree."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield k, v
            yield from _walk(v, k)
    elif isinstance(obj, list):
        for v in obj:
            yield from _walk(v, key)


def _read_json(path: Path, z: zipfile.ZipFile, name: str):
    try:
        return json.loads(z.read(name))
    except (ValueError, UnicodeDecodeError):
        raise ModelLoadError(f"{str(path)!r} is a damaged .pt2 archive: {name} is not JSON") from None


def _zip_names(path: Path) -> list[str]:
    try:
        with zipfile.ZipFile(path) as z:
            return z.namelist()
    except zipfile.BadZipFile:
        return []


def _strip_root(name: str) -> str:
    """torch writes every record under one root folder (the archive's name)."""
    return name.split("/", 1)[1] if "/" in name else name


def _is_onnx(path: Path) -> bool:
    try:
        import onnx
        model = onnx.load(str(path), load_external_data=False)
    except Exception:
        return False
    return len(model.graph.node) > 0 or len(model.graph.input) > 0
