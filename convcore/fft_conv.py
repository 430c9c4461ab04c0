"""FFT convolution (Mathieu, Henaff & LeCun 2013) with spectra reused in backward.

After the reduction (reduction.py: padding, polyphase split, dilated filters) every
case is a stride-1 *valid* cross-correlation, per group:

    y[n, o, i]  = sum_c sum_k W[o, c, k] X[n, c, i + k]          Y^ = X^ . conj(W^)
    gX[n, c, j] = sum_o sum_k W[o, c, k] gy[n, o, j - k]          gX^ = gy^ . W^
    gW[o, c, k] = sum_n sum_i gy[n, o, i] X[n, c, i + k]          gW^ = conj(gy^) . X^

A valid correlation over an input of length q only touches indices < q, so a
circular transform of size L = next_fast_len(q) is exact, with no wrap-around
(no "full" size q + k - 1 needed). Each input channel, filter and output gradient
is transformed once; the channel sums are one batched complex matmul over the
frequency axis:  (F, g, n, c) @ (F, g, c, o).
"""
from __future__ import annotations

import math

from . import backend, layout
from .geometry import ConvGeometry
from .reduction import Reduction


class FFTConv:
    """One FFT convolution: its reduction, FFT plan and the spectra it keeps.

    ``x_spectrum`` (F, g, n, C) and ``W_spectrum`` (F, g, c_O/g, C) are built at
    most once each, on first use, and shared by forward and backward.
    """

    def __init__(self, xp, geom: ConvGeometry, x, W, batch_chunk=None):
        self.xp, self.geom = xp, geom
        self.x, self.W = x, W
        self.red = Reduction(xp, geom, keep_dilation=False)
        self.fft_shape = tuple(backend.next_fast_len(q) for q in self.red.qx)
        self.axes = tuple(range(-geom.ndim, 0))
        self.batch_chunk = batch_chunk or geom.batch
        self._x_spectrum = None
        self._W_spectrum = None

    # ---- transforms ------------------------------------------------------
    def _spectrum(self, a):
        """(B, g, C, spatial...) real -> (F, g, B, C) complex, one transform per (B, g, C)."""
        B, g, C = a.shape[:3]
        spec = backend.rfftn(self.xp, a, self.fft_shape, self.axes).reshape(B, g, C, -1)
        return self.xp.ascontiguousarray(spec.transpose(3, 1, 0, 2))

    def _inverse(self, spec, crop_shape):
        """(F, g, B, C) complex -> (B, g*C, crop_shape...) real."""
        F, g, B, C = spec.shape
        half = self.fft_shape[:-1] + (self.fft_shape[-1] // 2 + 1,)
        spec = spec.transpose(2, 1, 3, 0).reshape((B, g * C) + half)
        out = backend.irfftn(self.xp, spec, self.fft_shape, self.axes)
        return layout.crop(out, crop_shape)

    def x_spectrum(self, lo, hi):
        """Spectrum of batch rows lo:hi; kept when the whole batch is one chunk."""
        if self._x_spectrum is not None:
            return self._x_spectrum
        spec = self._spectrum(self.red.inputs(self.x, lo, hi))
        if (lo, hi) == (0, self.geom.batch):
            self._x_spectrum = spec
        return spec

    def W_spectrum(self):
        """(F, g, c_O/g, C): the reduced filters, transformed once."""
        if self._W_spectrum is None:
            Wr = self.red.filters(self.W).swapaxes(0, 1)   # (c_O/g, g, C, k'...)
            self._W_spectrum = self._spectrum(Wr)
        return self._W_spectrum

    def chunks(self):
        step = self.batch_chunk
        return [(lo, min(lo + step, self.geom.batch)) for lo in range(0, self.geom.batch, step)]

    # ---- forward and backward ---------------------------------------------
    def forward(self):
        """y: (n, c_O, o_1..o_N), without bias."""
        xp = self.xp
        Wc = self.W_spectrum().conj().swapaxes(-1, -2)      # (F, g, C, c_O/g)
        parts = [self._inverse(xp.matmul(self.x_spectrum(lo, hi), Wc), self.geom.out_spatial)
                 for lo, hi in self.chunks()]               # each (b, c_O, o...)
        y = parts[0] if len(parts) == 1 else xp.concatenate(parts, axis=0)
        return xp.ascontiguousarray(y)

    def backward(self, gy, need_x: bool, need_W: bool):
        """(gx, gW) for gy (n, c_O, o...); an entry not asked for is None."""
        xp, geom, red = self.xp, self.geom, self.red
        gx_parts, gW_spec = [], None
        W_spec = self.W_spectrum() if need_x else None
        for lo, hi in self.chunks():
            G = self._spectrum(gy[lo:hi].reshape((hi - lo, geom.groups, red.out_channels) + gy.shape[2:]))
            if need_x:   # (F, g, b, c_O/g) @ (F, g, c_O/g, C)
                gx_parts.append(red.input_grad(self._inverse(xp.matmul(G, W_spec), red.qx)))
            if need_W:   # (F, g, c_O/g, b) @ (F, g, b, C)
                part = xp.matmul(G.conj().swapaxes(-1, -2), self.x_spectrum(lo, hi))
                gW_spec = part if gW_spec is None else gW_spec + part
        gx = None
        if need_x:
            gx = gx_parts[0] if len(gx_parts) == 1 else xp.concatenate(gx_parts, axis=0)
        gW = None
        if need_W:
            F, g, o, C = gW_spec.shape
            gW = red.weight_grad(self._inverse(gW_spec.reshape(F, 1, g * o, C), red.qk))
        return gx, gW

    # ---- memory ------------------------------------------------------------
    @staticmethod
    def working_set_bytes(geom: ConvGeometry, itemsize: int, batch: int) -> int:
        """Peak bytes for ``batch`` rows: x, W and y (or gy) spectra plus real buffers."""
        red = Reduction(None, geom, keep_dilation=False)
        L = tuple(backend.next_fast_len(q) for q in red.qx)
        freqs = math.prod(L[:-1]) * (L[-1] // 2 + 1)
        C, g = red.channels, geom.groups
        spectra = 2 * itemsize * freqs * g * (batch * C + red.out_channels * C + batch * red.out_channels)
        real = itemsize * math.prod(L) * batch * g * (C + red.out_channels)
        return spectra + real
