"""The one array-backend switch: NumPy/SciPy on the CPU, CuPy on its GPU.

Everything else in convcore asks ``get_array_module`` for ``xp`` and calls the
FFT helpers here, so CPU and GPU share every line of the math.
"""
from __future__ import annotations

import os
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


def rfftn(xp, a, shape, axes):
    """Real N-D FFT of ``a`` over ``axes`` zero-padded to ``shape``."""
    if xp is np:
        return scipy.fft.rfftn(a, s=shape, axes=axes, workers=_CPU_WORKERS)
    import cupyx.scipy.fft as cufft

    return cufft.rfftn(a, s=shape, axes=axes)


def irfftn(xp, a, shape, axes):
    """Inverse of ``rfftn``: real output of ``shape`` over ``axes``."""
    if xp is np:
        return scipy.fft.irfftn(a, s=shape, axes=axes, workers=_CPU_WORKERS)
    import cupyx.scipy.fft as cufft

    return cufft.irfftn(a, s=shape, axes=axes)


_pool = None
_blas = None


def batched_matmul(xp, a, b):
    """``a @ b`` over a large leading batch of small matrices (the per-frequency products).

    OpenBLAS synchronises its threads on every small GEMM, which costs 5-20x on a busy
    2-core machine. So on the CPU each GEMM runs single-threaded and the batch is split
    across a pool of Python threads instead (NumPy releases the GIL inside matmul).
    """
    if xp is not np:
        return xp.matmul(a, b)
    global _pool, _blas
    if _blas is None:
        import threadpoolctl

        _blas = threadpoolctl.ThreadpoolController()
        _pool = ThreadPoolExecutor(_CPU_WORKERS) if _CPU_WORKERS > 1 else None
    shape = np.broadcast_shapes(a.shape[:-2], b.shape[:-2]) + (a.shape[-2], b.shape[-1])
    out = np.empty(shape, dtype=np.result_type(a, b))
    with _blas.limit(limits=1, user_api="blas"):
        batch = shape[0]
        if _pool is None or batch < 2 * _CPU_WORKERS:
            np.matmul(a, b, out=out)
        else:
            bounds = np.linspace(0, batch, _CPU_WORKERS + 1).astype(int)
            parts = [slice(lo, hi) for lo, hi in zip(bounds[:-1], bounds[1:])]
            list(_pool.map(lambda s: np.matmul(a[s], b[s], out=out[s]), parts))
    return out


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
