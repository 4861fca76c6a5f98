"""Tensor specs (name, shape with named dynamic dims, dtype), their CLI syntax, and feeds (numpy only)."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence, Union

import numpy as np

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
        if tok.isdigit() and int(tok) > 0:
            shape.append(int(tok))
        elif _NAME.match(dim_name) and (not size or (size.isdigit() and int(size) > 0)):
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


def random_feeds(specs: Sequence[TensorSpec], sizes: Mapping[str, int] | None = None,
                 seed: int = 0) -> dict[str, np.ndarray]:
    """Random inputs matching `specs`: floats ~ N(0, 1); integers in {0, 1} (masks all ones)."""
    rng = np.random.default_rng(seed)
    shared: dict[str, int] = {}  # a dim name means one size across all inputs
    for spec in specs:
        shared.update(spec.example_sizes)
    shared.update(sizes or {})
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


def load_npz(path: str | Path, what: str = "input file") -> dict[str, np.ndarray]:
    """Load an .npz into an ordered dict of arrays, with one-line errors for bad files."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{what} {str(path)!r} does not exist")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except Exception as e:  # zipfile / pickle / format errors all mean "not a valid .npz"
        raise DataError(f"{what} {str(path)!r} is not a readable .npz file ({type(e).__name__}: {e})") from None
    if not arrays:
        raise DataError(f"{what} {str(path)!r} holds no arrays")
    return arrays


def check_finite(arrays: Mapping[str, np.ndarray], what: str) -> None:
    """DataError naming the first float array that holds NaN or Inf."""
    for k, a in arrays.items():
        if a.dtype.kind in "fc" and not np.isfinite(a).all():
            bad = int((~np.isfinite(a)).sum())
            raise DataError(f"{what}: array {k!r} has {bad} NaN/Inf value(s); clean the data first")


def check_feeds(specs: Sequence[TensorSpec], feeds: Mapping[str, np.ndarray]) -> None:
    """Raise InputSpecError naming the first feed that does not fit its spec."""
    names = [s.name for s in specs]
    missing = [n for n in names if n not in feeds]
    extra = [n for n in feeds if n not in names]
    if missing or extra:
        raise InputSpecError(f"inputs do not match the model: model wants {names}, got {list(feeds)}")
    for spec in specs:
        arr = np.asarray(feeds[spec.name])
        if arr.ndim != len(spec.shape) or any(
                isinstance(d, int) and d != s for d, s in zip(spec.shape, arr.shape)):
            want = "x".join(str(d) for d in spec.shape)
            raise InputSpecError(f"input {spec.name!r} has shape {'x'.join(map(str, arr.shape)) or 'scalar'}, "
                                 f"model wants {want}")
