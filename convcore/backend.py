"""The one array-backend switch: NumPy/SciPy on the CPU, CuPy on its GPU.

Everything else in convcore asks ``get_array_module`` for ``xp`` and calls the
FFT helpers here, so CPU and GPU share every line of the math.
"""
from __future__ import annotations

import contextlib
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import scipy.fft

try:  # CuPy is optional: the package must import and work without it.
    import cupy
except Exception:  # pragma: no cover - depends on the machine
    cupy = None

_CPU_WORKERS = os.cpu_count() or 1


def cupy_available() -> bool:
    """True when CuPy imports and sees at least one CUDA device."""
    if cupy is None:
        return False
    try:
        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:  # pragma: no cover - driver missing or broken
        return False


def is_cupy_array(a) -> bool:
    return cupy is not None and isinstance(a, cupy.ndarray)


def to_host(a):
    """A NumPy array on the host (CuPy arrays are copied back; None stays None)."""
    return a.get() if is_cupy_array(a) else a


def get_array_module(*arrays):
    """Return ``numpy`` or ``cupy`` for the given arrays (``None`` entries ignored).

    Raises TypeError naming the offending arguments when NumPy and CuPy arrays are
    mixed, or when an argument is not an array at all.
    """
    kinds = {}
    for name, a in _named(arrays):
        if is_cupy_array(a):
            kinds[name] = "cupy"
        elif isinstance(a, np.ndarray):
            kinds[name] = "numpy"
        else:
            raise TypeError(f"{name} must be a numpy or cupy ndarray, got {type(a).__name__}")
    if len(set(kinds.values())) > 1:
        listing = ", ".join(f"{k}={v}" for k, v in kinds.items())
        raise TypeError(f"inputs mix NumPy and CuPy arrays ({listing}); move them to one device")
    if "cupy" in kinds.values():
        return cupy
    return np


def _named(arrays):
    """Accept either bare arrays or (name, array) pairs; skip None."""
    for i, item in enumerate(arrays):
        if isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str):
            name, a = item
        else:
            name, a = f"argument {i}", item
        if a is not None:
            yield name, a


def _fft_module(xp):
    if xp is np:
        return scipy.fft, {"workers": _CPU_WORKERS}
    import cupyx.scipy.fft as cufft

    return cufft, {}


def _worth_pruning(extents, lengths) -> bool:
    """Axis-by-axis transforms pay off when the data fills well under half of some axis."""
    return any(2 * e <= n for e, n in zip(extents, lengths))


def rfftn(xp, a, shape, axes):
    """Real N-D FFT of ``a`` over ``axes``, zero-padded to ``shape``.

    A small array in a large transform (a filter of k^N taps in an L^N plan) is
    transformed one axis at a time, starting with the real axis, so lines made only
    of zero padding are never transformed: the cost drops by about k/L per axis.
    """
    fft, kw = _fft_module(xp)
    axes = [ax % a.ndim for ax in axes]
    if not _worth_pruning([a.shape[ax] for ax in axes], shape):
        return fft.rfftn(a, s=shape, axes=axes, **kw)
    out = fft.rfft(a, n=shape[-1], axis=axes[-1], **kw)
    for ax, n in zip(axes[-2::-1], shape[-2::-1]):
        out = fft.fft(out, n=n, axis=ax, **kw)
    return out


def irfftn(xp, a, shape, axes, crop=None):
    """Inverse of ``rfftn`` over ``axes``: real output of ``shape``, cut to its first ``crop``.

    When the crop keeps well under half of some axis (a filter gradient from an L^N
    plan), the complex axes are inverted one at a time and cut at once, so the real
    transforms at the end run only over the kept lines.
    """
    fft, kw = _fft_module(xp)
    axes = [ax % a.ndim for ax in axes]
    crop = tuple(shape) if crop is None else tuple(crop)
    if not _worth_pruning(crop, shape):
        out = fft.irfftn(a, s=shape, axes=axes, **kw)
    else:
        out = a
        for ax, n, c in zip(axes[:-1], shape[:-1], crop[:-1]):
            out = fft.ifft(out, n=n, axis=ax, **kw)
            out = out[(slice(None),) * ax + (slice(0, c),)]
        out = fft.irfft(out, n=shape[-1], axis=axes[-1], **kw)
    return out[(slice(None),) * axes[0] + tuple(slice(0, c) for c in crop)]


_pool = None
_blas_libs = None
_blas_saved: list = []
_blas_users = 0
_blas_lock = threading.Lock()


def matmul(xp, a, b):
    """``a @ b`` (stacked over leading axes) as every convcore product is computed.

    OpenBLAS synchronises its threads on every GEMM call; on a busy 2-core machine
    that makes small and batched products 5-80x slower at random. So on the CPU each
    GEMM runs single-threaded, and large products are split across a pool of Python
    threads instead (NumPy releases the GIL in matmul): over the leading batch axis
    when it is long enough (the per-frequency products), otherwise over result rows.
    """
    if a.shape[-1] <= BROADCAST_INNER:
        return _broadcast_matmul(xp, a, b)
    if xp is not np:
        return xp.matmul(a, b)
    shape = np.broadcast_shapes(a.shape[:-2], b.shape[:-2]) + (a.shape[-2], b.shape[-1])
    out = np.empty(shape, dtype=np.result_type(a, b))
    work = out.size * a.shape[-1]
    with _single_threaded_blas():
        if _CPU_WORKERS == 1 or work < SPLIT_WORK:
            np.matmul(a, b, out=out)
        elif len(shape) > 2 and shape[0] >= 2 * _CPU_WORKERS:
            _run_split(shape[0], lambda s: np.matmul(a[s], b[s], out=out[s]))
        else:
            _run_split(shape[-2], lambda s: np.matmul(a[..., s, :], b, out=out[..., s, :]))
    return out


BROADCAST_INNER = 2  # inner sizes up to this (depthwise, one channel) skip BLAS: one call per tiny matrix
SPLIT_WORK = 1 << 25  # multiply-adds below which handing work to threads costs more than it saves


def _broadcast_matmul(xp, a, b):
    """``a @ b`` for a tiny inner size k as k broadcast multiply-adds over the whole stack."""
    out = a[..., :, 0, None] * b[..., None, 0, :]
    for k in range(1, a.shape[-1]):
        out += a[..., :, k, None] * b[..., None, k, :]
    return out


@contextlib.contextmanager
def _single_threaded_blas():
    """BLAS at one thread while any caller is inside; the previous count restored by the last one out.

    Direct get/set calls on the libraries (microseconds, not a re-scan), counted under a lock
    so that concurrent callers (a threaded worker pool) never leave BLAS at one thread.
    """
    global _blas_libs, _blas_saved, _blas_users
    with _blas_lock:
        if _blas_libs is None:
            import threadpoolctl

            _blas_libs = [lib for lib in threadpoolctl.ThreadpoolController().lib_controllers
                          if lib.user_api == "blas"]
        if _blas_users == 0:
            _blas_saved = [lib.get_num_threads() for lib in _blas_libs]
            for lib in _blas_libs:
                lib.set_num_threads(1)
        _blas_users += 1
    try:
        yield
    finally:
        with _blas_lock:
            _blas_users -= 1
            if _blas_users == 0:
                for lib, n in zip(_blas_libs, _blas_saved):
                    lib.set_num_threads(n)


def _run_split(length, task):
    global _pool
    if _pool is None:
        _pool = ThreadPoolExecutor(_CPU_WORKERS)
    bounds = np.linspace(0, length, _CPU_WORKERS + 1).astype(int)
    list(_pool.map(task, [slice(lo, hi) for lo, hi in zip(bounds[:-1], bounds[1:])]))


def next_fast_len(n: int) -> int:
    """FFT-friendly size >= n for real transforms (2,3,5-smooth on both backends)."""
    return scipy.fft.next_fast_len(int(n), real=True)


def device_name(xp) -> str:
    """'cpu' for NumPy, the GPU's name for CuPy."""
    if xp is np:
        return "cpu"
    props = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
    name = props["name"]
    return name.decode() if isinstance(name, bytes) else str(name)
