"""A strict CPU stand-in for CuPy, so that CI runs the GPU-marked test bodies on every push.

It is NOT a GPU run: arrays live in host memory and the math is NumPy's. What it
checks is the device-generic code's discipline, with CuPy's rules made strict:

- a device array (``ndarray`` here) refuses implicit conversion to NumPy:
  ``np.asarray(a)`` / ``__array__`` raise TypeError, as CuPy does;
- arithmetic, ``xp.*`` functions and item assignment refuse NumPy-array operands
  (Python and NumPy scalars are fine), so host arrays cannot leak into device code;
- reductions return 0-d device arrays (as CuPy), not host scalars;
- every host -> device copy (``asarray``/``array`` of host data), device -> host copy
  (``asnumpy``, ``.get()``, ``.item()``, ``.tolist()``, ``float()``, ``bool()``) and
  device sync is counted in ``counters``; ``getDeviceProperties`` calls are counted too;
- ``ndarray.data.ptr`` is a real address, and ``cublas`` (CuPy's ``cupy_backends.cuda.libs.cublas``
  calls that convcore makes) maps each pointer back to the array it came from and refuses what
  a GPU would not survive: reads or writes outside that allocation, a leading dimension below
  a matrix's rows, an output overlapping an input, device pointer mode with host scalars.

The module itself is the ``xp``: ``cupy_standin.zeros(...)``, ``cupy_standin.cuda.Device()``,
``cupy_standin.get_default_memory_pool()``, and ``scipy_fft`` stands in for ``cupyx.scipy.fft``.
"""
from __future__ import annotations

import ctypes
import functools
import sys
import threading
import weakref
from dataclasses import dataclass

import numpy as np
import scipy.fft

_STRICT_MESSAGE = ("Implicit conversion to a NumPy array is not allowed (cupy_standin, as CuPy). "
                   "Use .get() or xp.asnumpy() to copy to the host explicitly.")


@dataclass
class Counters:
    host_to_device: int = 0
    device_to_host: int = 0
    syncs: int = 0
    device_property_calls: int = 0
    pool_releases: int = 0
    gemm_calls: int = 0

    def reset(self) -> None:
        self.__init__()


counters = Counters()


class MixedOperandError(TypeError):
    """A NumPy array met a device array where CuPy would refuse it (or copy it silently)."""


def _unwrap(value):
    """Device arrays -> their NumPy storage; NumPy arrays refused; containers walked."""
    if isinstance(value, ndarray):
        return value._a
    if isinstance(value, np.ndarray):
        raise MixedOperandError(f"a NumPy array {value.shape} {value.dtype} was passed where a device array is "
                                f"required (cupy_standin refuses host operands; move it with xp.asarray)")
    if isinstance(value, (list, tuple)):
        return type(value)(_unwrap(v) for v in value)
    if isinstance(value, dict):
        return {k: _unwrap(v) for k, v in value.items()}
    return value


def _wrap(value):
    """NumPy results -> device arrays (scalars become 0-d arrays, as CuPy's reductions)."""
    if isinstance(value, np.ndarray):
        return ndarray(value)
    if isinstance(value, np.generic) and not isinstance(value, (np.str_, np.bytes_)):
        return ndarray(np.asarray(value))
    if isinstance(value, tuple):
        return tuple(_wrap(v) for v in value)
    if isinstance(value, list):
        return [_wrap(v) for v in value]
    return value


def _device_function(f):
    @functools.wraps(f)
    def call(*args, **kwargs):
        return _wrap(f(*_unwrap(args), **_unwrap(kwargs)))
    return call


def _operator(name):
    def op(self, other):
        return _wrap(getattr(self._a, name)(_unwrap(other)))
    op.__name__ = name
    return op


def _inplace(name):
    def op(self, other):
        getattr(self._a, name)(_unwrap(other))
        return self
    op.__name__ = name
    return op


def _unary(name):
    def op(self):
        return _wrap(getattr(self._a, name)())
    op.__name__ = name
    return op


class ndarray:  # noqa: N801 - CuPy's name
    """A device array of the stand-in: NumPy storage behind CuPy's rules."""

    __slots__ = ("_a",)
    __array_ufunc__ = None   # NumPy ufuncs and operators give way to ours, which refuse host arrays

    def __init__(self, storage: np.ndarray):
        self._a = storage

    def __array__(self, *args, **kwargs):
        raise TypeError(_STRICT_MESSAGE)

    def __array_function__(self, func, types, args, kwargs):
        raise TypeError(f"numpy.{func.__name__} on a device array: {_STRICT_MESSAGE}")

    # ---- metadata ----
    shape = property(lambda self: self._a.shape)
    dtype = property(lambda self: self._a.dtype)
    ndim = property(lambda self: self._a.ndim)
    size = property(lambda self: self._a.size)
    nbytes = property(lambda self: self._a.nbytes)
    itemsize = property(lambda self: self._a.itemsize)
    strides = property(lambda self: self._a.strides)
    flags = property(lambda self: self._a.flags)
    T = property(lambda self: ndarray(self._a.T))
    real = property(lambda self: ndarray(self._a.real))
    imag = property(lambda self: ndarray(self._a.imag))
    device = property(lambda self: cuda.Device())

    def __len__(self):
        return len(self._a)

    def __iter__(self):
        return (_wrap(v) for v in self._a)

    def __repr__(self):
        return f"cupy_standin.ndarray(shape={self.shape}, dtype={self.dtype})"

    # ---- explicit transfers (counted) ----
    def get(self):
        counters.device_to_host += 1
        return self._a.copy()

    def item(self):
        counters.device_to_host += 1
        return self._a.item()

    def tolist(self):
        counters.device_to_host += 1
        return self._a.tolist()

    def __float__(self):
        counters.device_to_host += 1
        return float(self._a)

    def __int__(self):
        counters.device_to_host += 1
        return int(self._a)

    def __bool__(self):
        counters.device_to_host += 1
        return bool(self._a)

    def __index__(self):
        raise TypeError("a device array cannot be used as a Python index")

    # ---- indexing ----
    def __getitem__(self, key):
        return _wrap(self._a[_unwrap(key)])

    def __setitem__(self, key, value):
        self._a[_unwrap(key)] = _unwrap(value)

    @property
    def data(self):
        """CuPy's MemoryPointer of the first element: ``.ptr`` is its address (read by cublas below)."""
        return _Pointer(self._a)

    def __getattr__(self, name):
        if name.startswith("__"):   # no __array_interface__ / __array_struct__ / buffer: no back door to NumPy
            raise AttributeError(name)
        attr = getattr(self._a, name)
        return _device_function(attr) if callable(attr) else _wrap(attr)

    __neg__, __pos__, __abs__, __invert__ = (_unary(n) for n in ("__neg__", "__pos__", "__abs__", "__invert__"))


for _name in ("add", "sub", "mul", "truediv", "floordiv", "mod", "pow", "matmul", "and", "or", "xor"):
    setattr(ndarray, f"__{_name}__", _operator(f"__{_name}__"))
    setattr(ndarray, f"__r{_name}__", _operator(f"__r{_name}__"))
    setattr(ndarray, f"__i{_name}__", _inplace(f"__i{_name}__"))
for _name in ("eq", "ne", "lt", "le", "gt", "ge"):
    setattr(ndarray, f"__{_name}__", _operator(f"__{_name}__"))
ndarray.__hash__ = None


# ---- transfers --------------------------------------------------------------------------


def asarray(a, dtype=None, order=None):
    """Host data -> a device array (counted); a device array is returned as is (or cast)."""
    if isinstance(a, ndarray):
        return a if dtype is None or a.dtype == dtype else a.astype(dtype)
    counters.host_to_device += 1
    return ndarray(np.array(a, dtype=dtype, order=order or "K", copy=True))


def array(a, dtype=None, copy=True, order="K", ndmin=0):
    if isinstance(a, ndarray):
        return ndarray(np.array(a._a, dtype=dtype, copy=copy, order=order, ndmin=ndmin))
    counters.host_to_device += 1
    return ndarray(np.array(a, dtype=dtype, copy=True, order=order, ndmin=ndmin))


def asnumpy(a, stream=None, order="C"):
    if isinstance(a, ndarray):
        return a.get()
    return np.asarray(a)


def get_array_module(*args):
    return sys.modules[__name__] if any(isinstance(a, ndarray) for a in args) else np


# ---- the device, its memory pool, cupyx.scipy.fft ---------------------------------------


class _Device:
    def __init__(self, device=None):
        self.id = runtime.getDevice() if device is None else int(device)

    def synchronize(self):
        counters.syncs += 1

    def use(self):
        runtime.current = self.id

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


class _Stream:
    """``cupy.cuda.Stream``: ``with stream:`` makes it the calling thread's current stream (CuPy's
    rule), which ``get_current_stream`` returns (the null stream otherwise)."""

    null: _Stream

    def __init__(self, null=False, non_blocking=False, ptds=False):
        self.ptr = 0 if null else id(self)   # CuPy's: the CUDA handle, 0 for the null stream
        self.non_blocking = bool(non_blocking)
        self._outer = []

    def synchronize(self):
        counters.syncs += 1

    def use(self):
        _current.stream = self
        return self

    def __enter__(self):
        self._outer.append(get_current_stream())
        return self.use()

    def __exit__(self, *exc):
        _current.stream = self._outer.pop()
        return False


_Stream.null = _Stream(null=True)
_current = threading.local()


def get_current_stream(device_id=None):
    return getattr(_current, "stream", _Stream.null)


class _Runtime:
    current = 0
    free_bytes = 12 * 2**30
    total_bytes = 16 * 2**30
    name = b"cupy_standin (CPU; not a GPU)"

    def getDevice(self):  # noqa: N802 - CUDA's names
        return self.current

    def getDeviceCount(self):  # noqa: N802
        return 1

    def getDeviceProperties(self, device):  # noqa: N802
        counters.device_property_calls += 1
        return {"name": self.name, "totalGlobalMem": self.total_bytes}

    def memGetInfo(self):  # noqa: N802
        return self.free_bytes, self.total_bytes


class _Namespace:
    def __init__(self, **items):
        self.__dict__.update(items)


runtime = _Runtime()


def _as_strided(x, shape=None, strides=None):
    """CuPy's signature: no ``subok`` or ``writeable`` (NumPy's extras fail here as on a GPU)."""
    return _wrap(np.lib.stride_tricks.as_strided(_unwrap(x), shape, strides))


lib = _Namespace(stride_tricks=_Namespace(as_strided=_as_strided))


def empty(shape, dtype=float, order="C"):
    """Uninitialised, as on a GPU, but deterministically so: floats are NaN and integers a large
    marker, so that code reading memory it never wrote fails every time, not by chance."""
    out = np.empty(shape, dtype, order)
    out.fill(np.nan if out.dtype.kind in "fc" else (-(2**62) if out.dtype.kind == "i" else 0xDEAD))
    return ndarray(out)


def empty_like(a, dtype=None, order="K", shape=None):
    return empty(a.shape if shape is None else shape, a.dtype if dtype is None else dtype,
                 "C" if order in ("K", "A") else order)


cuda = _Namespace(Device=_Device, runtime=runtime, Stream=_Stream, get_current_stream=get_current_stream,
                  device=_Namespace(get_cublas_handle=lambda: threading.get_ident()))


class _MemoryPool:
    cached = 0     # bytes held unused (a test sets it); freed by free_all_blocks

    def __init__(self):
        self.released_streams = []   # the ``stream`` of each free_all_blocks (None: every arena)

    def free_bytes(self):
        return self.cached

    def used_bytes(self):
        return 0

    def total_bytes(self):
        return self.cached

    def free_all_blocks(self, stream=None):
        counters.pool_releases += 1
        self.released_streams.append(stream)
        self.cached = 0


_pool, _pinned_pool = _MemoryPool(), _MemoryPool()


# ---- device pointers and cuBLAS ----------------------------------------------------------


class StandinError(RuntimeError):
    """A cuBLAS call that a GPU would reject, or whose reads or writes would leave the memory of
    the array its pointer came from (on a GPU: garbage or a crash)."""


_owners: dict = {}          # address of an allocation -> weakref to the NumPy array that owns it
_owners_lock = threading.Lock()


class _Pointer:
    """``ndarray.data``: ``ptr`` is the address of the first element; the allocation behind it is
    remembered so that cublas can map a pointer back to memory it may touch."""

    def __init__(self, a: np.ndarray):
        owner = a
        while isinstance(owner.base, np.ndarray):
            owner = owner.base
        start = owner.__array_interface__["data"][0]
        with _owners_lock:
            _owners[start] = weakref.ref(owner)
        self.ptr = a.__array_interface__["data"][0]


def _matrices(ptr, rows, cols, ld, stride, batch, dtype, what):
    """(batch, rows, cols) view of column-major matrices at device pointer ``ptr``: element
    (i, j) of matrix b at ptr + (i + j * ld + b * stride) elements, bounds-checked."""
    if ld < max(1, rows):
        raise StandinError(f"cublas: ld{what} = {ld} < max(1, {rows}) rows (CUBLAS_STATUS_INVALID_VALUE)")
    item = np.dtype(dtype).itemsize
    with _owners_lock:
        live = {start: ref() for start, ref in _owners.items()}
        for start in [start for start, owner in live.items() if owner is None]:
            del _owners[start], live[start]    # freed allocations
    for start, owner in live.items():
        if start <= ptr < start + owner.nbytes:
            break
    else:
        raise StandinError(f"cublas: {what} = {ptr:#x} is not in any device allocation")
    if owner.dtype != dtype:
        raise StandinError(f"cublas: {what} points into a {owner.dtype} array, the call reads {np.dtype(dtype)}")
    span = ((rows - 1) + (cols - 1) * ld + (batch - 1) * stride + 1) * item
    if ptr + span > start + owner.nbytes or stride < 0:
        raise StandinError(f"cublas: {what} reads {span} bytes from {ptr - start} of a {owner.nbytes}-byte allocation")
    if not (owner.flags.c_contiguous or owner.flags.f_contiguous) or (ptr - start) % item:
        raise StandinError(f"cublas: {what} is not an element of a whole allocation")
    flat = owner.ravel(order="K")[(ptr - start) // item:]          # a view: the allocation from ptr on
    return np.lib.stride_tricks.as_strided(flat, (batch, rows, cols), (stride * item, item, ld * item))


_GEMM_BLOCK = 2048    # elements of C per emulated block


class _Cublas:
    """``cupy_backends.cuda.libs.cublas``: the calls convcore makes, on raw pointers, held to cuBLAS's
    rules (column-major matrices, leading dimensions, host pointer mode, outputs not overlapping
    inputs); the products are NumPy's."""

    CUBLAS_OP_N, CUBLAS_OP_T = 0, 1
    CUBLAS_POINTER_MODE_HOST, CUBLAS_POINTER_MODE_DEVICE = 0, 1

    def __init__(self):
        self.modes = {}

    def getPointerMode(self, handle):  # noqa: N802 - cuBLAS's names
        return self.modes.get(handle, self.CUBLAS_POINTER_MODE_HOST)

    def setPointerMode(self, handle, mode):  # noqa: N802
        self.modes[handle] = mode

    def _gemm(self, dtype, handle, transa, transb, m, n, k, alpha, A, lda, strideA, B, ldb, strideB,
              beta, C, ldc, strideC, batch):
        if self.getPointerMode(handle) != self.CUBLAS_POINTER_MODE_HOST:
            raise StandinError("cublas: alpha and beta are host pointers, but the pointer mode is DEVICE")
        if min(m, n, k, batch) < 0 or transa not in (0, 1) or transb not in (0, 1):
            raise StandinError(f"cublas: invalid sizes or ops {m, n, k, batch, transa, transb}")
        counters.gemm_calls += 1
        if 0 in (m, n, batch):
            return
        scalar = ctypes.c_float if dtype == np.float32 else ctypes.c_double
        a_scale, c_scale = scalar.from_address(alpha).value, scalar.from_address(beta).value
        opA = _matrices(A, *((m, k) if transa == 0 else (k, m)), lda, strideA, batch, dtype, "A")
        opB = _matrices(B, *((k, n) if transb == 0 else (n, k)), ldb, strideB, batch, dtype, "B")
        out = _matrices(C, m, n, ldc, strideC, batch, dtype, "C")
        if np.may_share_memory(out, opA) or np.may_share_memory(out, opB):
            raise StandinError("cublas: C overlaps A or B (undefined on a GPU)")
        if batch > 1 and strideC < m + (n - 1) * ldc:
            raise StandinError("cublas: the batch's C matrices overlap")
        opA = opA if transa == 0 else opA.swapaxes(1, 2)
        opB = opB if transb == 0 else opB.swapaxes(1, 2)
        # in blocks of C, so that the emulation's temporaries stay small (cuBLAS itself allocates
        # nothing: the memory estimates are checked against this path's peak)
        rows = max(1, _GEMM_BLOCK // max(1, n))
        for b in range(batch):
            for i in range(0, m, rows):
                block = a_scale * np.matmul(opA[b, i:i + rows], opB[b])
                if c_scale == 0:                      # beta 0: C is never read
                    out[b, i:i + rows] = block
                else:
                    block += c_scale * out[b, i:i + rows]
                    out[b, i:i + rows] = block

    def sgemmStridedBatched(self, handle, *args):  # noqa: N802
        self._gemm(np.float32, handle, *args)

    def dgemmStridedBatched(self, handle, *args):  # noqa: N802
        self._gemm(np.float64, handle, *args)


cublas = _Cublas()


def get_default_memory_pool():
    return _pool


def get_default_pinned_memory_pool():
    return _pinned_pool


class _PlanCache:
    cleared = 0

    def clear(self):
        self.cleared += 1


_plan_cache = _PlanCache()
fft = _Namespace(config=_Namespace(get_plan_cache=lambda: _plan_cache))
scipy_fft = _Namespace(**{name: _device_function(getattr(scipy.fft, name)) for name in
                          ("fft", "ifft", "rfft", "irfft", "fftn", "ifftn", "rfftn", "irfftn", "next_fast_len")})


def __getattr__(name):
    """Everything else is NumPy's, held to the device rules: functions take and give device arrays."""
    attr = getattr(np, name)
    if isinstance(attr, type) or not callable(attr):
        return attr          # dtypes (float32, int64...) and constants (pi, newaxis, inf)
    return _device_function(attr)
