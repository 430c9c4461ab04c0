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
  device sync is counted in ``counters``; ``getDeviceProperties`` calls are counted too.

The module itself is the ``xp``: ``cupy_standin.zeros(...)``, ``cupy_standin.cuda.Device()``,
``cupy_standin.get_default_memory_pool()``, and ``scipy_fft`` stands in for ``cupyx.scipy.fft``.
"""
from __future__ import annotations

import functools
import sys
import threading
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
cuda = _Namespace(Device=_Device, runtime=runtime, Stream=_Stream, get_current_stream=get_current_stream)


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
