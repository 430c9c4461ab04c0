"""FFT convolution (Mathieu, Henaff & LeCun 2013) with spectra reused in backward.

After the reduction (reduction.py: padding, polyphase split, dilated filters) every
case is a stride-1 *valid* cross-correlation, per group:

    y[n, o, i]  = sum_c sum_k W[o, c, k] X[n, c, i + k]          Y^ = X^ . conj(W^)
    gX[n, c, j] = sum_o sum_k W[o, c, k] gy[n, o, j - k]          gX^ = gy^ . W^
    gW[o, c, k] = sum_n sum_i gy[n, o, i] X[n, c, i + k]          gW^ = conj(gy^) . X^

A valid correlation over an input of length q only touches indices < q, so a
circular transform of size L = next_fast_len(q) is exact, with no wrap-around
(no "full" size q + k - 1 needed). Each input channel, filter and output gradient
is transformed once. The channel sums take one of two layouts (``costs.spectra_frequency_last``):

* channels last, (F, g, n, c) @ (F, g, c, o): one batched complex matmul over the
  frequencies, the products' layout written by transforms of channels-last views;
* frequency last, (n, g, c, F), for small per-frequency products on the host: there a BLAS
  call per frequency (~150-200 ns) costs several times a small product's arithmetic, so the
  sums run as one compiled loop over the frequencies (frequency_kernel.py), or without it as
  broadcast multiply-adds over whole spectra, one per channel (or row) summed over; the
  transforms read and write the arrays' own contiguous layout.
"""
from __future__ import annotations

import functools
import math

from . import backend, costs, frequency_kernel, frequency_last, layout, tiling
from .geometry import ConvGeometry
from .reduction import Reduction


class FFTConv:
    """One FFT convolution: its reduction, tiling, FFT plan and the spectra it keeps.

    ``x_spectrum`` (F, g, rows, C) and ``W_spectrum`` (F, g, c_O/g, C) (with
    ``frequency_last``: (rows, g, C, F) and (c_O/g, g, C, F)) are built at
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
        self.fft_shape = costs.fft_shape(red, self.tile)   # untiled "same": shorter than the window
        self.axes = tuple(range(-geom.ndim, 0))
        self.rows = geom.batch * math.prod(self.counts)
        self.row_chunk = costs.fft_row_chunk(geom, x.dtype.itemsize, self.tile, self.rows, budget)
        self.frequency_last = backend.is_host_module(xp) and costs.spectra_frequency_last(
            self.row_chunk, red.channels, red.out_channels, frequency_kernel.available(xp))
        self._reduced = None    # the reduced input (n, g, C, q...)
        self._windows = None    # its tiles' windows as one array, when rows run in chunks
        self._x_spectrum = None
        self._W_spectrum = None

    estimate = staticmethod(costs.fft_estimate)   # the Engine protocol's cost hook
    unsupported = staticmethod(costs.fft_unsupported)

    # ---- transforms ------------------------------------------------------
    def _spectrum(self, a):
        """(rows..., g, C, spatial...) real -> (F, g, prod(rows), C) complex (frequency last:
        (prod(rows), g, C, F)), one transform per (row, g, C).

        Channels last, the transform reads a channels-last view, so its output is already in
        the products' layout: the transpose costs nothing extra instead of a copy of the whole
        spectrum. The rows may span several axes of a view (a batch and its tiles' positions)."""
        N = self.geom.ndim
        lead = a.ndim - 2 - N
        g, C = a.shape[lead:lead + 2]
        rows = math.prod(a.shape[:lead])
        if self.frequency_last:
            spec = backend.rfftn(self.xp, a, self.fft_shape, self.axes)
            return spec.reshape(rows, g, C, -1)   # contiguous: a view
        order = tuple(range(lead + 2, lead + 2 + N)) + (lead,) + tuple(range(lead)) + (lead + 1,)
        spec = backend.rfftn(self.xp, a.transpose(order), self.fft_shape, tuple(range(N)))
        return spec.reshape(-1, g, rows, C)      # (spatial..., g, rows..., C) is contiguous: a view

    def _inverse(self, spec, crop_shape):
        """(F, g, B, C) complex (frequency last: (B, g, C, F)) -> (B, g*C, crop_shape...) real."""
        half = self.fft_shape[:-1] + (self.fft_shape[-1] // 2 + 1,)
        if self.frequency_last:
            B, g, C, _ = spec.shape
            spec = spec.reshape((B, g * C) + half)
        else:
            _, g, B, C = spec.shape
            spec = spec.transpose(2, 1, 3, 0).reshape((B, g * C) + half)
        return backend.irfftn(self.xp, spec, self.fft_shape, self.axes, crop_shape)

    def inputs(self, lo, hi):
        """Rows lo:hi of the reduced input, (rows..., g, C, window...), cut into overlapping
        tiles if tiled. All rows at once (one chunk) come as a strided view (n, m_1..m_N, g,
        C, window...) when tiled; chunks of rows read one copy of the windows."""
        if self._reduced is None:   # (n, g, C, q...); tiled at stride 1: as long as the windows reach
            self._reduced = self.red.inputs(self.x, 0, self.geom.batch, self._windows_extent())
        a = self._reduced
        if not self.tiled:   # cut to the plan (past it: zero padding)
            return a[(slice(lo, hi),) + (slice(None),) * 2 + tuple(slice(0, L) for L in self.fft_shape)]
        n, g, C = a.shape[:3]
        flat = a.reshape((n, g * C) + a.shape[3:])
        if (lo, hi) == (0, self.rows):
            view = tiling.window_view(self.xp, flat, self.tile, self.red.qk, self.counts)
            return view.reshape(view.shape[:1 + self.geom.ndim] + (g, C) + self.window)
        if self._windows is None:
            self._windows = tiling.windows(self.xp, flat, self.tile, self.red.qk, self.counts).reshape(
                (self.rows, g, C) + self.window)
        return self._windows[lo:hi]

    def _windows_extent(self):
        """The reduced input's extent the tiles' windows reach ((m - 1) * T + T + k - 1 per dim), when
        the reduction can make it that long at once (stride 1); else None (q, padded by the windows)."""
        if not self.tiled or any(s != 1 for s in self.red.stride):
            return None
        return tuple((m - 1) * t + w for m, t, w in zip(self.counts, self.tile, self.window))

    def x_spectrum(self, lo, hi):
        """Spectrum of rows lo:hi; kept when all rows are one chunk."""
        if self._x_spectrum is not None:
            return self._x_spectrum
        spec = self._spectrum(self.inputs(lo, hi))
        if (lo, hi) == (0, self.rows):
            self._x_spectrum = spec
        return spec

    def W_spectrum(self):
        """(F, g, c_O/g, C) (frequency last: (c_O/g, g, C, F)): the reduced filters, transformed once."""
        if self._W_spectrum is None:
            Wr = self.red.filters(self.W).swapaxes(0, 1)   # (c_O/g, g, C, k'...)
            self._W_spectrum = self._spectrum(Wr)
        return self._W_spectrum

    def chunks(self):
        step = self.row_chunk
        return [(lo, min(lo + step, self.rows)) for lo in range(0, self.rows, step)]

    # ---- forward and backward ---------------------------------------------
    def forward(self):
        """y: (n, c_O, o_1..o_N), without bias."""
        xp, geom = self.xp, self.geom
        if self.frequency_last:
            Wc = self.W_spectrum()                                 # conjugated by the product
            product = functools.partial(frequency_last.correlate, xp)
        else:
            Wc = self.W_spectrum().conj().swapaxes(-1, -2)      # (F, g, C, c_O/g)
            product = functools.partial(backend.matmul, xp)
        parts = [self._inverse(product(self.x_spectrum(lo, hi), Wc), self.tile)
                 for lo, hi in self.chunks()]               # each (rows, c_O, T...)
        y = parts[0] if len(parts) == 1 else xp.concatenate(parts, axis=0)
        if self.tiled:
            y = tiling.untile(xp, y, geom.batch, self.tile, self.counts)
        return xp.ascontiguousarray(layout.crop(y, geom.out_spatial))

    def backward(self, gy, need_x: bool, need_W: bool):
        """(gx, gW) for gy (n, c_O, o...); an entry not asked for is None."""
        xp, geom, red = self.xp, self.geom, self.red
        N, chunks = geom.ndim, self.chunks()
        groups = (geom.groups, red.out_channels)
        if self.tiled and len(chunks) == 1:   # the tiles as a view (n, m_1..m_N, c_O, T...)
            gy = tiling.tile_grad_view(xp, gy, self.tile, self.counts)
            gy = gy.reshape(gy.shape[:1 + N] + groups + self.tile)
        else:
            if self.tiled:
                gy = tiling.tile_grad(xp, gy, self.tile, self.counts)     # (rows, c_O, T...)
            gy = gy.reshape((self.rows,) + groups + gy.shape[2:])
        gx_parts, gW_spec = [], None
        W_spec = self.W_spectrum() if need_x else None
        for lo, hi in chunks:
            G = self._spectrum(gy if len(chunks) == 1 else gy[lo:hi])   # (F, g, rows, c_O/g)
            if need_x:   # (F, g, rows, c_O/g) @ (F, g, c_O/g, C)
                gx_spec = (frequency_last.input_grad(xp, G, W_spec) if self.frequency_last
                           else backend.matmul(xp, G, W_spec))
                gx_parts.append(self._inverse(gx_spec, tuple(map(min, self.window, self.fft_shape))))
            if need_W:   # (F, g, c_O/g, rows) @ (F, g, rows, C)
                if self.frequency_last:   # G is not read again: the product may consume it
                    part = frequency_last.weight_grad(xp, G, self.x_spectrum(lo, hi))
                else:
                    Gc = xp.conjugate(G, out=G)   # G is not read again: conjugated in place, not copied
                    part = backend.matmul(xp, Gc.swapaxes(-1, -2), self.x_spectrum(lo, hi))
                gW_spec = part if gW_spec is None else gW_spec.__iadd__(part)
        gx = None
        if need_x:
            ga = gx_parts[0] if len(gx_parts) == 1 else xp.concatenate(gx_parts, axis=0)
            if self.tiled:
                ga = tiling.overlap_add(xp, ga, geom.batch, self.tile, red.qk, self.counts, red.qx)
            gx = red.input_grad(ga)
        gW = None
        if need_W:
            if self.frequency_last:   # (g, c_O/g, C, F): g * c_O/g rows of C channels
                g, o, C, F = gW_spec.shape
                gW_spec = gW_spec.reshape(g * o, 1, C, F)
            else:
                F, g, o, C = gW_spec.shape
                gW_spec = gW_spec.reshape(F, 1, g * o, C)
            gW = red.weight_grad(self._inverse(gW_spec, red.qk))
        return gx, gW
