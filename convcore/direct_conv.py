"""Direct convolution for small kernels: im2col in a channels-last layout + one GEMM.

Stride, dilation and groups are native here (the column matrix gathers the taps
``i*stride + k*dilation``), so nothing is wasted on zero taps. Per group g:

    col (M, K*c_I')  with M = n * prod(o), K = prod(k)
    y   = col @ Wm                      Wm: (K*c_I', c_O')
    gW  = col^T @ gy                    gx = col2im(gy @ Wm^T)
"""
from __future__ import annotations

import itertools
import math

from .geometry import ConvGeometry
from .padding import pad, pad_adjoint


class DirectConv:
    """One direct convolution; keeps the column matrix for backward when it fits one chunk."""

    def __init__(self, xp, geom: ConvGeometry, x, W, batch_chunk=None):
        self.xp, self.geom = xp, geom
        self.x, self.W = x, W
        g = geom.groups
        self.c_in_g = geom.in_channels // g
        self.c_out_g = geom.out_channels // g
        self.taps = math.prod(geom.kernel)
        self.batch_chunk = batch_chunk or geom.batch
        self._col = None
        self._Wm = None

    def chunks(self):
        step = self.batch_chunk
        return [(lo, min(lo + step, self.geom.batch)) for lo in range(0, self.geom.batch, step)]

    @property
    def Wm(self):
        """W (c_O, c_I', k...) as (g, K*c_I', c_O')."""
        if self._Wm is None:
            geom, g, N = self.geom, self.geom.groups, self.geom.ndim
            Wg = self.W.reshape((g, self.c_out_g, self.c_in_g) + geom.kernel)
            order = (0,) + tuple(range(3, 3 + N)) + (2, 1)   # (g, k..., c_I', c_O')
            self._Wm = self.xp.ascontiguousarray(Wg.transpose(order)).reshape(
                g, self.taps * self.c_in_g, self.c_out_g)
        return self._Wm

    def _tap_slices(self):
        """For each kernel offset, the strided window of the padded input it reads."""
        geom = self.geom
        for kk in itertools.product(*(range(k) for k in geom.kernel)):
            yield tuple(slice(k * dl, k * dl + s * (o - 1) + 1, s)
                        for k, dl, s, o in zip(kk, geom.dilation, geom.stride, geom.out_spatial))

    def _channels_last(self, lo, hi):
        """(b, c_I, d...) -> padded (g, b, padded..., c_I')."""
        geom, xp, N = self.geom, self.xp, self.geom.ndim
        a = pad(xp, self.x[lo:hi], geom.pads, geom.padding_mode)
        a = a.reshape((hi - lo, geom.groups, self.c_in_g) + a.shape[2:])
        return xp.ascontiguousarray(a.transpose((1, 0) + tuple(range(3, 3 + N)) + (2,)))

    def col(self, lo, hi):
        """(g, M, K*c_I') column matrix of batch rows lo:hi (cached for the whole batch)."""
        if self._col is not None:
            return self._col
        xp, geom = self.xp, self.geom
        a = self._channels_last(lo, hi)
        g, b = a.shape[:2]
        col = xp.empty((g, b) + geom.out_spatial + (self.taps, self.c_in_g), dtype=a.dtype)
        head = (slice(None), slice(None))
        for t, window in enumerate(self._tap_slices()):
            col[head + (Ellipsis, t, slice(None))] = a[head + window + (slice(None),)]
        col = col.reshape(g, -1, self.taps * self.c_in_g)
        if (lo, hi) == (0, geom.batch):
            self._col = col
        return col

    def forward(self):
        """y: (n, c_O, o...) without bias."""
        xp, geom, N = self.xp, self.geom, self.geom.ndim
        parts = []
        for lo, hi in self.chunks():
            y = xp.matmul(self.col(lo, hi), self.Wm)        # (g, M, c_O')
            y = y.reshape((geom.groups, hi - lo) + geom.out_spatial + (self.c_out_g,))
            y = y.transpose((1, 0, N + 2) + tuple(range(2, 2 + N)))  # (b, g, c_O', o...)
            parts.append(y.reshape((hi - lo, geom.out_channels) + geom.out_spatial))
        y = parts[0] if len(parts) == 1 else xp.concatenate(parts, axis=0)
        return xp.ascontiguousarray(y)

    def backward(self, gy, need_x: bool, need_W: bool):
        """(gx, gW) for gy (n, c_O, o...); an entry not asked for is None."""
        xp, geom, N = self.xp, self.geom, self.geom.ndim
        g = geom.groups
        gx_parts, gWm = [], None
        for lo, hi in self.chunks():
            b = hi - lo
            gyl = gy[lo:hi].reshape((b, g, self.c_out_g) + geom.out_spatial)
            gyl = xp.ascontiguousarray(gyl.transpose((1, 0) + tuple(range(3, 3 + N)) + (2,)))
            gyl = gyl.reshape(g, -1, self.c_out_g)                     # (g, M, c_O')
            if need_W:
                part = xp.matmul(self.col(lo, hi).swapaxes(-1, -2), gyl)  # (g, K*c_I', c_O')
                gWm = part if gWm is None else gWm + part
            if need_x:
                gx_parts.append(self._col2im(xp.matmul(gyl, self.Wm.swapaxes(-1, -2)), b))
        gx = None
        if need_x:
            gx = gx_parts[0] if len(gx_parts) == 1 else xp.concatenate(gx_parts, axis=0)
        gW = None
        if need_W:
            gW = gWm.reshape((g,) + geom.kernel + (self.c_in_g, self.c_out_g))
            gW = gW.transpose((0, N + 2, N + 1) + tuple(range(1, N + 1)))  # (g, c_O', c_I', k...)
            gW = xp.ascontiguousarray(gW).reshape(geom.kernel_shape)
        return gx, gW

    def _col2im(self, gcol, b):
        """(g, M, K*c_I') column gradient -> gx (b, c_I, d...)."""
        xp, geom, N = self.xp, self.geom, self.geom.ndim
        g = geom.groups
        gcol = gcol.reshape((g, b) + geom.out_spatial + (self.taps, self.c_in_g))
        ga = xp.zeros((g, b) + geom.padded + (self.c_in_g,), dtype=gcol.dtype)
        head = (slice(None), slice(None))
        for t, window in enumerate(self._tap_slices()):
            ga[head + window + (slice(None),)] += gcol[head + (Ellipsis, t, slice(None))]
        ga = ga.transpose((1, 0, N + 2) + tuple(range(2, 2 + N)))  # (b, g, c_I', padded...)
        ga = ga.reshape((b, geom.in_channels) + geom.padded)
        return pad_adjoint(xp, ga, geom.pads, geom.padding_mode, geom.spatial)

    @staticmethod
    def working_set_bytes(geom: ConvGeometry, itemsize: int, batch: int) -> int:
        """Bytes of the column matrix (the largest buffer) for ``batch`` rows, plus the padded input."""
        col = batch * math.prod(geom.out_spatial) * math.prod(geom.kernel) * geom.in_channels // geom.groups
        padded = batch * geom.in_channels * math.prod(geom.padded)
        return itemsize * (col + 2 * padded)
