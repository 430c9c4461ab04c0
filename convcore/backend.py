"""The one array-backend switch: NumPy/SciPy on the CPU, CuPy on its GPU.

Everything else in convcore asks ``get_array_module`` for ``xp`` and calls the
FFT helpers here, so CPU and GPU share every line of the math. Device array
modules are registered (CuPy when it imports; the tests' strict CuPy stand-in),
so code branches only on ``is_host_module(xp)``, never on CuPy by name.
"""
from __future__ import annotations

import contextlib
import functools
import importlib
import logging
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import scipy.fft

from . import dft_matmul
from .resources import FFTW_KEEPALIVE_S, cpu_count, fft_library, num_threads

log = logging.getLogger(__name__)

try:  # CuPy is optional: the package must import and work without it.
    import cupy
except Exception:  # pragma: no cover - depends on the machine
    cupy = None

__all__ = ["cpu_count", "num_threads", "get_array_module", "is_host_module", "is_device_array", "to_host",
           "rfftn", "irfftn", "matmul", "next_fast_len", "device_name", "synchronize",
           "register_device_module", "unregister_device_module", "cupy_available"]

# (array type, module, its scipy.fft-like module, its cuBLAS wrapper or None; either module may be
# a zero-argument loader of it)
_device_modules: list = []
if cupy is not None:  # pragma: no cover - depends on the machine
    _device_modules.append((cupy.ndarray, cupy, lambda: importlib.import_module("cupyx.scipy.fft"),
                            lambda: importlib.import_module("cupy_backends.cuda.libs.cublas")))


def register_device_module(module, array_type, fft_module, blas_module=None) -> None:
    """Treat ``array_type`` arrays as device arrays of ``module`` (a CuPy-like API), with
    ``fft_module`` (scipy.fft-like, or a zero-argument function returning it) for transforms and
    ``blas_module`` (CuPy's cuBLAS wrapper, ``cupy_backends.cuda.libs.cublas``, or a loader of it)
    for products of strided views; without one those products copy their operands."""
    _device_modules[:] = [e for e in _device_modules if e[1] is not module]
    _device_modules.append((array_type, module, fft_module, blas_module))


def unregister_device_module(module) -> None:
    _device_modules[:] = [e for e in _device_modules if e[1] is not module]


def is_host_module(xp) -> bool:
    """True for NumPy (arrays in host memory), False for a device module such as CuPy."""
    return xp is np


def _device_entry(a):
    for entry in _device_modules:
        if isinstance(a, entry[0]):
            return entry
    return None


def cupy_available() -> bool:
    """True when CuPy imports and sees at least one CUDA device."""
    if cupy is None:
        return False
    try:
        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:  # pragma: no cover - driver missing or broken
        return False


def is_device_array(a) -> bool:
    """True for an array of a registered device module (CuPy)."""
    return _device_entry(a) is not None



def to_host(a):
    """A NumPy array on the host (device arrays are copied back; None stays None)."""
    entry = _device_entry(a)
    return a if entry is None else entry[1].asnumpy(a)


def get_array_module(*arrays):
    """Return ``numpy`` or ``cupy`` for the given arrays (``None`` entries ignored).

    Raises TypeError naming the offending arguments when NumPy and CuPy arrays are
    mixed, or when an argument is not an array at all.
    """
    kinds, modules = {}, {}
    for name, a in _named(arrays):
        entry = _device_entry(a)
        if entry is not None:
            kinds[name] = "cupy"      # any registered device module speaks CuPy's API
            modules[entry[1].__name__] = entry[1]
        elif isinstance(a, np.ndarray):
            kinds[name] = "numpy"
            modules["numpy"] = np
        else:
            raise TypeError(f"{name} must be a numpy or cupy ndarray, got {type(a).__name__}")
    if len(modules) > 1:
        listing = ", ".join(f"{k}={v}" for k, v in kinds.items())
        raise TypeError(f"inputs mix NumPy and CuPy arrays ({listing}); move them to one device")
    return next(iter(modules.values()), np)


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
    """(scipy.fft-like module, keyword arguments) that transform ``xp``'s arrays."""
    if xp is np:
        module, options = _host_fft(fft_library())
        if module is not scipy.fft:   # FFTW: its plan cache on (and back on if anything switched it off)
            _keep_fftw_cache()
        return module, {"workers": num_threads(), **options}
    for _, module, fft, _ in _device_modules:
        if module is xp:
            return (fft() if callable(fft) else fft), {}
    raise TypeError(f"no FFT module registered for {getattr(xp, '__name__', xp)!r}")


# FFTW_MEASURE: the first call of a shape (per thread) times candidate plans, 0.15-0.65 s on the
# benchmark's layers. FFTW_ESTIMATE plans without timing, but its two-thread plan for 64 75^2
# transforms ran 14x slower than pocketfft (11.6 ms against 0.81; FFTW_MEASURE's 0.77).
FFTW_PLANNER = "FFTW_MEASURE"


@functools.lru_cache(maxsize=None)
def _host_fft(library: str) -> tuple:
    """(scipy.fft-like module, its extra keyword arguments) for ``CONVCORE_FFT``'s ``library``.

    ``fftw``: pyFFTW's scipy.fft interface with ``FFTW_PLANNER``'s plans; ``_fft_module`` keeps its plan
    cache on (planning on every call cost more than FFTW saved). The cache keys plans by thread, so convcore's
    threads and a worker's idle lane never share one. Where pyFFTW does not import, SciPy's, with a
    warning."""
    if library == "fftw":
        try:
            from pyfftw.interfaces import scipy_fft
        except ImportError as exc:
            log.warning("CONVCORE_FFT=fftw but pyFFTW does not import (%s): transforms run on SciPy's "
                        "pocketfft; pip install 'convnd[fftw]'", exc)
        else:
            return scipy_fft, {"planner_effort": FFTW_PLANNER}
    return scipy.fft, {}


def _keep_fftw_cache() -> None:
    """pyFFTW's interfaces' plan cache on, its plans kept ``FFTW_KEEPALIVE_S``. Its culling thread
    stops when the thread that turned the cache on ends (a pool or request thread, often): the cache is
    tied to the main thread instead, or its plans and their arrays would never be dropped."""
    from pyfftw.interfaces import cache
    if cache.is_enabled():
        return
    with _fftw_lock:
        if cache.is_enabled():
            return
        cache.enable()
        cache.set_keepalive_time(FFTW_KEEPALIVE_S)
        store = getattr(cache, "_fftw_cache", None)
        if hasattr(store, "_parent_thread"):
            store._parent_thread = threading.main_thread()
        else:   # pragma: no cover - a pyFFTW whose cache is built otherwise
            log.warning("pyFFTW's plan cache has no _parent_thread: its plans may outlive this thread")


_fftw_lock = threading.Lock()


def plans_on_first_call(xp) -> bool:
    """Whether ``xp``'s transforms plan the first time they see a shape (a device's FFT library,
    FFTW on the host): such a first call is not a fair timing (autoselect warms them up)."""
    return not is_host_module(xp) or _host_fft(fft_library())[0] is not scipy.fft


def blas_module(xp):
    """The cuBLAS wrapper registered for device module ``xp`` (None: none, the host, or a wrapper
    that does not import: products then go through the module's own matmul)."""
    for _, module, _, blas in _device_modules:
        if module is xp:
            try:
                return blas() if callable(blas) else blas
            except ImportError:
                return None
    return None


# Axis-by-axis transforms also pay where the data fill more than half of every axis but their passes
# over the array come to at most this fraction of a whole transform's (``pruned_passes``): a valid
# 5-D layer's 6^5 outputs of a 10^5 plan (0.46) took 0.70-0.77x the whole transform's time, and the
# layer 0.88x; 10^4 of 16^4 (0.56): inverse 0.66x, forward 0.89x, the layer 0.90x. 3-D 18^3 and 22^3
# of 32^3 (0.63, 0.72) left their layers as they were (0.95-1.07x), and 26^3 (0.82) on a 33 MB
# spectrum took 1.3x (docs/benchmarks.md, "Twenty-fifth round").
PRUNED_PASSES_MOST = 0.6


def pruned_passes(extents, lengths) -> float:
    """The passes over the data of an axis-by-axis transform, as a fraction of the whole transform's
    (one pass per axis over all of the plan): the pass along axis j runs over the lines of the axes
    before it at their extents (forward: from the last axis; inverse: cut as it goes, from the first)."""
    passes, carried = 0.0, 1.0
    for e, n in zip(extents, lengths):
        passes += carried
        carried *= min(e, n) / n
    return passes / max(len(lengths), 1)


def worth_pruning(extents, lengths) -> bool:
    """Axis-by-axis transforms pay off when the data fills well under half of some axis, or when their
    passes come to little of a whole transform's (``PRUNED_PASSES_MOST``)."""
    return (any(2 * e <= n for e, n in zip(extents, lengths))
            or pruned_passes(extents, lengths) <= PRUNED_PASSES_MOST)


def _lines(a, axis: int) -> int:
    """How many lines of ``a`` run along ``axis`` (0 for an empty array)."""
    return a.size // max(a.shape[axis], 1)


def rfftn(xp, a, shape, axes):
    """Real N-D FFT of ``a`` over ``axes``, zero-padded to ``shape``.

    A small array in a large transform (a filter of k^N taps in an L^N plan) is
    transformed one axis at a time, starting with the real axis, so lines made only
    of zero padding are never transformed: the cost drops by about k/L per axis.
    """
    fft, kw = _fft_module(xp)
    axes = [ax % a.ndim for ax in axes]
    if not worth_pruning([a.shape[ax] for ax in axes], shape):
        return fft.rfftn(a, s=shape, axes=axes, **kw)
    matrix = xp is np   # axes with little data: products with the DFT matrix's columns (dft_matmul)
    if matrix and dft_matmul.pays(a.shape[axes[-1]], shape[-1], _lines(a, axes[-1])):
        out = dft_matmul.forward_real(a, shape[-1], axes[-1], _split_rows)
    else:
        out = fft.rfft(a, n=shape[-1], axis=axes[-1], **kw)
    for ax, n in zip(axes[-2::-1], shape[-2::-1]):
        if matrix and dft_matmul.pays(out.shape[ax], n, _lines(out, ax)):
            out = dft_matmul.forward(out, n, ax, _split_rows)
        else:
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
    if not worth_pruning(crop, shape):
        out = fft.irfftn(a, s=shape, axes=axes, **kw)
    else:
        out = a
        matrix = xp is np   # outputs kept on little of an axis: the DFT matrix's rows (dft_matmul)
        for ax, n, c in zip(axes[:-1], shape[:-1], crop[:-1]):
            # (a strided spectrum would be copied whole first: a 1-D valid layer's y, channels last,
            # took 42 ms that way against the FFT's 17)
            if matrix and out.flags.c_contiguous and dft_matmul.pays(c, n, _lines(out, ax)):
                out = dft_matmul.inverse(out, n, c, ax, _split_rows)
            else:
                out = fft.ifft(out, n=n, axis=ax, **kw)
                out = out[(slice(None),) * ax + (slice(0, c),)]
        if matrix and out.flags.c_contiguous and dft_matmul.pays(crop[-1], shape[-1], _lines(out, axes[-1])):
            out = dft_matmul.inverse_real(out, shape[-1], crop[-1], axes[-1], _split_rows)
        else:
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
    threads = num_threads()
    with _single_threaded_blas():
        if threads == 1 or work < SPLIT_WORK:
            np.matmul(a, b, out=out)
        elif len(shape) > 2 and shape[0] >= 2 * threads:
            nd = len(shape)
            run_split(threads, shape[0], lambda s: np.matmul(_lead(a, s, nd), _lead(b, s, nd), out=out[s]))
        else:
            run_split(threads, shape[-2], lambda s: np.matmul(a[..., s, :], b, out=out[..., s, :]))
    return out


def _lead(arr, s: slice, nd: int):
    """The operand ``arr``'s part of the result's first-axis slice ``s`` (result of ``nd`` axes):
    all of it where that axis is broadcast (missing in ``arr`` or of size 1)."""
    return arr[s] if arr.ndim == nd and arr.shape[0] != 1 else arr


BROADCAST_INNER = 1  # inner size 1 (depthwise, one channel) skips BLAS: an outer product per matrix
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


def run_split(threads, length, task):
    """``task(s)`` for ``threads`` slices ``s`` covering range(length), on convcore's thread pool."""
    global _pool
    with _blas_lock:   # one pool per thread count: CONVCORE_NUM_THREADS is read on every call
        if _pool is None or _pool[0] != threads:
            old, _pool = _pool, (threads, ThreadPoolExecutor(threads, thread_name_prefix="convcore"))
            if old is not None:
                old[1].shutdown(wait=False)
        pool = _pool[1]
    bounds = [length * i // threads for i in range(threads + 1)]   # (np.linspace took 10 us a call)
    list(pool.map(task, [slice(lo, hi) for lo, hi in zip(bounds[:-1], bounds[1:])]))


def _split_rows(total: int, task) -> None:
    """``task(slice)`` over range(total) in one part per thread (NumPy releases the GIL in matmul),
    BLAS single-threaded meanwhile (the parts are the parallelism): dft_matmul's products."""
    threads = min(num_threads(), total)
    with _single_threaded_blas():
        if threads <= 1:
            task(slice(0, total))
        else:
            run_split(threads, total, task)


def next_fast_len(n: int) -> int:
    """FFT-friendly size >= n for real transforms (2,3,5-smooth on both backends)."""
    return scipy.fft.next_fast_len(int(n), real=True)


_device_names: dict = {}   # (module, device id) -> name


def device_name(xp) -> str:
    """'cpu' for NumPy, the current GPU's name for CuPy (asked of the driver once per device)."""
    if xp is np:
        return "cpu"
    key = (xp.__name__, xp.cuda.runtime.getDevice())
    if key not in _device_names:
        name = xp.cuda.runtime.getDeviceProperties(key[1])["name"]
        _device_names[key] = name.decode() if isinstance(name, bytes) else str(name)
    return _device_names[key]


def synchronize(xp) -> None:
    """Wait for the work this thread queued on the device (its current stream; a no-op on the host):
    timings must include it. Not the whole device: another thread's work on another stream (a
    training job beside a worker's fast lane) is not waited for."""
    if xp is not np:
        xp.cuda.get_current_stream().synchronize()


_thread_streams = threading.local()


@contextlib.contextmanager
def thread_stream(xp):
    """Run the block on a CUDA stream of the calling thread's own (a no-op on the host).

    The stream is non-blocking: it does not wait for, nor hold up, work on the legacy default
    stream, where another thread's long job (a training step) runs. So arrays the block reads that
    were made on another stream must be complete first (synchronize that stream): nothing orders
    the two. Kept per thread and device, so that CuPy's memory pool and cuFFT plans see one stream
    per thread."""
    if is_host_module(xp):
        yield None
        return
    streams = _thread_streams.__dict__.setdefault("by_device", {})
    device = xp.cuda.runtime.getDevice()
    stream = streams.get(device)
    if stream is None:
        stream = streams[device] = xp.cuda.Stream(non_blocking=True)
    with stream:
        yield stream
