"""Which PyTorch operators a model file may call: an allowlist built from the operator schemas.

An operator is admitted when it is in the `aten` or `prim` namespace and its schema says it only
computes on values: every argument and return type is a tensor, number, string, device, generator or
a container of them (no Storage, no custom class, no RRef/Future/Stream); every string argument has a
name current schemas use for modes and messages (`reduce`, `rounding_mode`, `equation`, ...), never
a path (`filename`); and its name has no I/O word in it (file, save, load, storage, share, rpc, ...).
Whatever a newer torch adds is judged by the same rules, so an operator that takes a path is refused
by default. torch is imported only when a model file is checked.
"""
from __future__ import annotations

import functools

ALLOWED_NAMESPACES = ("aten", "prim")
# JIT type kinds an admitted operator may take or return (anything else, e.g. StorageType,
# ClassType of torch.classes, CapsuleType, RRefType, FutureType, StreamObjType, is refused)
_VALUE_KINDS = frozenset(
    "TensorType IntType FloatType BoolType ComplexType NumberType StringType NoneType ListType OptionalType "
    "TupleType DictType UnionType VarType AnyType AnyListType AnyTupleType AnyEnumType DeviceObjType "
    "GeneratorType LayoutType ScalarTypeType MemoryFormatType SymIntType SymFloatType SymBoolType".split())
# names of the string arguments in torch's aten/prim schemas (2.x): modes, messages, str methods' operands;
# "filename" (aten::from_file, aten::save) is deliberately not here
_STR_ARG_NAMES = frozenset(
    "UPLO a activation algorithm api_name approximate assert_msg b chars cls device_type dict driver el "
    "equation fillchar idx ind indexing input inputs interpolation item key l message mode msg new norm old "
    "ord p pad_mode padding padding_side reduce rounding_mode s self separator side string substr t to_add "
    "type values".split())
# a word of the operator's name (split at "_") that means files, processes or the network
_IO_WORDS = frozenset(
    "file files save load loads storage shared share mmap socket pickle unpickle rpc url path open read write "
    "exec system spawn environ dlopen library remote".split())
# higher-order operators an ExportedProgram may hold (their subgraphs are checked like the main graph)
HIGHER_ORDER_OPS = frozenset(("cond", "while_loop", "map_impl", "scan", "wrap_with_set_grad_enabled",
                              "wrap_with_autocast"))


@functools.lru_cache(maxsize=None)
def op_refusal(qualified: str, overload: str | None = None) -> str | None:
    """Why `qualified` ("aten::add") may not run, or None when it may.

    `overload` names one overload ("Tensor"; "" for the default one); None means whichever the
    TorchScript compiler picks, so every overload must be admitted.
    """
    namespace, _, name = qualified.partition("::")
    if namespace not in ALLOWED_NAMESPACES:
        return f"an operator outside {'/'.join(ALLOWED_NAMESPACES)}"
    if _io_name(name):
        return "an operator that reaches files, storage, other processes or the network"
    schemas = _schemas().get(qualified, ())
    if overload is not None:
        schemas = [s for s in schemas if s.overload_name == overload]
    if not schemas:
        return "not an operator this torch knows"
    for schema in schemas:
        why = _schema_refusal(schema)
        if why:
            return why
    return None


@functools.lru_cache(maxsize=None)
def _schemas() -> dict:
    import torch
    table: dict[str, list] = {}
    for schema in torch._C._jit_get_all_schemas():
        table.setdefault(schema.name, []).append(schema)
    return table


def _io_name(name: str) -> bool:
    words = [w for w in name.lower().split("_") if w]
    return any(w in _IO_WORDS and not (w == "storage" and words[i + 1:i + 2] in (["offset"], ["offsets"]))
               for i, w in enumerate(words))


def _schema_refusal(schema) -> str | None:
    for arg in schema.arguments:
        kinds = _kinds(arg.type)
        if "StringType" in kinds and arg.name not in _STR_ARG_NAMES:
            return f"an operator that takes a string {arg.name!r} (a path?)"
    for arg in (*schema.arguments, *schema.returns):
        bad = _kinds(arg.type) - _VALUE_KINDS
        if bad:
            return f"an operator on {', '.join(sorted(k.removesuffix('Type') for k in bad))} values"
    return None


def _kinds(jit_type) -> set[str]:
    kinds = {jit_type.kind()}
    for inner in jit_type.containedTypes():
        kinds |= _kinds(inner)
    return kinds
