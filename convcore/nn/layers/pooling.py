"""N-D max and average pooling (no padding, floor mode, as PyTorch's defaults) and global average pooling.

x (n, c, d_1..d_N) -> y (n, c, o_1..o_N) with o_j = (d_j - k_j) // s_j + 1.
Vectorised over positions. Non-overlapping windows (stride == kernel, the usual case)
are one reshape to (n, c, o..., K) with K = prod(k); overlapping ones loop over the K
kernel taps, each a strided view of x covering every output position at once.
"""
from __future__ import annotations

import itertools
import math

from ...backend import get_array_module
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

    def to_blocks(self, x, out):
        """(n, c, d...) -> (n, c, o..., K): the windows of a tiled pooling, taps last in row-major order."""
        N = len(out)
        crop = x[(slice(None), slice(None)) + tuple(slice(0, o * k) for o, k in zip(out, self.k))]
        split = crop.reshape(x.shape[:2] + sum(((o, k) for o, k in zip(out, self.k)), ()))
        order = (0, 1) + tuple(2 + 2 * j for j in range(N)) + tuple(3 + 2 * j for j in range(N))
        return split.transpose(order).reshape(x.shape[:2] + tuple(out) + (-1,))

    def from_blocks(self, g, out):
        """Adjoint of ``to_blocks``: (n, c, o..., K) -> (n, c, d...), zeros where no window reads."""
        xp, N = get_array_module(g), len(out)
        g = g.reshape(g.shape[:2 + N] + self.k)
        order = (0, 1) + sum(((2 + j, 2 + N + j) for j in range(N)), ())
        g = g.transpose(order).reshape(g.shape[:2] + tuple(o * k for o, k in zip(out, self.k)))
        gx = xp.zeros(self._x_shape, dtype=g.dtype)
        gx[(slice(None), slice(None)) + tuple(slice(0, d) for d in g.shape[2:])] = g
        return gx

    def config(self):
        return {"kernel_size": as_json(self.kernel_size), "stride": as_json(self.stride)}


class MaxPool(_Pool):
    type_name = "maxpool"

    def forward(self, x, training=False):
        xp = get_array_module(x)
        out = self._prepare(x)
        if self.tiled:
            blocks = self.to_blocks(x, out)
            self._arg = blocks.argmax(axis=-1)  # first maximum on ties, as PyTorch
            return xp.take_along_axis(blocks, self._arg[..., None], axis=-1)[..., 0]
        y, arg = None, None
        for t, win in enumerate(self.windows(out)):
            v = x[win]
            if y is None:
                y, arg = v.copy(), xp.zeros(v.shape, dtype=xp.int32)
                continue
            larger = v > y  # strict: ties keep the first tap, as PyTorch does
            y = xp.where(larger, v, y)
            arg = xp.where(larger, t, arg)
        self._arg = arg
        return y

    def backward(self, gy):
        xp = get_array_module(gy)
        if self.tiled:
            taps = xp.arange(math.prod(self.k))
            return self.from_blocks((taps == self._arg[..., None]) * gy[..., None], gy.shape[2:])
        gx = xp.zeros(self._x_shape, dtype=gy.dtype)
        for t, win in enumerate(self.windows(gy.shape[2:])):
            gx[win] += gy * (self._arg == t)
        return gx


class AvgPool(_Pool):
    type_name = "avgpool"

    def forward(self, x, training=False):
        out = self._prepare(x)
        if self.tiled:
            return self.to_blocks(x, out).mean(axis=-1)
        y = None
        for win in self.windows(out):
            y = x[win].copy() if y is None else y + x[win]
        return y / x.dtype.type(math.prod(self.k))

    def backward(self, gy):
        xp = get_array_module(gy)
        gx = xp.zeros(self._x_shape, dtype=gy.dtype)
        share = gy / gy.dtype.type(math.prod(self.k))
        if self.tiled:
            return self.from_blocks(xp.broadcast_to(share[..., None], share.shape + (math.prod(self.k),)),
                                    gy.shape[2:])
        for win in self.windows(gy.shape[2:]):
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
