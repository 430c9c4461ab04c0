"""Checks of user-supplied datasets: an .npz with ``x`` (n, c, d_1..d_N) or (n, features) and ``y``:
class labels (n,), per-voxel labels (n, d_1..d_N), or field targets (n, c', d_1..d_N) (floats).

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
    except Exception as e:  # noqa: BLE001 - an uploaded archive: any failure to read it is the upload's
        # a compression method zipfile lacks, an encrypted member, a corrupt deflate or LZMA stream (each a
        # 500 once, found by probing: NotImplementedError, RuntimeError, zlib.error, LZMAError)
        raise DatasetError(f"cannot read x and y from the archive: {type(e).__name__}: {e}") from None
    for name, a in (("x", x), ("y", y)):
        if not isinstance(a, np.ndarray):  # NpzFile hands back raw bytes for a member that is not .npy
            raise DatasetError(f"cannot read x and y: {name}.npy in the archive is not a NumPy array")
    return validate_arrays(x, y, max_bytes=max_bytes)


def target_kind(x_shape: tuple, y) -> str:
    """What y is for x: "labels" (n,), "dense_labels" (n, d...) or "field" (n, c', d...); DatasetError otherwise."""
    n, spatial = x_shape[0], tuple(x_shape[2:])
    if y.ndim == 0 or y.shape[0] != n:
        raise DatasetError(f"y must have shape (n,) = ({n},) to match x {x_shape}, got {y.shape} "
                           f"(or (n, d...) for a class per voxel, (n, c, d...) for a field)")
    if y.ndim == 1:
        return "labels"
    if spatial and tuple(y.shape[1:]) == spatial:
        return "dense_labels"
    if spatial and y.ndim == len(x_shape) and tuple(y.shape[2:]) == spatial:
        return "field"
    raise DatasetError(f"y must have shape (n,) (a class per sample), (n, d_1..d_N) (a class per voxel) or "
                       f"(n, c, d_1..d_N) (a field) with x's spatial size {spatial} for x {x_shape}, got {y.shape}")


def validate_arrays(x, y, max_bytes: int = MAX_BYTES, n_classes: int | None = None):
    """(x float32, y, n_classes) after checking shapes, dtypes, finiteness, labels and size.

    y comes back int64 for labels (per sample or per voxel) or float32 for a field, whose n_classes is 0.
    """
    if not isinstance(x, np.ndarray) or not isinstance(y, np.ndarray):
        raise DatasetError(f"x and y must be arrays, got {type(x).__name__} and {type(y).__name__}")
    if x.dtype.kind not in "fiu":
        raise DatasetError(f"x must hold real numbers (float or int), got dtype {x.dtype}")
    if x.ndim < 2:
        raise DatasetError(f"x must have shape (n, c, d_1, ..., d_N) or (n, features), got {x.shape}")
    if x.ndim > 6:
        raise DatasetError(f"x has {x.ndim - 2} spatial dims; at most 4 are supported, got shape {x.shape}")
    kind = target_kind(x.shape, y)
    if kind != "field" and y.dtype.kind not in "iu" and not (
            y.dtype.kind == "f" and np.all(np.isfinite(y)) and np.all(y == np.round(y))):
        raise DatasetError(f"y must hold integer class labels, got dtype {y.dtype}")
    if kind == "field" and y.dtype.kind not in "fiu":
        raise DatasetError(f"y (a field) must hold real numbers, got dtype {y.dtype}")
    if x.shape[0] < 2 or min(x.shape) < 1 or min(y.shape) < 1:
        raise DatasetError(f"x must hold at least 2 non-empty samples, got shape {x.shape} (y {y.shape})")
    size = x.size * 4 + y.size * (4 if kind == "field" else 8)
    if size > max_bytes:
        raise DatasetError(f"x {x.shape} and y {y.shape} take {size} bytes as float32/int64; the limit is "
                           f"{max_bytes} bytes")
    x32 = _finite_float32("x", x)
    if kind == "field":
        return x32, _finite_float32("y", y), 0
    lo, hi = int(y.min()), int(y.max())   # in y's own dtype: a uint64 2**64 - 1 cast to int64 read -1
    limit = MAX_CLASSES if n_classes is None else n_classes
    if lo < 0 or hi >= limit:
        raise DatasetError(f"labels y must be in [0, {limit}), got min {lo} and max {hi}")
    return x32, y.astype(np.int64), (hi + 1 if n_classes is None else n_classes)


def _finite_float32(name: str, a):
    if a.dtype.kind == "f" and not np.isfinite(a).all():
        bad = np.argwhere(~np.isfinite(a))[0]
        raise DatasetError(f"{name} must be finite; {name}{tuple(int(i) for i in bad)} = {a[tuple(bad)]}")
    a32 = a.astype(np.float32)
    if not np.isfinite(a32).all():
        raise DatasetError(f"{name} has values beyond float32 range (max |{name}| = {np.abs(a).max()})")
    return a32
