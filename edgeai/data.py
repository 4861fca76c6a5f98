"""Calibration/evaluation data: named sample arrays from an .npz, a .npy folder or a callable, checked."""
from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence, Union

import numpy as np

from edgeai.errors import DataError
from edgeai.imports import import_callable
from edgeai.specs import TensorSpec, check_finite, load_npz

log = logging.getLogger(__name__)

LABELS = "labels"   # the reserved array name for class labels (one per sample)
DataSource = Union[str, Path, Callable[[], Mapping[str, Any]], Mapping[str, Any]]

_CALLABLE_SPEC = re.compile(r"^(?P<target>.+):(?P<func>[A-Za-z_][A-Za-z0-9_]*)$")


def load_feeds(source: DataSource, specs: Sequence[TensorSpec] | None = None, *,
               what: str = "calibration data", min_samples: int = 1) -> dict[str, np.ndarray]:
    """Load samples stacked on axis 0 (the model's batch axis), one array per model input.

    `source` is one of:
    - an ``.npz`` file: one array per input name, plus an optional ``labels`` array;
    - a folder of ``.npy`` files: ``<input_name>.npy`` per input (samples stacked on axis 0),
      plus an optional ``labels.npy``; other files in the folder are ignored;
    - ``"package.module:function"`` or ``"path/to/file.py:function"``: a function taking no
      arguments and returning a dict {input name: array};
    - a callable returning such a dict, or the dict itself.

    With `specs` every input must be present (no other arrays but ``labels``), float data is
    cast to the spec dtype (integer inputs must hold integral values), and each array must
    have the spec's rank with its fixed non-batch dims. Every array, ``labels`` included,
    must hold the same number of samples, at least `min_samples`, all finite.
    Raises DataError saying what is wrong, naming `what` ("calibration data", ...).
    """
    raw = _read_source(source, what)
    feeds = {str(k): np.asarray(v) for k, v in raw.items()}
    if not feeds:
        raise DataError(f"{what} holds no arrays")
    if specs is not None:
        feeds = _match_specs(feeds, specs, what)
    _check_counts(feeds, what, min_samples)
    check_finite(feeds, f"{what}: array")
    return feeds


def split_labels(feeds: Mapping[str, np.ndarray]) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    """(inputs without ``labels``, the ``labels`` array or None)."""
    inputs = {k: v for k, v in feeds.items() if k != LABELS}
    return inputs, feeds.get(LABELS)


def check_class_ids(labels: np.ndarray, classes: int, what: str = "evaluation data") -> np.ndarray:
    """`labels` as int64 class ids in [0, classes), or a DataError naming the metrics that fit other labels."""
    labels = np.asarray(labels)
    if labels.dtype.kind == "b":
        labels = labels.astype(np.int64)
    problem = ""
    if labels.dtype.kind not in "iuf":
        problem = f"have dtype {labels.dtype}"
    elif labels.dtype.kind == "f" and not np.array_equal(labels, np.round(labels)):
        odd = labels[labels != np.round(labels)].ravel()[0]
        problem = f"hold fractional values such as {float(odd):g}"
    elif labels.size and (labels.min() < 0 or labels.max() >= classes):
        bad = labels[(labels < 0) | (labels >= classes)].ravel()[0]
        problem = f"hold {bad:g}, outside the model's {classes} classes (0 to {classes - 1})"
    if problem:
        raise DataError(f"{what}: '{LABELS}' {problem}, so they are not class ids for top-1 accuracy; for "
                        "other targets pass a metric that reads them (--metric FILE.py:FUNC), or leave "
                        "'labels' out to score cosine similarity to the reference")
    return labels.astype(np.int64)


def num_samples(feeds: Mapping[str, np.ndarray]) -> int:
    """Samples in `feeds` (the length of axis 0, equal for every array after load_feeds)."""
    first = next(iter(feeds.values()), None)
    return 0 if first is None or np.ndim(first) == 0 else int(np.shape(first)[0])


def iter_batches(feeds: Mapping[str, np.ndarray], batch_size: int) -> Iterator[dict[str, np.ndarray]]:
    """Consecutive slices of at most `batch_size` samples along axis 0 of every array."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    n = num_samples(feeds)
    for start in range(0, n, batch_size):
        yield {k: v[start:start + batch_size] for k, v in feeds.items()}


def take(feeds: Mapping[str, np.ndarray], n: int) -> dict[str, np.ndarray]:
    """The first `n` samples of every array."""
    return {k: v[:n] for k, v in feeds.items()}


def check_source_exists(source: DataSource, what: str) -> None:
    """DataError when `source` names a file or folder that does not exist (checked before any work)."""
    if isinstance(source, Mapping) or callable(source):
        return
    text = str(source)
    if Path(text).exists():
        return
    if text.endswith((".npz", ".npy")) or not _CALLABLE_SPEC.match(text):
        raise DataError(f"{what} {text!r} does not exist; pass an .npz file, a folder of .npy files, or "
                        "'module:function' / 'file.py:function'")


# ---------------------------------------------------------------- reading


def _read_source(source: DataSource, what: str) -> Mapping[str, Any]:
    if isinstance(source, Mapping):
        return source
    if callable(source):
        return _call(source, getattr(source, "__name__", repr(source)), what)
    text = str(source)
    path = Path(text)
    if path.is_dir():
        return _read_npy_folder(path, what)
    if path.is_file() or text.endswith(".npz"):
        return load_npz(path, what)
    m = _CALLABLE_SPEC.match(text)
    if m:
        return _call(import_callable(f"{m['target']}:{m['func']}", what, DataError), text, what)
    raise DataError(f"{what} {text!r} is neither an .npz file, a folder of .npy files, nor "
                    "'module:function' / 'file.py:function'")


def _read_npy_folder(folder: Path, what: str) -> dict[str, np.ndarray]:
    files = sorted(folder.glob("*.npy"))
    if not files:
        raise DataError(f"{what} folder {str(folder)!r} holds no .npy files; expected one "
                        "<input_name>.npy per model input (samples stacked on axis 0)")
    arrays = {}
    for f in files:
        try:
            arrays[f.stem] = np.load(f, allow_pickle=False)
        except Exception as e:  # truncated file, pickled object array, not an .npy at all
            raise DataError(f"{what}: {str(f)!r} is not a readable .npy file "
                            f"({type(e).__name__}: {e})") from None
    return arrays


def _call(fn: Callable, label: str, what: str) -> Mapping[str, Any]:
    try:
        result = fn()
    except Exception as e:
        raise DataError(f"{what}: {label} raised {type(e).__name__}: {e}") from None
    if not isinstance(result, Mapping):
        raise DataError(f"{what}: {label} returned {type(result).__name__}; it must return a dict "
                        "{input name: array with samples on axis 0}")
    return result


# ---------------------------------------------------------------- checking


def _match_specs(feeds: dict[str, np.ndarray], specs: Sequence[TensorSpec], what: str) -> dict[str, np.ndarray]:
    names = [s.name for s in specs]
    missing = [n for n in names if n not in feeds]
    if missing:
        raise DataError(f"{what} lacks input(s) {', '.join(missing)}; the model needs "
                        f"{', '.join(names)} (got {', '.join(feeds)})")
    extra = [k for k in feeds if k not in names and k != LABELS]
    if extra:
        raise DataError(f"{what} has array(s) {', '.join(extra)} that are not model inputs; the model "
                        f"needs {', '.join(names)} (and optionally '{LABELS}')")
    out = {}
    for spec in specs:
        arr = feeds[spec.name]
        want = "x".join(str(d) for d in spec.shape)
        got = "x".join(map(str, arr.shape)) or "scalar"
        if arr.ndim != len(spec.shape):
            raise DataError(f"{what}: input {spec.name!r} has shape {got}, the model wants {want} "
                            "(samples stacked on axis 0)")
        bad = [i for i, d in enumerate(spec.shape) if i > 0 and isinstance(d, int) and arr.shape[i] != d]
        if bad:
            raise DataError(f"{what}: input {spec.name!r} has shape {got}, the model wants {want} "
                            f"(dim {bad[0]} must be {spec.shape[bad[0]]})")
        out[spec.name] = _cast(arr, spec, what)
    if LABELS in feeds:
        out[LABELS] = feeds[LABELS]
    return out


def _cast(arr: np.ndarray, spec: TensorSpec, what: str) -> np.ndarray:
    if arr.dtype == np.dtype(spec.dtype):
        return arr
    if arr.dtype.kind not in "biuf":
        raise DataError(f"{what}: input {spec.name!r} has dtype {arr.dtype}, the model wants {spec.dtype}")
    target = np.dtype(spec.dtype)
    if target.kind in "iub" and arr.dtype.kind == "f":
        if not np.isfinite(arr).all() or not np.array_equal(arr, np.round(arr)):
            raise DataError(f"{what}: input {spec.name!r} holds non-integer floats but the model wants "
                            f"{spec.dtype}; store token ids / indices as integers")
    log.debug("casting %s input %r from %s to %s", what, spec.name, arr.dtype, target)
    return arr.astype(target)


def _check_counts(feeds: Mapping[str, np.ndarray], what: str, min_samples: int) -> None:
    scalars = [k for k, v in feeds.items() if v.ndim == 0]
    if scalars:
        raise DataError(f"{what}: array(s) {', '.join(scalars)} are scalars; stack samples on axis 0")
    counts = {k: int(v.shape[0]) for k, v in feeds.items()}
    if len(set(counts.values())) > 1:
        listed = ", ".join(f"{k}={n}" for k, n in counts.items())
        raise DataError(f"{what}: arrays hold different numbers of samples on axis 0 ({listed}); "
                        "every input (and labels) needs one entry per sample")
    n = next(iter(counts.values()))
    if n < min_samples:
        raise DataError(f"{what} needs at least {min_samples} samples, got {n}; add samples "
                        "(stacked on axis 0)")


