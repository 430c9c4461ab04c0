"""Reduce any convolution to a stride-1 valid correlation, and map gradients back.

Both algorithms run the same reduction (padding, polyphase split for strides,
dilation of the filters) and differ only in how they compute the reduced
correlation. Per group g of the reduced problem:

    inputs   (b, g, C, q_1..q_N)       C = (c_I / g) * prod(stride)
    filters  (g, c_O / g, C, k'_1..k'_N)
    y        (b, g, c_O / g, o_1..o_N) = valid correlation with core_dilation, cropped to o

With stride 1 the dilation can stay native (``keep_dilation``: the direct
algorithm skips zero taps); with stride > 1 the filters are dilated first and the
polyphase split makes the core dilation 1.

Only the part of the padded input that some output reads is kept: per dim the
first ``read = (o - 1) * s + k_dilated`` cells. A dim with a single output runs
with stride 1 (the stride never matters there), so an absurd stride such as 10**12
costs nothing: no rounding up to a multiple of it, no prod(stride) phase channels.
"""
from __future__ import annotations

import math

from . import layout
from .geometry import ConvGeometry
from .padding import pad, pad_adjoint


class Reduction:
    """``native_stride``: no polyphase split; the outputs sit on the grid at multiples of
    ``out_stride`` (the direct engine's forward and weight-gradient passes read them in place,
    prod(k) taps each instead of prod(stride) * prod(ceil(k / stride)))."""

    def __init__(self, xp, geom: ConvGeometry, keep_dilation: bool, native_stride: bool = False):
        self.xp, self.geom = xp, geom
        # The stride the outputs are taken with: 1 along dims with one output.
        run_stride = tuple(1 if o == 1 else s for o, s in zip(geom.out_spatial, geom.stride))
        self.read = tuple((o - 1) * s + ke for o, s, ke in zip(geom.out_spatial, run_stride,
                                                               geom.dilated_kernel))
        # The stride of the polyphase split, and the one left for the engine to step over.
        self.stride = (1,) * geom.ndim if native_stride else run_stride
        self.out_stride = run_stride if native_stride else (1,) * geom.ndim
        strided = any(s != 1 for s in self.stride)
        self.native_dilation = keep_dilation and not strided
        native = self.native_dilation
        self.core_dilation = geom.dilation if native else (1,) * geom.ndim
        extent = geom.kernel if native else geom.dilated_kernel
        self.qx = tuple(-(-r // s) for r, s in zip(self.read, self.stride))
        self.qk = tuple(-(-e // s) for e, s in zip(extent, self.stride))
        self.channels = geom.in_channels // geom.groups * math.prod(self.stride)
        self.out_channels = geom.out_channels // geom.groups

    def inputs(self, x, lo, hi, extent=None):
        """x[lo:hi] (b, c_I, d...) -> (b, g, C, q...): padded, split by phase, grouped.

        ``extent`` (stride 1 only, each >= q): the array comes out that long instead, zeros past q (the
        FFT engine's overlap-save windows reach past q). With zero padding that every output reads
        (no cells past ``read``), the zeros past q are part of the one padding copy, not a second copy."""
        geom, xp = self.geom, self.xp
        if extent is None:
            extent = layout.round_up(self.read, self.stride)
        else:
            assert all(s == 1 for s in self.stride) and all(e >= q for e, q in zip(extent, self.qx))
        x = x[lo:hi]
        padded = tuple(d + l + h for d, (l, h) in zip(x.shape[2:], geom.pads))
        if geom.padding_mode == "zeros" and padded == self.read:
            a = pad(xp, x, tuple((l, h + e - r) for (l, h), e, r in zip(geom.pads, extent, self.read)), "zeros")
        else:
            a = layout.pad_high(xp, layout.crop(pad(xp, x, geom.pads, geom.padding_mode), self.read), extent)
        a = layout.space_to_depth(a, self.stride)
        return a.reshape((a.shape[0], geom.groups, self.channels) + a.shape[2:])

    def zero_margins(self) -> tuple:
        """((zeros at the low end, zeros at the high end), ...) per axis of ``inputs``' q cells that
        are zero padding whatever x holds: stride-1 axes with zero padding; (0, 0) elsewhere."""
        geom = self.geom
        if geom.padding_mode != "zeros":
            return ((0, 0),) * geom.ndim
        return tuple((min(lo, q), max(0, q - lo - d)) if s == 1 else (0, 0)
                     for (lo, _), d, q, s in zip(geom.pads, geom.spatial, self.qx, self.stride))

    def filters(self, W):
        """W (c_O, c_I/g, k...) -> (g, c_O/g, C, k'...)."""
        geom, xp = self.geom, self.xp
        Wd = W if self.native_dilation else layout.dilate(xp, W, geom.dilation)
        Wd = layout.pad_high(xp, Wd, tuple(q * s for q, s in zip(self.qk, self.stride)))
        Wp = layout.space_to_depth(Wd, self.stride)
        return Wp.reshape((geom.groups, self.out_channels) + Wp.shape[1:])

    def input_grad(self, a):
        """Gradient of ``inputs``' output (b, g*C, q...) -> gx (b, c_I, d...). With zero padding and
        stride 1 ``a`` may end anywhere past x's cells (an FFT plan shorter than q: its high zeros'
        gradient is never computed)."""
        geom, xp = self.geom, self.xp
        if geom.padding_mode == "zeros" and all(v == 1 for v in self.stride) and all(
                lo + d <= min(r, e) for (lo, _), d, r, e in zip(geom.pads, geom.spatial, self.read, a.shape[2:])):
            # every cell of x is read and in a: the adjoint of the zero padding is x's window, one copy
            return xp.ascontiguousarray(a[(slice(None),) * 2 + tuple(
                slice(lo, lo + d) for (lo, _), d in zip(geom.pads, geom.spatial))])
        if any(v != 1 for v in self.stride) and layout.phase_copies_pay(self.stride):   # phase by phase
            if geom.padding_mode == "zeros":   # the zero padding's adjoint is the window of x itself
                return layout.depth_to_space_window(xp, a, self.stride, self.read,
                                                    tuple(lo for lo, _ in geom.pads), geom.spatial)
            a = layout.depth_to_space_window(xp, a, self.stride, self.read, (0,) * geom.ndim, geom.padded)
        else:
            a = layout.depth_to_space(a, self.stride)   # (b, c_I, q*s...)
            a = layout.pad_high(xp, layout.crop(a, self.read), geom.padded)   # unread cells get 0
        return pad_adjoint(xp, a, geom.pads, geom.padding_mode, geom.spatial)

    def weight_grad(self, a):
        """Gradient of ``filters``' output as (c_O, C, k'...) -> gW (c_O, c_I/g, k...)."""
        geom = self.geom
        a = layout.depth_to_space(a, self.stride)
        if self.native_dilation:
            a = layout.crop(a, geom.kernel)
        else:
            a = layout.undilate(layout.crop(a, geom.dilated_kernel), geom.dilation)
        return self.xp.ascontiguousarray(a)
