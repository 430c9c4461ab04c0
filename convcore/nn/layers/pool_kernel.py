"""Max pooling's compiled host loops (Numba): every window read once, its maximum and first arg-max
kept, any N.

The NumPy path (pooling.py) runs each kernel tap as a strided view of the whole batch: three
ufunc passes per tap over arrays whose innermost axis is the pooled output's last axis (4 or 2
cells for a 2x2 pool on 8^2 or 4^2 images), so per-call overhead dominated and a digits training
epoch spent a quarter of its time pooling. Here each image plane is one pass over its outputs,
a window being a set of flat offsets (``offsets``). Semantics are the NumPy path's: the maximum
propagates NaN (np.maximum), the arg-max is the first tap strictly larger than the running
maximum: on ties the first tap, as PyTorch; a window with a NaN sends its gradient to the first
maximum before the NaN, where PyTorch sends it to the NaN.

Shapes: x (planes, cells) C-contiguous, planes = n * c, cells = prod(d); base (outputs,) the flat
cell of each output's first tap, taps (K,) each tap's offset from it; y (planes, outputs),
arg (planes, outputs) uint8 or int32; gx (planes, cells).
"""
from __future__ import annotations

import functools
import itertools
import math

import numpy as np

from ... import numba_cache, resources



def _max_forward(x, base, taps, y, arg):   # pragma: no cover - compiled
    K = taps.shape[0]
    for p in range(x.shape[0]):
        row = x[p]
        for o in range(base.shape[0]):
            b = base[o]
            best = row[b + taps[0]]
            at = 0
            for t in range(1, K):   # selects, not branches: on random data a branch mispredicts half the time
                v = row[b + taps[t]]
                larger = v > best
                at = t if larger else at
                best = v if larger | (v != v) else best   # np.maximum: NaN wins
            y[p, o] = best
            arg[p, o] = at


def _max_backward(gy, arg, base, taps, gx):   # pragma: no cover - compiled
    for p in range(gy.shape[0]):
        for o in range(base.shape[0]):
            gx[p, base[o] + taps[arg[p, o]]] += gy[p, o]


@functools.cache
def _loops():
    """(forward, backward) dispatchers, or None where Numba does not import or compile."""
    return numba_cache.compiled((_max_forward, _max_backward), "max pooling runs in NumPy",
                                nogil=True, boundscheck=False)


def warm() -> None:
    """Build (or load from Numba's disk cache) the loops for float32 and float64 now: a service worker
    does so at start, so a training job's first pooling does not."""
    if _loops() is None or not resources.compiled_enabled():
        return
    for dtype in (np.float32, np.float64):
        x = np.zeros((1, 1, 2), dtype)
        y, arg = max_forward(x, (2,), (2,), (1,))
        max_backward(y, arg, (2,), (2,), x.shape)


def available(x) -> bool:
    """Whether the compiled loops run for ``x``: a NumPy float32/float64 array, Numba importable,
    ``CONVCORE_COMPILED`` not 0."""
    return (isinstance(x, np.ndarray) and x.dtype in (np.float32, np.float64) and resources.compiled_enabled()
            and _loops() is not None)


@functools.lru_cache(maxsize=64)
def offsets(spatial: tuple, kernel: tuple, stride: tuple, out_spatial: tuple) -> tuple:
    """(base, taps) int64 for one image plane of ``spatial`` cells: base[o] the flat cell of output
    o's first tap (outputs row-major), taps[t] tap t's offset from it (taps row-major)."""
    steps = [math.prod(spatial[j + 1:]) for j in range(len(spatial))]
    base = np.zeros(out_spatial, np.int64)
    for j, (o, s, st) in enumerate(zip(out_spatial, stride, steps)):
        shape = [1] * len(out_spatial)
        shape[j] = o
        base += (np.arange(o, dtype=np.int64) * (s * st)).reshape(shape)
    taps = np.array([sum(t * st for t, st in zip(tap, steps)) for tap in itertools.product(*(range(k) for k in kernel))],
                    np.int64)
    base.flags.writeable = taps.flags.writeable = False
    return base.reshape(-1), taps


def max_forward(x, kernel: tuple, stride: tuple, out_spatial: tuple) -> tuple:
    """(y (n, c, o...), arg (n, c, o...)) of max pooling x (n, c, d...)."""
    n, c, spatial = x.shape[0], x.shape[1], tuple(x.shape[2:])
    base, taps = offsets(spatial, tuple(kernel), tuple(stride), tuple(out_spatial))
    flat = np.ascontiguousarray(x).reshape(n * c, -1)
    y = np.empty((n * c, base.size), x.dtype)
    arg = np.empty((n * c, base.size), np.uint8 if taps.size <= 256 else np.int32)
    _loops()[0](flat, base, taps, y, arg)
    shape = (n, c) + tuple(out_spatial)
    return y.reshape(shape), arg.reshape(shape)


def max_backward(gy, arg, kernel: tuple, stride: tuple, x_shape: tuple):
    """gx (x_shape) of max pooling: each output's gradient added at its arg-max cell, zeros elsewhere."""
    n, c, spatial = x_shape[0], x_shape[1], tuple(x_shape[2:])
    base, taps = offsets(spatial, tuple(kernel), tuple(stride), tuple(gy.shape[2:]))
    gx = np.zeros((n * c, math.prod(spatial)), gy.dtype)
    _loops()[1](np.ascontiguousarray(gy).reshape(n * c, -1), arg.reshape(n * c, -1), base, taps, gx)
    return gx.reshape(x_shape)
