"""Checks of user-supplied datasets: an .npz with ``x`` (n, c, d_1..d_N) or (n, features) and ``y`` (n,).

Every error is a ``DatasetError`` (a ValueError) whose message names the array and the values.
"""
from __future__ import annotations

import io
import zipfile

import numpy as np

MAX_BYTES = 256 * 2**20   # uncompressed size of x and y together
MAX_CLASSES = 1000


class DatasetError(ValueError):
    pass


def load_npz_bytes(data: bytes, max_bytes: int = MAX_BYTES):
    """(x float32, y int64, n_classes) from the raw bytes of an uploaded .npz, fully validated."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile:
        raise DatasetError("the upload is not an .npz file (not a zip archive); "
                           "write it with numpy.savez(file, x=..., y=...)") from None
    # Check declared sizes before decompressing anything: a small upload may inflate hugely.
    declared = sum(info.file_size for info in archive.infolist())
    if declared > max_bytes:
        raise DatasetError(f"the dataset is {declared} bytes uncompressed; the limit is {max_bytes} bytes")
    names = {n[:-4] if n.endswith(".npy") else n for n in archive.namelist()}
    if not {"x", "y"} <= names:
        raise DatasetError(f"the .npz must hold arrays named 'x' and 'y', found {sorted(names)}")
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            x, y = npz["x"], npz["y"]
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:  # object arrays need pickle: refused
        raise DatasetError(f"cannot read x and y without pickle: {e}") from None
    except MemoryError:  # an .npy header can declare a shape far larger than its data
        raise DatasetError("an array header in the .npz declares more data than can be allocated") from None
    for name, a in (("x", x), ("y", y)):
        if not isinstance(a, np.ndarray):  # NpzFile hands back raw bytes for a member that is not .npy
            raise DatasetError(f"cannot read x and y: {name}.npy in the archive is not a NumPy array")
    return validate_arrays(x, y, max_bytes=max_bytes)


def validate_arrays(x, y, max_bytes: int = MAX_BYTES, n_classes: int | None = None):
    """(x float32, y int64, n_classes) after checking shapes, dtypes, finiteness, labels and size."""
    if not isinstance(x, np.ndarray) or not isinstance(y, np.ndarray):
        raise DatasetError(f"x and y must be arrays, got {type(x).__name__} and {type(y).__name__}")
    if x.dtype.kind not in "fiu":
        raise DatasetError(f"x must hold real numbers (float or int), got dtype {x.dtype}")
    if y.dtype.kind not in "iu" and not (y.dtype.kind == "f" and np.all(np.isfinite(y)) and np.all(y == np.round(y))):
        raise DatasetError(f"y must hold integer class labels, got dtype {y.dtype}")
    if x.ndim < 2:
        raise DatasetError(f"x must have shape (n, c, d_1, ..., d_N) or (n, features), got {x.shape}")
    if x.ndim > 6:
        raise DatasetError(f"x has {x.ndim - 2} spatial dims; at most 4 are supported, got shape {x.shape}")
    if y.ndim != 1 or y.shape[0] != x.shape[0]:
        raise DatasetError(f"y must have shape (n,) = ({x.shape[0]},) to match x {x.shape}, got {y.shape}")
    if x.shape[0] < 2 or min(x.shape) < 1:
        raise DatasetError(f"x must hold at least 2 non-empty samples, got shape {x.shape}")
    size = x.shape[0] * int(np.prod(x.shape[1:])) * 4 + y.shape[0] * 8
    if size > max_bytes:
        raise DatasetError(f"x {x.shape} and y take {size} bytes as float32/int64; the limit is {max_bytes} bytes")
    if x.dtype.kind == "f" and not np.isfinite(x).all():
        bad = np.argwhere(~np.isfinite(x))[0]
        raise DatasetError(f"x must be finite; x{tuple(int(i) for i in bad)} = {x[tuple(bad)]}")
    x32 = x.astype(np.float32)
    if not np.isfinite(x32).all():
        raise DatasetError(f"x has values beyond float32 range (max |x| = {np.abs(x).max()})")
    y64 = y.astype(np.int64)
    lo, hi = int(y64.min()), int(y64.max())
    limit = MAX_CLASSES if n_classes is None else n_classes
    if lo < 0 or hi >= limit:
        raise DatasetError(f"labels y must be in [0, {limit}), got min {lo} and max {hi}")
    return x32, y64, (hi + 1 if n_classes is None else n_classes)
