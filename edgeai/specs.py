"""Tensor specs (name, shape with named dynamic dims, dtype), their CLI syntax, and feeds (numpy only)."""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence, Union

import numpy as np

from edgeai.argtypes import is_count
from edgeai.errors import DataError, InputSpecError

Dim = Union[int, str]  # an int is fixed; a str names a dynamic dimension ("batch", "seq")

DTYPES = ("float32", "float16", "float64", "int64", "int32", "int8", "uint8", "bool")
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]*$")


@dataclass(frozen=True)
class TensorSpec:
    """One model input or output: its name, shape (ints fixed, strings dynamic) and dtype."""

    name: str
    shape: tuple[Dim, ...]
    dtype: str = "float32"
    # example size for each named dim, used when inputs must be generated ({"seq": 16})
    example_sizes: Mapping[str, int] = field(default_factory=dict, compare=False)

    @property
    def dynamic_dims(self) -> tuple[str, ...]:
        return tuple(d for d in self.shape if isinstance(d, str))

    def to_dict(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}

    @classmethod
    def from_dict(cls, d: Mapping) -> "TensorSpec":
        return cls(d["name"], tuple(d["shape"]), d.get("dtype", "float32"))

    def __str__(self) -> str:
        return f"{self.name}:{','.join(str(d) for d in self.shape)}:{self.dtype}"


def parse_input_spec(text: str) -> TensorSpec:
    """Parse `NAME:DIM,DIM,...[:DTYPE]`; a DIM is an int, a name (dynamic) or name=example size.

    >>> parse_input_spec("x:batch,3,224,224")
    >>> parse_input_spec("input_ids:batch,seq=16:int64")
    """
    usage = ("expected NAME:DIM,DIM,...[:DTYPE], e.g. 'image:batch,3,224,224' or "
             "'input_ids:batch,seq=16:int64' (a named dim is dynamic; name=N sets its example size)")
    parts = text.strip().split(":")
    if len(parts) not in (2, 3) or not parts[0] or not parts[1]:
        raise InputSpecError(f"bad --input {text!r}: {usage}")
    name, dims_text = parts[0], parts[1]
    dtype = parts[2] if len(parts) == 3 else "float32"
    if not _NAME.match(name):
        raise InputSpecError(f"bad --input {text!r}: {name!r} is not a valid input name")
    if dtype not in DTYPES:
        raise InputSpecError(f"bad --input {text!r}: unknown dtype {dtype!r}; known: {', '.join(DTYPES)}")
    shape: list[Dim] = []
    examples: dict[str, int] = {}
    for tok in dims_text.split(","):
        tok = tok.strip()
        dim_name, _, size = tok.partition("=")
        if is_count(tok) and int(tok) > 0:
            shape.append(int(tok))
        elif _NAME.match(dim_name) and (not size or (is_count(size) and int(size) > 0)):
            shape.append(dim_name)
            if size:
                examples[dim_name] = int(size)
        else:
            raise InputSpecError(f"bad --input {text!r}: dimension {tok!r} is neither a positive "
                                 f"integer nor a name; {usage}")
    return TensorSpec(name, tuple(shape), dtype, examples)


# Example sizes for named dims: never 1 (exporters specialise size-1 dims), and a different
# size for the second verification shape.
DEFAULT_DIM_SIZE = 2
SECOND_SHAPE_DELTA = 3


def concrete_shape(spec: TensorSpec, sizes: Mapping[str, int] | None = None) -> tuple[int, ...]:
    sizes = {**spec.example_sizes, **(sizes or {})}
    return tuple(d if isinstance(d, int) else int(sizes.get(d, DEFAULT_DIM_SIZE)) for d in spec.shape)


def dim_sizes(specs: Sequence[TensorSpec], feeds: Mapping[str, np.ndarray]) -> dict[str, int]:
    """The size each named dim has in `feeds` (first input that has it)."""
    sizes: dict[str, int] = {}
    for spec in specs:
        for axis, d in enumerate(spec.shape):
            if isinstance(d, str):
                sizes.setdefault(d, int(np.shape(feeds[spec.name])[axis]))
    return sizes


def resize_along(arr: np.ndarray, axis: int, new: int) -> np.ndarray:
    """`arr` with `new` entries along `axis`: cut, or tiled from its own values (ids stay valid)."""
    reps = -(-new // arr.shape[axis])
    tiled = np.concatenate([arr] * reps, axis=axis) if reps > 1 else arr
    return np.take(tiled, np.arange(new), axis=axis)


# generated inputs larger than this are refused before allocating (a typo such as 100000,100000)
MAX_GENERATED_BYTES = 2 << 30


def random_feeds(specs: Sequence[TensorSpec], sizes: Mapping[str, int] | None = None,
                 seed: int = 0) -> dict[str, np.ndarray]:
    """Random inputs matching `specs`: floats ~ N(0, 1); integers in {0, 1} (masks all ones)."""
    rng = np.random.default_rng(seed)
    shared: dict[str, int] = {}  # a dim name means one size across all inputs
    for spec in specs:
        shared.update(spec.example_sizes)
    shared.update(sizes or {})
    _check_size(specs, shared)
    feeds = {}
    for spec in specs:
        shape = concrete_shape(spec, shared)
        if spec.dtype.startswith("float"):
            feeds[spec.name] = rng.standard_normal(shape).astype(spec.dtype)
        elif spec.dtype == "bool":
            feeds[spec.name] = np.ones(shape, dtype=bool)
        elif "mask" in spec.name.lower():
            feeds[spec.name] = np.ones(shape, dtype=spec.dtype)
        else:
            feeds[spec.name] = rng.integers(0, 2, size=shape).astype(spec.dtype)
    return feeds


def _check_size(specs: Sequence[TensorSpec], sizes: Mapping[str, int]) -> None:
    """InputSpecError when the inputs `specs` describe would not fit in memory (estimated first)."""
    nbytes = {s.name: math.prod(concrete_shape(s, sizes)) * np.dtype(s.dtype).itemsize for s in specs}
    total = sum(nbytes.values())
    if total > MAX_GENERATED_BYTES:
        biggest = max(nbytes, key=nbytes.get)
        spec = next(s for s in specs if s.name == biggest)
        shape = "x".join(map(str, concrete_shape(spec, sizes)))
        raise InputSpecError(f"inputs of these shapes would take {total / 2**30:.3g} GiB (input {biggest!r} is "
                             f"{shape} {spec.dtype}), more than the {MAX_GENERATED_BYTES / 2**30:g} GiB edgeai "
                             "generates; check the dimensions (is a size mistyped?)")


def load_npz(path: str | Path, what: str = "input file") -> dict[str, np.ndarray]:
    """Load an .npz into an ordered dict of arrays, with one-line errors for bad files."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{what} {str(path)!r} does not exist")
    try:
        with np.load(path, allow_pickle=False) as z:  # never unpickle: a data file must not run code
            arrays = {k: z[k] for k in z.files}
    except ValueError as e:
        if "allow_pickle" not in str(e):
            raise DataError(f"{what} {str(path)!r} is not a readable .npz file (ValueError: {e})") from None
        raise DataError(f"{what} {str(path)!r} is not a readable .npz file: it holds an object array (pickled "
                        "Python objects), and edgeai never unpickles data; save numbers with numpy.savez") from None
    except Exception as e:  # zipfile / format errors all mean "not a valid .npz"
        raise DataError(f"{what} {str(path)!r} is not a readable .npz file ({type(e).__name__}: {e})") from None
    raw = [k for k, v in arrays.items() if not isinstance(v, np.ndarray)]
    if raw:  # np.load hands back the bytes of a member that is not in .npy format (a raw pickle, ...)
        raise DataError(f"{what} {str(path)!r} is not a readable .npz file: member {raw[0]!r} is not a NumPy .npy "
                        "array (a raw pickle or another file inside the zip), and edgeai never unpickles data; save "
                        "arrays with numpy.savez")
    if not arrays:
        raise DataError(f"{what} {str(path)!r} holds no arrays")
    return arrays


def non_finite(a: np.ndarray) -> str:
    """'3 NaN values', '1 NaN and 2 Inf values', or '' for an array that is all finite (or not float)."""
    a = np.asarray(a)
    if a.dtype.kind not in "fc" or np.isfinite(a).all():
        return ""
    nan = int(np.isnan(a).sum())
    inf = int(np.isinf(a).sum())
    parts = [f"{n} {kind}" for n, kind in ((nan, "NaN"), (inf, "Inf")) if n]
    return " and ".join(parts) + (" value" if nan + inf == 1 else " values")


def check_finite(arrays: Mapping[str, np.ndarray], what: str) -> None:
    """DataError naming the first float array that holds NaN or Inf: "example input 'x' has 3 NaN values"."""
    for k, a in arrays.items():
        bad = non_finite(a)
        if bad:
            raise DataError(f"{what} {k!r} has {bad}; clean the data first")


def check_examples(arrays: Mapping[str, np.ndarray]) -> None:
    """Example inputs must be numbers, hold at least one sample on every axis, and be finite."""
    for k, a in arrays.items():
        if a.dtype.kind not in "biuf":
            raise InputSpecError(f"example input {k!r} holds {a.dtype} values ({_kind_name(a)}); the model "
                                 "takes numbers")
        if a.size == 0:
            raise InputSpecError(f"example input {k!r} has shape {'x'.join(map(str, a.shape)) or 'scalar'}: "
                                 "no values; give at least one sample")
    check_finite(arrays, "example input")


def check_feeds(specs: Sequence[TensorSpec], feeds: Mapping[str, np.ndarray]) -> None:
    """Raise InputSpecError naming the first feed that does not fit its spec."""
    names = [s.name for s in specs]
    missing = [n for n in names if n not in feeds]
    extra = [n for n in feeds if n not in names]
    if missing or extra:
        raise InputSpecError(f"inputs do not match the model: model wants {names}, got {list(feeds)}")
    for spec in specs:
        arr = np.asarray(feeds[spec.name])
        if arr.dtype.kind not in "biuf":
            raise InputSpecError(f"input {spec.name!r} holds {arr.dtype} values ({_kind_name(arr)}), the model "
                                 f"wants {spec.dtype}; store numbers in the .npz")
        if arr.ndim != len(spec.shape) or any(
                isinstance(d, int) and d != s for d, s in zip(spec.shape, arr.shape)):
            want = "x".join(str(d) for d in spec.shape)
            raise InputSpecError(f"input {spec.name!r} has shape {'x'.join(map(str, arr.shape)) or 'scalar'}, "
                                 f"model wants {want}")
        if arr.size == 0:  # runtimes abort or fail on empty tensors (onnxruntime's LSTM kills the process)
            raise InputSpecError(f"input {spec.name!r} has shape {'x'.join(map(str, arr.shape))}: a dimension "
                                 "of size 0 holds no data; give at least one sample and element")


def _kind_name(arr: np.ndarray) -> str:
    return {"U": "text", "S": "bytes", "O": "Python objects", "c": "complex numbers", "M": "dates",
            "m": "time deltas", "V": "raw records"}.get(arr.dtype.kind, "not numbers")
