"""FFT convolution (Mathieu, Henaff & LeCun 2013) with spectra reused in backward.

After the reduction (reduction.py: padding, polyphase split, dilated filters) every
case is a stride-1 *valid* cross-correlation, per group, over an input of length q
with a kernel of length k and m = q - k + 1 outputs (per axis):

    y[n, o, i]  = sum_c sum_k W[o, c, k] X[n, c, i + k]
    gX[n, c, j] = sum_o sum_k W[o, c, k] gy[n, o, j - k]
    gW[o, c, k] = sum_n sum_i gy[n, o, i] X[n, c, i + k]

The filters and gy are transformed *reversed* along every spatial axis (W~[k] =
W[k-1-k], a strided view): each correlation is then a plain convolution, and the
products need no complex conjugate (no pass over a spectrum to conjugate it):

    y  = (X * W~)[k-1 : q]          Y^  = X^ . W~^
    gW = (gy~ * X)[m-1 : q]         gW^ = gy~^T . X^
    gX = reversed((gy~ * W~)[0 : q])    gX^ = gy~^ . W~^

Every index read is below q, so a circular transform of size L = next_fast_len(q) is
exact, with no wrap-around. Each input channel, filter and output gradient is
transformed once; the channel sums are one batched complex matmul over the frequency
axis:  (F, g, n, c) @ (F, g, c, o).
"""
from __future__ import annotations

import math

from . import backend, costs, layout, tiling
from .geometry import ConvGeometry
from .reduction import Reduction


class FFTConv:
    """One FFT convolution: its reduction, tiling, FFT plan and the spectra it keeps.

    ``x_spectrum`` (F, g, rows, C) and ``W_spectrum`` (F, g, c_O/g, C) are built at
    most once each, on first use, and shared by forward and backward. ``rows`` is
    n times the number of overlap-save tiles (1 unless the memory budget asks for
    smaller transforms, see tiling.py); rows are processed in chunks that fit.
    """

    def __init__(self, xp, geom: ConvGeometry, x, W, budget: int):
        self.xp, self.geom = xp, geom
        self.x, self.W = x, W
        red = self.red = Reduction(xp, geom, keep_dilation=False)
        self.tile = costs.choose_tile(geom, x.dtype.itemsize, budget, costs.rates_for(xp))
        valid = tuple(q - k + 1 for q, k in zip(red.qx, red.qk))
        self.counts = tiling.tile_counts(valid, self.tile)
        self.tiled = any(c > 1 for c in self.counts)
        self.window = tuple(t + k - 1 for t, k in zip(self.tile, red.qk))
        self.fft_shape = tuple(backend.next_fast_len(w) for w in self.window)
        self.axes = tuple(range(-geom.ndim, 0))
        self.rows = geom.batch * math.prod(self.counts)
        self.row_chunk = costs.fft_row_chunk(geom, x.dtype.itemsize, self.tile, self.rows, budget)
        self._inputs = None
        self._x_spectrum = None
        self._W_spectrum = None

    estimate = staticmethod(costs.fft_estimate)   # the Engine protocol's cost hook

    # ---- transforms ------------------------------------------------------
    def _spectrum(self, a, reverse: bool = False):
        """(B, g, C, spatial...) real -> (F, g, B, C) complex, one transform per (B, g, C),
        of ``a`` reversed along every spatial axis if ``reverse``.

        The transform reads a channels-last (and reversed) view, so its output is already in
        the products' layout: no copy of the input or of the spectrum is made for either."""
        B, g, C = a.shape[:3]
        N = self.geom.ndim
        if reverse:
            a = a[(slice(None),) * 3 + (slice(None, None, -1),) * N]
        channels_last = a.transpose(tuple(range(3, 3 + N)) + (1, 0, 2))   # (spatial..., g, B, C)
        spec = backend.rfftn(self.xp, channels_last, self.fft_shape, tuple(range(N)))
        return spec.reshape(-1, g, B, C)

    def _inverse(self, spec, crop_shape, start=None, reverse: bool = False):
        """(F, g, B, C) complex -> (B, g*C, crop_shape...) real: the inverse cut to
        ``crop_shape`` from ``start`` per axis, then reversed along each if ``reverse``."""
        F, g, B, C = spec.shape
        N = self.geom.ndim
        half = self.fft_shape[:-1] + (self.fft_shape[-1] // 2 + 1,)
        spec = spec.transpose(2, 1, 3, 0).reshape((B, g, C) + half)   # a view: no copy of the spectrum
        out = backend.irfftn(self.xp, spec, self.fft_shape, self.axes, crop_shape, start)
        if reverse:
            out = out[(slice(None),) * 3 + (slice(None, None, -1),) * N]
        return out.reshape((B, g * C) + out.shape[3:])

    def inputs(self):
        """(rows, g, C, window...): the reduced input, cut into overlapping tiles if tiled."""
        if self._inputs is None:
            a = self.red.inputs(self.x, 0, self.geom.batch)            # (n, g, C, q...)
            if self.tiled:
                n, g, C = a.shape[:3]
                a = tiling.windows(self.xp, a.reshape((n, g * C) + a.shape[3:]), self.tile,
                                   self.red.qk, self.counts)
                a = a.reshape((self.rows, g, C) + self.window)
            self._inputs = a
        return self._inputs

    def x_spectrum(self, lo, hi):
        """Spectrum of rows lo:hi; kept when all rows are one chunk."""
        if self._x_spectrum is not None:
            return self._x_spectrum
        spec = self._spectrum(self.inputs()[lo:hi])
        if (lo, hi) == (0, self.rows):
            self._x_spectrum = spec
        return spec

    def W_spectrum(self):
        """(F, g, c_O/g, C): the reduced filters, reversed, transformed once."""
        if self._W_spectrum is None:
            Wr = self.red.filters(self.W).swapaxes(0, 1)   # (c_O/g, g, C, k'...)
            self._W_spectrum = self._spectrum(Wr, reverse=True)
        return self._W_spectrum

    def chunks(self):
        step = self.row_chunk
        return [(lo, min(lo + step, self.rows)) for lo in range(0, self.rows, step)]

    # ---- forward and backward ---------------------------------------------
    def forward(self):
        """y: (n, c_O, o_1..o_N), without bias."""
        xp, geom = self.xp, self.geom
        W_spec = self.W_spectrum().swapaxes(-1, -2)         # (F, g, C, c_O/g)
        start = tuple(k - 1 for k in self.red.qk)
        parts = [self._inverse(backend.matmul(xp, self.x_spectrum(lo, hi), W_spec), self.tile, start)
                 for lo, hi in self.chunks()]               # each (rows, c_O, T...)
        y = parts[0] if len(parts) == 1 else xp.concatenate(parts, axis=0)
        if self.tiled:
            y = tiling.untile(xp, y, geom.batch, self.tile, self.counts)
        return xp.ascontiguousarray(layout.crop(y, geom.out_spatial))

    def backward(self, gy, need_x: bool, need_W: bool):
        """(gx, gW) for gy (n, c_O, o...); an entry not asked for is None."""
        xp, geom, red = self.xp, self.geom, self.red
        if self.tiled:
            gy = tiling.tile_grad(xp, gy, self.tile, self.counts)     # (rows, c_O, T...)
        gy = gy.reshape((self.rows, geom.groups, red.out_channels) + gy.shape[2:])
        gx_parts, gW_spec = [], None
        W_spec = self.W_spectrum() if need_x else None
        for lo, hi in self.chunks():
            G = self._spectrum(gy[lo:hi], reverse=True)     # (F, g, rows, c_O/g)
            if need_x:   # (F, g, rows, c_O/g) @ (F, g, c_O/g, C)
                gx_parts.append(self._inverse(backend.matmul(xp, G, W_spec), self.window, reverse=True))
            if need_W:   # (F, g, c_O/g, rows) @ (F, g, rows, C)
                part = backend.matmul(xp, G.swapaxes(-1, -2), self.x_spectrum(lo, hi))
                gW_spec = part if gW_spec is None else gW_spec.__iadd__(part)
        gx = None
        if need_x:
            ga = gx_parts[0] if len(gx_parts) == 1 else xp.concatenate(gx_parts, axis=0)
            if self.tiled:
                ga = tiling.overlap_add(xp, ga, geom.batch, self.tile, red.qk, self.counts, red.qx)
            gx = red.input_grad(ga)
        gW = None
        if need_W:
            F, g, o, C = gW_spec.shape
            start = tuple(m - 1 for m in gy.shape[3:])     # m: gy's length per axis (a tile's if tiled)
            gW = red.weight_grad(self._inverse(gW_spec.reshape(F, 1, g * o, C), red.qk, start))
        return gx, gW
