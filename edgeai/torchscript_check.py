"""Prove a TorchScript archive cannot reach files or processes before torch.jit.load compiles and runs it.

torch.jit.load compiles the archive's code/ sources and calls the `__setstate__` of every object in
data.pkl, so a method can run any TorchScript operator at load time. This reads the sources as Python
syntax (what TorchScript's printer writes) and admits a call only when it is an operator the schema
allowlist (edgeai.opcheck) admits, a function, class or method defined in the archive itself (checked
the same way), or a pure builtin; and the pickles only name tensor rebuilders and the archive's classes.
"""
from __future__ import annotations

import ast
import pickletools
import re
import zipfile
from pathlib import Path

from edgeai.errors import ModelLoadError
from edgeai.opcheck import op_refusal

# names the TorchScript compiler resolves to pure builtins (no fork, rpc_*, wait, awaitable)
_BUILTINS = frozenset(
    "int float bool str complex len isinstance getattr hasattr range enumerate zip min max abs sum all any "
    "divmod ord chr round hash list dict tuple sorted iter hex oct bin print annotate unchecked_cast "
    "uninitialized".split())
# GLOBALs TorchScript's own unpickler resolves: tensor rebuilders, list builders, storages, the archive's classes
_PICKLE_GLOBALS = re.compile(r"torch\._utils (_rebuild_tensor|_rebuild_tensor_v2|_rebuild_qtensor|"
                             r"_rebuild_sparse_tensor)|torch\.jit\._pickle (build_\w+|restore_type_tag)|"
                             r"collections OrderedDict|(builtins|__builtin__) set|torch (\w+Storage|device)")
_CUSTOM_CLASS = re.compile(r"\btorch\.classes\b")
TRUST = "if you trust the file, pass --trust-pickle (Python: trust_pickle=True)"


def check_torchscript(path: Path) -> None:
    """Raise ModelLoadError naming the first operator or record that could reach outside the model."""
    with zipfile.ZipFile(path) as z:
        records = {(n.split("/", 1)[1] if "/" in n else n): n for n in z.namelist()}
        if "data.pkl" not in records:
            _refuse(path, "uses an old TorchScript layout edgeai cannot check")
        sources = {rel: _text(path, rel, z.read(name)) for rel, name in records.items()
                   if rel.startswith("code/") and rel.endswith(".py")}
        archive = _Archive(path, sources)
        for rel, name in records.items():
            if rel.endswith("pkl"):
                _check_pickle(path, rel, z.read(name), archive.classes)
    for rel, tree in archive.trees.items():
        archive.check(rel, tree)


def _refuse(path: Path, why: str) -> None:
    raise ModelLoadError(f"{str(path)!r} {why}; {TRUST}")


def _text(path: Path, rel: str, data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        _refuse(path, f"has TorchScript code that is not UTF-8 ({rel})")


class _Archive:
    """The definitions of an archive's code/ files and the rules its calls are checked against."""

    def __init__(self, path: Path, sources: dict[str, str]):
        self.path = path
        self.trees, self.classes, self.functions, self.methods = {}, set(), set(), set()
        for rel, text in sources.items():
            if _CUSTOM_CLASS.search(text):
                line = next(n for n, s in enumerate(text.splitlines(), 1) if _CUSTOM_CLASS.search(s))
                _refuse(path, f"uses a torch.classes custom class ({rel} line {line}), native code edgeai cannot check")
            try:
                tree = ast.parse(text, filename=rel)
            except (SyntaxError, ValueError):
                _refuse(path, f"has TorchScript code edgeai cannot parse ({rel})")
            module = rel.removeprefix("code/").removesuffix(".py").replace("/", ".")
            self.trees[rel] = tree
            for node in tree.body:
                if isinstance(node, ast.ClassDef):
                    self.classes.add(f"{module}.{node.name}")
                    self.methods.update(f.name for f in node.body if isinstance(f, ast.FunctionDef))
                elif isinstance(node, ast.FunctionDef):
                    self.functions.add(f"{module}.{node.name}")

    def check(self, rel: str, tree: ast.Module) -> None:
        for scope, nodes in _scopes(tree):
            bound = {t.id for node in nodes if isinstance(node, ast.Assign) and self._defined(_dotted(node.value))
                     for t in node.targets if isinstance(t, ast.Name)}
            inner = {id(n.func) for n in nodes if isinstance(n, ast.Call)}
            inner |= {id(n.value) for n in nodes if isinstance(n, ast.Attribute)}
            for node in nodes:
                if isinstance(node, ast.Call):
                    why = self._call_refusal(node.func, bound)
                elif isinstance(node, ast.Attribute) and id(node) not in inner \
                        and _dotted(node).startswith(("torch.", "ops.")):
                    why = self._op_refusal(_dotted(node))  # an operator taken as a value
                elif isinstance(node, (ast.Import, ast.ImportFrom, ast.Lambda)):
                    why = "Python syntax TorchScript never writes"
                else:
                    continue
                if why:
                    _refuse(self.path, f"{why} ({rel} line {node.lineno}, in {scope})")

    def _call_refusal(self, func: ast.expr, bound: set[str]) -> str | None:
        name = _dotted(func)
        if isinstance(func, ast.Name):
            if name in _BUILTINS or name in bound:
                return None
            return f"calls {name!r}, which is neither a pure builtin nor a function of the archive"
        if name.startswith(("torch.", "ops.")):
            return self._op_refusal(name)
        if name.startswith("__torch__."):
            return None if self._defined(name) else f"calls {name}, which the archive does not define"
        if isinstance(func, ast.Attribute):  # (obj).method(...): a method of the archive's classes
            if func.attr not in self.methods:
                return f"calls method {func.attr!r}, which no class of the archive defines"
            why = op_refusal(f"aten::{func.attr}")  # a builtin of the same name must be admitted too
            if why and why != "not an operator this torch knows":
                return f"calls method {func.attr!r}, also aten::{func.attr}, {why}"
            return None
        return "calls a computed callee, which TorchScript never writes"

    def _op_refusal(self, name: str) -> str | None:
        parts = name.split(".")
        if parts[0] == "torch" and len(parts) == 2:
            qualified = f"aten::{parts[1]}"
        elif parts[0] == "ops" and len(parts) == 3:
            qualified = f"{parts[1]}::{parts[2]}"
        else:
            return f"uses {name}, which is not an operator"
        why = op_refusal(qualified)
        return f"calls {qualified}, {why}" if why else None

    def _defined(self, name: str) -> bool:
        return name in self.functions or name in self.classes


def _scopes(tree: ast.Module):
    """(name, every node) for each function and method, and for the other statements of each class."""
    for top in tree.body:
        if isinstance(top, ast.ClassDef):
            rest = [n for stmt in top.body if not isinstance(stmt, ast.FunctionDef) for n in ast.walk(stmt)]
            yield top.name, rest
            for stmt in top.body:
                if isinstance(stmt, ast.FunctionDef):
                    yield stmt.name, list(ast.walk(stmt))
        else:
            yield getattr(top, "name", "the module"), list(ast.walk(top))


def _dotted(node: ast.expr) -> str:
    """'a.b.c' for a Name/Attribute chain, '' for anything else."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return ""
    parts.append(node.id)
    return ".".join(reversed(parts))


def _check_pickle(path: Path, rel: str, data: bytes, classes: set[str]) -> None:
    try:
        for op, arg, _ in pickletools.genops(data):
            if op.name == "GLOBAL":
                module, _, name = str(arg).partition(" ")
                if not (_PICKLE_GLOBALS.fullmatch(str(arg)) or (module.startswith("__torch__")
                                                                and f"{module}.{name}" in classes)):
                    _refuse(path, f"unpickles {module}.{name} ({rel}), which is neither a tensor nor a class of "
                                  "the archive")
            elif op.name in ("STACK_GLOBAL", "INST", "OBJ", "EXT1", "EXT2", "EXT4"):
                _refuse(path, f"has a pickle opcode TorchScript never writes ({op.name} in {rel})")
    except ValueError as e:  # pickletools: truncated or unknown opcodes
        _refuse(path, f"has a damaged pickle ({rel}: {e})")
