"""FFT convolution (Mathieu, Henaff & LeCun 2013) with spectra reused in backward.

After padding and the polyphase split (layout.py) every case is a stride-1 *valid*
cross-correlation, per group g:

    y[n, o, i]  = sum_c sum_k W[o, c, k] X[n, c, i + k]          Y^ = X^ . conj(W^)
    gX[n, c, j] = sum_o sum_k W[o, c, k] gy[n, o, j - k]          gX^ = gy^ . W^
    gW[o, c, k] = sum_n sum_i gy[n, o, i] X[n, c, i + k]          gW^ = conj(gy^) . X^

A valid correlation over an input of length Q only ever touches indices < Q, so a
circular transform of size L = next_fast_len(Q) gives exact results with no
wrap-around (no "full" size Q + K - 1 needed). Each input channel, filter and
output gradient is transformed once; the channel sums are one batched complex
matmul over the frequency axis:  (F, g, n, c) @ (F, g, c, o).
"""
from __future__ import annotations

import math

from . import backend, layout
from .geometry import ConvGeometry
from .padding import pad, pad_adjoint


class FFTConv:
    """One FFT convolution: the geometry, the FFT plan and the spectra it keeps.

    ``x_spectrum`` (F, g, n, c_I'*S) and ``W_spectrum`` (F, g, c_O', c_I'*S) are
    built at most once each, on first use, and shared by forward and backward.
    ``c_I' = c_I / g``, ``c_O' = c_O / g``, ``S = prod(stride)`` (polyphase channels).
    """

    def __init__(self, xp, geom: ConvGeometry, x, W, batch_chunk=None):
        self.xp, self.geom = xp, geom
        g = geom.groups
        s = geom.stride
        self.x, self.W = x, W
        # Polyphase lengths of the input (Qx) and the dilated kernel (Qk), per dim.
        self.qx = tuple(-(-p // st) for p, st in zip(geom.padded, s))
        self.qk = tuple(-(-ke // st) for ke, st in zip(geom.dilated_kernel, s))
        self.fft_shape = tuple(backend.next_fast_len(q) for q in self.qx)
        self.axes = tuple(range(-geom.ndim, 0))
        self.poly_channels = geom.in_channels // g * math.prod(s)
        self.batch_chunk = batch_chunk or geom.batch
        self._x_spectrum = None
        self._W_spectrum = None

    # ---- transforms ------------------------------------------------------
    @property
    def freq_count(self) -> int:
        return math.prod(self.fft_shape[:-1]) * (self.fft_shape[-1] // 2 + 1)

    def _x_poly(self, lo, hi):
        """(n_chunk, c_I, d...) -> (n_chunk, g, c_I'*S, Qx...) padded and split by phase."""
        geom = self.geom
        a = pad(self.xp, self.x[lo:hi], geom.pads, geom.padding_mode)
        a = layout.pad_high(self.xp, a, layout.round_up(a.shape[2:], geom.stride))
        a = layout.space_to_depth(a, geom.stride)
        return a.reshape((a.shape[0], geom.groups, self.poly_channels) + a.shape[2:])

    def _spectrum(self, a):
        """(B, g, C, spatial...) real -> (F, g, B, C) complex, one transform per (B, C) pair."""
        B, g, C = a.shape[:3]
        spec = backend.rfftn(self.xp, a, self.fft_shape, self.axes)
        spec = spec.reshape(B, g, C, -1)
        return self.xp.ascontiguousarray(spec.transpose(3, 1, 0, 2))

    def _inverse(self, spec, crop_shape):
        """(F, g, B, C) complex -> (B, g*C, crop_shape...) real."""
        F, g, B, C = spec.shape
        half = self.fft_shape[:-1] + (self.fft_shape[-1] // 2 + 1,)
        spec = spec.transpose(2, 1, 3, 0).reshape((B, g * C) + half)
        out = backend.irfftn(self.xp, spec, self.fft_shape, self.axes)
        return layout.crop(out, crop_shape)

    def x_spectrum(self, lo, hi):
        """Spectrum of batch rows lo:hi; cached when the whole batch fits one chunk."""
        if self._x_spectrum is not None:
            return self._x_spectrum
        spec = self._spectrum(self._x_poly(lo, hi))
        if (lo, hi) == (0, self.geom.batch):
            self._x_spectrum = spec
        return spec

    def W_spectrum(self):
        """(F, g, c_O', c_I'*S): the dilated, phase-split filters, transformed once."""
        if self._W_spectrum is None:
            geom, xp = self.geom, self.xp
            Wd = layout.dilate(xp, self.W, geom.dilation)
            Wd = layout.pad_high(xp, Wd, tuple(q * st for q, st in zip(self.qk, geom.stride)))
            Wp = layout.space_to_depth(Wd, geom.stride)  # (c_O, c_I'*S, Qk...)
            g = geom.groups
            Wp = Wp.reshape((g, geom.out_channels // g) + Wp.shape[1:]).swapaxes(0, 1)
            self._W_spectrum = self._spectrum(Wp)  # (c_O', g, C, ...) -> (F, g, c_O', C)
        return self._W_spectrum

    def chunks(self):
        step = self.batch_chunk
        return [(lo, min(lo + step, self.geom.batch)) for lo in range(0, self.geom.batch, step)]

    # ---- forward and backward ---------------------------------------------
    def forward(self):
        """y: (n, c_O, o_1..o_N), without bias."""
        xp = self.xp
        Wc = self.W_spectrum().conj().swapaxes(-1, -2)  # (F, g, C, c_O')
        parts = []
        for lo, hi in self.chunks():
            Y = xp.matmul(self.x_spectrum(lo, hi), Wc)  # (F, g, n, c_O')
            parts.append(self._inverse(Y, self.geom.out_spatial))
        y = parts[0] if len(parts) == 1 else xp.concatenate(parts, axis=0)
        return xp.ascontiguousarray(y)

    def backward(self, gy, need_x: bool, need_W: bool):
        """(gx, gW) for gy (n, c_O, o...); an entry not asked for is None."""
        xp, geom = self.xp, self.geom
        g = geom.groups
        gx_parts, gW_spec = [], None
        W_spec = self.W_spectrum() if need_x else None
        for lo, hi in self.chunks():
            gy_g = gy[lo:hi].reshape((hi - lo, g, geom.out_channels // g) + gy.shape[2:])
            G = self._spectrum(gy_g)  # (F, g, n, c_O')
            if need_x:
                gx_parts.append(self._input_grad(xp.matmul(G, W_spec)))
            if need_W:
                part = xp.matmul(G.conj().swapaxes(-1, -2), self.x_spectrum(lo, hi))  # (F, g, c_O', C)
                gW_spec = part if gW_spec is None else gW_spec + part
        gx = None
        if need_x:
            gx = gx_parts[0] if len(gx_parts) == 1 else xp.concatenate(gx_parts, axis=0)
        gW = self._weight_grad(gW_spec) if need_W else None
        return gx, gW

    def _input_grad(self, spec):
        """(F, g, n, C) spectrum -> gx (n, c_I, d...)."""
        geom, xp = self.geom, self.xp
        a = self._inverse(spec, self.qx)                      # (n, c_I*S, Qx...)
        a = layout.depth_to_space(a, geom.stride)             # (n, c_I, Qx*s...)
        a = layout.crop(a, geom.padded)                       # (n, c_I, padded...)
        return pad_adjoint(xp, a, geom.pads, geom.padding_mode, geom.spatial)

    def _weight_grad(self, spec):
        """(F, g, c_O', C) spectrum -> gW (c_O, c_I', k...)."""
        geom, xp = self.geom, self.xp
        F, g, o, C = spec.shape
        a = self._inverse(spec.reshape(F, 1, g * o, C), self.qk)  # (c_O, c_I'*S, Qk...)
        a = layout.depth_to_space(a, geom.stride)                   # (c_O, c_I', Qk*s...)
        a = layout.crop(a, geom.dilated_kernel)
        return xp.ascontiguousarray(layout.undilate(a, geom.dilation))

    # ---- memory ------------------------------------------------------------
    @staticmethod
    def working_set_bytes(geom: ConvGeometry, itemsize: int, batch: int) -> int:
        """Peak bytes of the spectra for ``batch`` rows: x, W, y (or gy) spectra and real buffers."""
        s = math.prod(geom.stride)
        qx = tuple(-(-p // st) for p, st in zip(geom.padded, geom.stride))
        L = tuple(backend.next_fast_len(q) for q in qx)
        F = math.prod(L[:-1]) * (L[-1] // 2 + 1)
        cplx = 2 * itemsize
        c_poly = geom.in_channels * s
        spectra = F * cplx * (batch * c_poly + geom.out_channels * c_poly // geom.groups
                              + batch * geom.out_channels)
        real = itemsize * math.prod(L) * batch * (c_poly + geom.out_channels)
        return spectra + real
