"""The zoo's data: scikit-learn's digits (ships offline) upsampled to 32x32, with a fixed split (numpy only).

Preprocessing, identical for every split and every model:
  1. each 8x8 image (pixel values 0..16) is upsampled to 32x32 with bilinear interpolation
     (half-pixel centres, edges clamped: what torch's `interpolate(..., mode="bilinear",
     align_corners=False)` computes), done here in numpy so it is exact and deterministic;
  2. values are scaled with `x / 16 - 0.5`, so every input lies in [-0.5, 0.5] (unit range;
     the dataset mean is about -0.2, most pixels being background).

Split: stratified 80/20 per class with `numpy.random.default_rng(SPLIT_SEED)`; it does not
depend on the scikit-learn version's own shuffling. Layouts: "image" is (N, 1, 32, 32) for the
CNN and the ViT, "rows" is (N, 32, 32) read as a 32-step sequence of 32-feature rows (LSTM).

The `test_*`, `calib_*` and `train_*` callables return feed dicts, usable as CLI data sources
(`edgeai.zoo.data:test_image`); the same arrays ship as .npz files in edgeai/zoo/data/.
"""
from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from edgeai.errors import DataError

SIZE = 32
SPLIT_SEED = 0
TEST_FRACTION = 0.2
CALIB_SAMPLES = 128
CALIB_SEED = 1
LAYOUTS = {"image": "image", "rows": "rows"}  # layout -> the model input name it feeds
SPLITS = ("train", "test")
DATA_DIR = Path(__file__).resolve().parent / "data"


def npz_path(kind: str, layout: str) -> Path:
    """Where the shipped .npz for `kind` ("test" or "calib") and `layout` lives."""
    return DATA_DIR / f"digits_{kind}_{layout}.npz"


def _bilinear_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) interpolation weights, half-pixel centres (align_corners=False)."""
    src = (np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5
    src = np.clip(src, 0.0, n_in - 1)
    lo = np.floor(src).astype(np.int64)
    hi = np.minimum(lo + 1, n_in - 1)
    frac = src - lo
    m = np.zeros((n_out, n_in), dtype=np.float64)
    m[np.arange(n_out), lo] += 1.0 - frac
    m[np.arange(n_out), hi] += frac
    return m


def upsample(images: np.ndarray, size: int = SIZE) -> np.ndarray:
    """(N, h, w) -> (N, size, size), bilinear, float64."""
    _, h, w = images.shape
    rows, cols = _bilinear_matrix(h, size), _bilinear_matrix(w, size)
    return np.einsum("oh,nhw,pw->nop", rows, images.astype(np.float64), cols)


def stratified_split(labels: np.ndarray, test_fraction: float = TEST_FRACTION,
                     seed: int = SPLIT_SEED) -> tuple[np.ndarray, np.ndarray]:
    """Sorted (train_idx, test_idx): round(test_fraction * n_c) of each class go to test."""
    rng = np.random.default_rng(seed)
    train, test = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_test = int(round(test_fraction * len(idx)))
        test.append(idx[:n_test])
        train.append(idx[n_test:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


@functools.lru_cache(maxsize=1)
def _prepared() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits  # reads the copy bundled with scikit-learn

    ds = load_digits()
    images = ds.images.astype(np.float64)  # (1797, 8, 8), values 0..16
    labels = ds.target.astype(np.int64)
    x = (upsample(images) / 16.0 - 0.5).astype(np.float32)  # (N, 32, 32) in [-0.5, 0.5]
    train_idx, test_idx = stratified_split(labels)
    for a in (x, labels, train_idx, test_idx):
        a.setflags(write=False)
    return x, labels, train_idx, test_idx


def digits(split: str = "train", layout: str = "image") -> tuple[np.ndarray, np.ndarray]:
    """float32 inputs ((N,1,32,32) for "image", (N,32,32) for "rows") and int64 labels."""
    if split not in SPLITS:
        raise DataError(f"unknown digits split {split!r}; choose one of {', '.join(SPLITS)}")
    if layout not in LAYOUTS:
        raise DataError(f"unknown digits layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
    x, labels, train_idx, test_idx = _prepared()
    idx = train_idx if split == "train" else test_idx
    xs = x[idx]  # fancy indexing copies, so callers may modify the result
    if layout == "image":
        xs = xs[:, None]  # (N, 32, 32) -> (N, 1, 32, 32)
    return np.ascontiguousarray(xs), labels[idx].copy()


def calibration(layout: str = "image", n: int = CALIB_SAMPLES) -> np.ndarray:
    """`n` training inputs drawn without replacement with a fixed seed (never test data)."""
    x, _ = digits("train", layout)
    pick = np.sort(np.random.default_rng(CALIB_SEED).choice(len(x), size=n, replace=False))
    return x[pick]


def test_image() -> dict[str, np.ndarray]:
    x, y = digits("test", "image")
    return {"image": x, "labels": y}


def test_rows() -> dict[str, np.ndarray]:
    x, y = digits("test", "rows")
    return {"rows": x, "labels": y}


def calib_image() -> dict[str, np.ndarray]:
    return {"image": calibration("image")}


def calib_rows() -> dict[str, np.ndarray]:
    return {"rows": calibration("rows")}


def train_image() -> dict[str, np.ndarray]:
    x, y = digits("train", "image")
    return {"image": x, "labels": y}


def train_rows() -> dict[str, np.ndarray]:
    x, y = digits("train", "rows")
    return {"rows": x, "labels": y}
