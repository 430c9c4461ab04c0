"""N-D max and average pooling (no padding, floor mode, as PyTorch's defaults) and global average pooling.

x (n, c, d_1..d_N) -> y (n, c, o_1..o_N) with o_j = (d_j - k_j) // s_j + 1.
Vectorised over positions: a loop over the K = prod(k) kernel taps, each a strided view of
x covering every output position at once, so nothing copies the windows (a reshape to
(n, c, o..., K) would, and NumPy reduces a short last axis slowly: 4-6x slower for 2x2).
"""
from __future__ import annotations

import itertools
import math

from ...backend import get_array_module
from . import pool_kernel
from .base import Layer, as_json, check_sizes, per_dim_option


class _Pool(Layer):
    def __init__(self, kernel_size=2, stride=None):
        super().__init__()
        self.kernel_size = kernel_size
        self.stride = stride
        check_sizes("kernel_size", kernel_size)
        if stride is not None:
            check_sizes("stride", stride)

    def _sizes(self, in_shape) -> tuple:
        """(kernel, stride) per spatial dim for a per-sample input shape (c, d_1..d_N)."""
        if len(in_shape) < 2:
            raise ValueError(f"{self.type_name} needs an input (c, d_1, ..., d_N) with N >= 1, got {in_shape}")
        n = len(in_shape) - 1
        k = per_dim_option("kernel_size", self.kernel_size, n)
        return k, (k if self.stride is None else per_dim_option("stride", self.stride, n))

    def output_shape(self, in_shape):
        k, s = self._sizes(in_shape)
        spatial = tuple(in_shape[1:])
        if any(kk > d for kk, d in zip(k, spatial)):
            raise ValueError(f"{self.type_name} kernel_size {k} is larger than the input {spatial}")
        return (in_shape[0],) + tuple((d - kk) // ss + 1 for d, kk, ss in zip(spatial, k, s))

    def init_params(self, rng, dtype, xp):
        self.k, self.s = self._sizes(self.in_shape)   # resolved once, at build

    def windows(self, out_spatial):
        """For each kernel tap, the strided slice of x that it reads for all outputs."""
        head = (slice(None), slice(None))
        for tap in itertools.product(*(range(k) for k in self.k)):
            yield head + tuple(slice(t, t + s * (o - 1) + 1, s) for t, s, o in zip(tap, self.s, out_spatial))

    def _prepare(self, x):
        self._x_shape = x.shape
        return tuple((d - k) // s + 1 for d, k, s in zip(x.shape[2:], self.k, self.s))

    @property
    def tiled(self) -> bool:
        return self.s == self.k

    def _gx(self, gy):
        """The input gradient's buffer: uninitialised when tiled windows cover all of x (every
        cell is written once), zeros otherwise."""
        xp = get_array_module(gy)
        covered = self.tiled and all(o * k == d for o, k, d in zip(gy.shape[2:], self.k, self._x_shape[2:]))
        return (xp.empty if covered else xp.zeros)(self._x_shape, dtype=gy.dtype)

    def config(self):
        return {"kernel_size": as_json(self.kernel_size), "stride": as_json(self.stride)}


class MaxPool(_Pool):
    type_name = "maxpool"

    def forward(self, x, training=False):
        """A running maximum over the K taps' strided views of x (no copy of the windows), and
        for the backward pass the first tap holding each maximum (PyTorch's choice on ties); on
        the host, the compiled loops of pool_kernel.py where they run (the same values)."""
        out_spatial = self._prepare(x)
        self._compiled = pool_kernel.available(x) and x.size > 0
        if self._compiled:
            y, self._arg = pool_kernel.max_forward(x, self.k, self.s, out_spatial)
            return y
        xp = get_array_module(x)
        y = arg = None
        for t, win in enumerate(self.windows(out_spatial)):
            v = x[win]
            if y is None:
                y = v.copy()
                arg = xp.zeros(v.shape, dtype=xp.uint8 if math.prod(self.k) <= 256 else xp.int32)
                continue
            larger = v > y   # strict: ties keep the first tap
            xp.maximum(y, v, out=y)
            xp.copyto(arg, arg.dtype.type(t), where=larger)   # a typed scalar: CuPy checks the cast
        self._arg = arg
        return y

    def backward(self, gy):
        if tuple(gy.shape) != tuple(self._arg.shape):   # (the compiled loop reads gy unchecked)
            raise ValueError(f"maxpool backward: gy must have the forward output's shape {tuple(self._arg.shape)}, "
                             f"got {tuple(gy.shape)}")
        # a dtype the loop was not compiled for takes the NumPy path (the same arg-max layout)
        if self._compiled and pool_kernel.available(gy):
            return pool_kernel.max_backward(gy, self._arg, self.k, self.s, self._x_shape)
        xp = get_array_module(gy)
        gx = self._gx(gy)
        for t, win in enumerate(self.windows(gy.shape[2:])):
            if self.tiled:   # windows do not overlap: each tap writes its own cells once
                xp.multiply(gy, self._arg == t, out=gx[win])
            else:
                gx[win] += gy * (self._arg == t)
        return gx


class AvgPool(_Pool):
    type_name = "avgpool"

    def forward(self, x, training=False):
        y = None
        for win in self.windows(self._prepare(x)):
            if y is None:
                y = x[win].copy()
            else:
                y += x[win]
        y *= x.dtype.type(1 / math.prod(self.k))
        return y

    def backward(self, gy):
        gx = self._gx(gy)
        share = gy * gy.dtype.type(1 / math.prod(self.k))
        for win in self.windows(gy.shape[2:]):
            if self.tiled:
                gx[win] = share
            else:
                gx[win] += share
        return gx


class GlobalAvgPool(Layer):
    """(n, c, d_1..d_N) -> (n, c): the mean over all spatial positions."""
    type_name = "global_avgpool"

    def output_shape(self, in_shape):
        if len(in_shape) < 2:
            raise ValueError(f"global_avgpool needs an input (c, d_1, ..., d_N) with N >= 1, got {in_shape}")
        return (in_shape[0],)

    def forward(self, x, training=False):
        self._x_shape = x.shape
        return x.mean(axis=tuple(range(2, x.ndim)))

    def backward(self, gy):
        xp = get_array_module(gy)
        size = math.prod(self._x_shape[2:])
        g = (gy / gy.dtype.type(size)).reshape(gy.shape + (1,) * (len(self._x_shape) - 2))
        return xp.broadcast_to(g, self._x_shape).copy()
