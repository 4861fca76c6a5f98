"""YAML/JSON values checked against a dataclass's annotations: one walker for recipes, configs, manifests.

Stdlib only. `build(cls, data)` makes `cls(**data)` after checking every value against the field's annotation
(bool, int, float, str, None, Optional/Union, Literal, tuple/list, Mapping/dict, Any, nested
dataclasses); lists become tuples where the field is a tuple. A mismatch raises FieldError naming
the field's path, the type expected and the value given; callers turn it into their EdgeAIError.
"""
from __future__ import annotations

import dataclasses
import functools
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any, Literal, Union

_BOOL_WORDS = {"true", "false", "yes", "no", "on", "off", "y", "n"}


class FieldError(ValueError):
    """A value does not have the type its field declares (or a key is unknown); `path` names the field."""

    def __init__(self, path: str, message: str):
        super().__init__(f"{path}: {message}" if path else message)
        self.path, self.message = path, message


def read_json(path) -> Any:
    """The JSON value in file `path`; ValueError saying what is wrong when it is not UTF-8 JSON (OSError passes)."""
    import json
    from pathlib import Path
    raw = Path(path).read_bytes()
    try:
        return json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise ValueError(f"not UTF-8 text (byte {raw[e.start]:#04x} at offset {e.start})") from None
    except RecursionError:
        raise ValueError("nested too deeply to be edgeai's JSON") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"not JSON: {e}") from None


@functools.lru_cache(maxsize=None)
def hints(cls: type) -> dict[str, Any]:
    """The resolved annotations of dataclass `cls`'s fields (strings under `from __future__ import annotations`);
    when they name something that cannot be imported here, no field is checked (Any)."""
    try:
        resolved = typing.get_type_hints(cls)
    except (NameError, TypeError):
        resolved = {}
    return {f.name: resolved.get(f.name, Any) for f in dataclasses.fields(cls)}


def build(cls: type, data: Any, path: str = "", strict: bool = True):
    """`cls(**data)` with every value checked; unknown keys are a FieldError when `strict`, else dropped."""
    return cls(**check_fields(cls, data, path, strict))


def check_fields(cls: type, data: Any, path: str = "", strict: bool = True) -> dict[str, Any]:
    """The keyword arguments for `cls`: `data` checked field by field and normalized (lists -> tuples)."""
    if not isinstance(data, Mapping):
        raise FieldError(path, f"expected {describe(cls)}, got {shown(data)}")
    types_ = hints(cls)
    unknown = sorted(str(k) for k in data if k not in types_)
    if unknown and strict:
        where = f" under {path!r}" if path else ""
        raise FieldError("", f"unknown key(s) {unknown}{where}; known: {', '.join(sorted(types_))}")
    return {k: check(v, types_[k], _join(path, k), strict) for k, v in data.items() if k in types_}


def check_instance(obj: Any, path: str = "") -> None:
    """FieldError unless every field of dataclass instance `obj` has its annotated type."""
    check_fields(type(obj), {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}, path)


def check(value: Any, tp: Any, path: str, strict: bool = True) -> Any:
    """`value` checked against annotation `tp` and normalized; FieldError naming `path` when it does not fit.
    Nested dataclasses given as mappings are built (unknown keys refused when `strict`, else dropped)."""
    if tp is Any or tp is object:
        return value
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (Union, types.UnionType):
        for option in args:
            try:
                return check(value, option, path, strict)
            except FieldError as e:
                if e.path != path:  # the value has this shape; the mistake is deeper inside it
                    raise
        raise FieldError(path, f"expected {describe(tp)}, got {shown(value)}")
    if origin is Literal:
        if any(value == a and type(value) is type(a) for a in args):
            return value
        raise FieldError(path, f"expected {describe(tp)}, got {shown(value)}")
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            check_instance(value, path)
            return value
        return build(tp, value, path, strict)
    if origin is not None:
        return _check_container(value, tp, origin, args, path, strict)
    return _check_scalar(value, tp, path)


def _check_container(value: Any, tp: Any, origin: Any, args: tuple, path: str, strict: bool) -> Any:
    if origin in (tuple, list, Sequence) or (isinstance(origin, type) and issubclass(origin, Sequence)
                                             and origin is not str):
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
            raise FieldError(path, f"expected {describe(tp)}, got {shown(value)}")
        if origin is tuple and args and not (len(args) == 2 and args[1] is Ellipsis):
            if len(value) != len(args):
                raise FieldError(path, f"expected {describe(tp)}, got {shown(value)}")
            items = [check(v, a, f"{path}[{i}]", strict) for i, (v, a) in enumerate(zip(value, args))]
        else:
            inner = args[0] if args else Any
            items = [check(v, inner, f"{path}[{i}]", strict) for i, v in enumerate(value)]
        return list(items) if origin is list else tuple(items)
    if isinstance(origin, type) and issubclass(origin, Mapping):
        if not isinstance(value, Mapping):
            raise FieldError(path, f"expected {describe(tp)}, got {shown(value)}")
        key_tp, value_tp = args if len(args) == 2 else (Any, Any)
        out = {}
        for k, v in value.items():
            check(k, key_tp, f"{path} key {k!r}")
            out[k] = check(v, value_tp, _join(path, str(k)), strict)
        return out
    if isinstance(origin, type):
        return _check_scalar(value, origin, path)
    return value  # an annotation this walker does not model (Callable, ...): the class checks it


def _check_scalar(value: Any, tp: Any, path: str) -> Any:
    if tp is type(None):
        ok = value is None
    elif tp is bool:
        ok = isinstance(value, bool)
    elif tp is int:
        if isinstance(value, float) and value.is_integer():
            return int(value)
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif tp is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    elif isinstance(tp, type):
        ok = isinstance(value, tp)
    else:
        return value
    if not ok:
        raise FieldError(path, f"expected {describe(tp)}, got {shown(value)}{_hint(value, tp)}")
    return value


def _hint(value: Any, tp: Any) -> str:
    if isinstance(value, str) and tp is bool and value.strip().lower() in _BOOL_WORDS:
        return "; write true or false without quotes"
    if isinstance(value, str) and tp in (int, float):
        try:
            float(value)
        except ValueError:
            return ""
        return ("; write the number without quotes, with a decimal point in exponents "
                "(1.0e-4: YAML reads 1e-4 as a string)")
    return ""


def describe(tp: Any) -> str:
    """An annotation in words: 'an integer', 'a list of strings', 'a number or null', ..."""
    if tp is Any:
        return "anything"
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (Union, types.UnionType):
        return " or ".join(describe(a) for a in args)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if dataclasses.is_dataclass(tp):
        names = [f.name for f in dataclasses.fields(tp)]
        return f"a mapping of {', '.join(names[:4])}{', ...' if len(names) > 4 else ''}"
    if origin is not None and isinstance(origin, type) and issubclass(origin, Mapping):
        if len(args) != 2 or (args[0] is Any and args[1] is Any):
            return "a mapping"
        return f"a mapping with {describe(args[0]).split(' ', 1)[-1]} keys" if args[1] is Any else \
            f"a mapping of {_plural(args[0])} to {_plural(args[1])}"
    if origin is not None and isinstance(origin, type) and issubclass(origin, (tuple, list, Sequence)):
        if origin is tuple and args and not (len(args) == 2 and args[1] is Ellipsis):
            return f"a list of {len(args)} ({', '.join(describe(a) for a in args)})"
        return f"a list of {_plural(args[0])}" if args else "a list"
    return _NAMES.get(tp, f"a {getattr(tp, '__name__', tp)}")


_NAMES = {bool: "true or false", int: "an integer", float: "a number", str: "a string", type(None): "null",
          dict: "a mapping", list: "a list", tuple: "a list"}
_PLURALS = {bool: "booleans", int: "integers", float: "numbers", str: "strings"}


def _plural(tp: Any) -> str:
    origin = typing.get_origin(tp) or tp
    if dataclasses.is_dataclass(tp) or (isinstance(origin, type) and issubclass(origin, Mapping)):
        return "mappings"
    if isinstance(origin, type) and issubclass(origin, (list, tuple)):
        return "lists"
    return _PLURALS.get(tp) or f"items that are {describe(tp)}"


def shown(value: Any) -> str:
    """A value as a user wrote it, with its YAML/JSON kind: "'abc' (a string)", "5 (an integer)"."""
    kind = ("null" if value is None else "a boolean" if isinstance(value, bool) else
            "an integer" if isinstance(value, int) else "a number" if isinstance(value, float) else
            "a string" if isinstance(value, str) else "a list" if isinstance(value, (list, tuple)) else
            "a mapping" if isinstance(value, Mapping) else type(value).__name__)
    text = repr(value)
    text = text if len(text) <= 60 else text[:57] + "..."
    return "null" if value is None else f"{text} ({kind})"


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key
