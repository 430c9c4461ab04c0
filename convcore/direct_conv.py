"""Direct convolution for small kernels: shift-and-GEMM on the flattened padded grid.

After the reduction (reduction.py) the problem is a stride-1 valid correlation of
inputs (b, g, C, q...) with filters (g, c_O/g, C, k...). In a channels-last layout
with all of (b, q_1..q_N) flattened into rows, the tap k reads row r + off(k) with
off(k) = sum_j k_j * dilation_j * stride_of_grid_j, a *contiguous* block of rows.
So each tap is one plain GEMM on a slice, with no gather. Rows whose window runs
past the edge of the grid are computed and cropped (few, for small kernels).

Taps along the last ``m`` axes are packed side by side into the columns (a partial
im2col: m=1 copies the input k_N times instead of prod(k) times) so that each GEMM
has an inner size of prod(k_last_m) * C:

    y[r]   = sum_u xw[r + off_u] @ Wm[u]           xw[r, t] = x[r + inner_t]
    gW[u]  = xw[off_u : off_u + R]^T @ gy_grid
    gx[r]  = sum_u gw[r + M - off_u] @ Wm'[u]      gw[r, t] = gy[r - M - inner_t]

The input gradient is the same shift-and-GEMM run on gy with mirrored offsets
(M = the largest outer offset) and each tap's filter block transposed.
"""
from __future__ import annotations

import itertools
import math

from . import backend
from .geometry import ConvGeometry
from .reduction import Reduction

MIN_INNER = 96  # pack more axes into the columns until a GEMM's inner size reaches this


class DirectConv:
    """One direct convolution; keeps the packed input for backward when it fits one chunk."""

    def __init__(self, xp, geom: ConvGeometry, x, W, budget: int):
        self.xp, self.geom = xp, geom
        self.x, self.W = x, W
        red = self.red = Reduction(xp, geom, keep_dilation=True)
        N = geom.ndim
        self.packed_axes = packed_axes(red.qk, red.channels)
        grid_stride = [math.prod(red.qx[j + 1:]) for j in range(N)]
        step = [d * s for d, s in zip(red.core_dilation, grid_stride)]

        def offsets(axes):
            ranges = [range(red.qk[j]) if j in axes else range(1) for j in range(N)]
            return [sum(t * st for t, st in zip(tap, step)) for tap in itertools.product(*ranges)]

        self.inner_offsets = offsets(range(N - self.packed_axes, N))
        self.outer_offsets = offsets(range(N - self.packed_axes))
        fixed = working_set_bytes(geom, x.dtype.itemsize, 0)
        per_image = working_set_bytes(geom, x.dtype.itemsize, 1) - fixed
        self.batch_chunk = int(min(geom.batch, max(1, (budget - fixed) // max(per_image, 1))))
        self._packed = None
        self._Wm = None

    def chunks(self):
        step = self.batch_chunk
        return [(lo, min(lo + step, self.geom.batch)) for lo in range(0, self.geom.batch, step)]

    @property
    def Wm(self):
        """Filters (g, c_O/g, C, k...) as (u, g, taps_m * C, c_O/g), u the outer tap."""
        if self._Wm is None:
            red, N, m = self.red, self.geom.ndim, self.packed_axes
            Wr = self.red.filters(self.W)                        # (g, O, C, k...)
            order = tuple(range(3, 3 + N - m)) + (0,) + tuple(range(3 + N - m, 3 + N)) + (2, 1)
            Wt = Wr.transpose(order)                             # (k_outer..., g, k_inner..., C, O)
            self._Wm = self.xp.ascontiguousarray(Wt).reshape(
                len(self.outer_offsets), self.geom.groups, -1, red.out_channels)
        return self._Wm

    @property
    def Wm_adjoint(self):
        """(u, g, taps_m * c_O/g, C): each inner tap's block of Wm transposed, for gx."""
        u, g, _, O = self.Wm.shape
        taps = len(self.inner_offsets)
        Wt = self.Wm.reshape(u, g, taps, -1, O).swapaxes(-1, -2)
        return self.xp.ascontiguousarray(Wt).reshape(u, g, taps * O, -1)

    def _pack(self, a, shifts, rows):
        """out[:, r, t*c:(t+1)*c] = a[:, r + shifts[t]] (zero outside a): (g, rows, taps * c)."""
        g, R, c = a.shape
        out = self.xp.empty((g, rows, len(shifts) * c), dtype=a.dtype)
        for t, shift in enumerate(shifts):
            lo, hi = max(0, -shift), max(0, min(rows, R - shift))  # rows reading inside a
            cols = slice(t * c, (t + 1) * c)
            out[:, :lo, cols] = 0
            out[:, lo:hi, cols] = a[:, lo + shift:hi + shift]
            out[:, max(lo, hi):, cols] = 0
        return out

    def _shift_gemm(self, packed, offsets, Wm, R):
        """sum_u packed[:, off_u : off_u + R] @ Wm[u] -> (g, R, cols)."""
        out = None
        for u, off in enumerate(offsets):
            part = backend.matmul(self.xp, packed[:, off:off + R], Wm[u])
            out = part if out is None else out.__iadd__(part)
        return out

    def packed(self, lo, hi):
        """(g, R + max outer offset, taps_m * C): the input with inner taps side by side."""
        if self._packed is not None:
            return self._packed
        red, N = self.red, self.geom.ndim
        a = red.inputs(self.x, lo, hi)                           # (b, g, C, q...)
        a = a.transpose((1, 0) + tuple(range(3, 3 + N)) + (2,))  # (g, b, q..., C)
        a = self.xp.ascontiguousarray(a).reshape(self.geom.groups, -1, red.channels)
        xw = self._pack(a, self.inner_offsets, a.shape[1] + max(self.outer_offsets))
        if (lo, hi) == (0, self.geom.batch):
            self._packed = xw
        return xw

    def forward(self):
        """y: (n, c_O, o...) without bias."""
        xp, geom, N = self.xp, self.geom, self.geom.ndim
        parts = []
        for lo, hi in self.chunks():
            R = (hi - lo) * math.prod(self.red.qx)
            y = self._shift_gemm(self.packed(lo, hi), self.outer_offsets, self.Wm, R)  # (g, R, c_O/g)
            y = y.reshape((geom.groups, hi - lo) + self.red.qx + (self.red.out_channels,))
            y = y[(slice(None), slice(None)) + tuple(slice(0, o) for o in geom.out_spatial)]
            y = y.transpose((1, 0, N + 2) + tuple(range(2, 2 + N)))  # (b, g, c_O/g, o...)
            parts.append(y.reshape((hi - lo, geom.out_channels) + geom.out_spatial))
        y = parts[0] if len(parts) == 1 else xp.concatenate(parts, axis=0)
        return xp.ascontiguousarray(y)

    def backward(self, gy, need_x: bool, need_W: bool):
        """(gx, gW) for gy (n, c_O, o...); an entry not asked for is None."""
        xp = self.xp
        gx_parts, gWm = [], None
        for lo, hi in self.chunks():
            grid = self._gy_on_grid(gy[lo:hi])                           # (g, R, c_O/g)
            R = grid.shape[1]
            xw = self.packed(lo, hi) if need_W else None
            if need_W:
                part = xp.stack([backend.matmul(xp, xw[:, off:off + R].swapaxes(-1, -2), grid)
                                 for off in self.outer_offsets])         # (u, g, taps_m*C, c_O/g)
                gWm = part if gWm is None else gWm + part
            if need_x:
                gx_parts.append(self._input_grad(grid, hi - lo))
        gx = None
        if need_x:
            gx = gx_parts[0] if len(gx_parts) == 1 else xp.concatenate(gx_parts, axis=0)
        return gx, (self._weight_grad(gWm) if need_W else None)

    def _gy_on_grid(self, gy):
        """gy (b, c_O, o...) embedded in the zero grid: (g, b * prod(q), c_O/g)."""
        xp, geom, red, N = self.xp, self.geom, self.red, self.geom.ndim
        b = gy.shape[0]
        grid = xp.zeros((geom.groups, b) + red.qx + (red.out_channels,), dtype=gy.dtype)
        g = gy.reshape((b, geom.groups, red.out_channels) + geom.out_spatial)
        inner = (slice(None), slice(None)) + tuple(slice(0, o) for o in geom.out_spatial)
        grid[inner] = g.transpose((1, 0) + tuple(range(3, 3 + N)) + (2,))
        return grid.reshape(geom.groups, -1, red.out_channels)

    def _input_grad(self, grid, b):
        """Gradient through the tap GEMMs, as a shift-GEMM over gy -> gx (b, c_I, d...)."""
        geom, red, N = self.geom, self.red, self.geom.ndim
        R, top = grid.shape[1], max(self.outer_offsets)
        gw = self._pack(grid, [-(top + off) for off in self.inner_offsets], R + top)
        mirrored = [top - off for off in self.outer_offsets]
        ga = self._shift_gemm(gw, mirrored, self.Wm_adjoint, R)            # (g, R, C)
        ga = ga.reshape((geom.groups, b) + red.qx + (red.channels,))
        ga = ga.transpose((1, 0, N + 2) + tuple(range(2, 2 + N)))         # (b, g, C, q...)
        return red.input_grad(ga.reshape((b, geom.groups * red.channels) + red.qx))

    def _weight_grad(self, gWm):
        """(u, g, taps_m * C, c_O/g) -> gW (c_O, c_I/g, k...)."""
        geom, red, N, m = self.geom, self.red, self.geom.ndim, self.packed_axes
        k = red.qk
        a = gWm.reshape(k[:N - m] + (geom.groups,) + k[N - m:] + (red.channels, red.out_channels))
        # (k_outer..., g, k_inner..., C, O) -> (g, O, C, k...)
        order = (N - m, N + 2, N + 1) + tuple(range(N - m)) + tuple(range(N - m + 1, N + 1))
        a = a.transpose(order).reshape((geom.out_channels, red.channels) + k)
        return red.weight_grad(a)


def working_set_bytes(geom: ConvGeometry, itemsize: int, batch: int) -> int:
    """Bytes of the packed input and its gradient (the largest buffers) for ``batch`` images."""
    red = Reduction(None, geom, keep_dilation=True)
    taps = math.prod(red.qk[len(red.qk) - packed_axes(red.qk, red.channels):])
    rows = batch * math.prod(red.qx)
    return itemsize * geom.groups * rows * (2 * taps * red.channels + 2 * red.out_channels)


def packed_axes(kernel, channels) -> int:
    """How many trailing kernel axes to pack into the GEMM's inner dimension."""
    m = 1
    while m < len(kernel) and math.prod(kernel[-m:]) * channels < MIN_INNER:
        m += 1
    return m
