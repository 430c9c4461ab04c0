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
"""
from __future__ import annotations

import math

from . import layout
from .geometry import ConvGeometry
from .padding import pad, pad_adjoint


class Reduction:
    def __init__(self, xp, geom: ConvGeometry, keep_dilation: bool):
        self.xp, self.geom = xp, geom
        strided = any(s != 1 for s in geom.stride)
        self.native_dilation = keep_dilation and not strided
        native = self.native_dilation
        self.core_dilation = geom.dilation if native else (1,) * geom.ndim
        extent = geom.kernel if native else geom.dilated_kernel
        self.qx = tuple(-(-p // s) for p, s in zip(geom.padded, geom.stride))
        self.qk = tuple(-(-e // s) for e, s in zip(extent, geom.stride))
        self.channels = geom.in_channels // geom.groups * math.prod(geom.stride)
        self.out_channels = geom.out_channels // geom.groups

    def inputs(self, x, lo, hi):
        """x[lo:hi] (b, c_I, d...) -> (b, g, C, q...): padded, split by phase, grouped."""
        geom, xp = self.geom, self.xp
        a = pad(xp, x[lo:hi], geom.pads, geom.padding_mode)
        a = layout.pad_high(xp, a, layout.round_up(a.shape[2:], geom.stride))
        a = layout.space_to_depth(a, geom.stride)
        return a.reshape((a.shape[0], geom.groups, self.channels) + a.shape[2:])

    def filters(self, W):
        """W (c_O, c_I/g, k...) -> (g, c_O/g, C, k'...)."""
        geom, xp = self.geom, self.xp
        Wd = W if self.native_dilation else layout.dilate(xp, W, geom.dilation)
        Wd = layout.pad_high(xp, Wd, tuple(q * s for q, s in zip(self.qk, geom.stride)))
        Wp = layout.space_to_depth(Wd, geom.stride)
        return Wp.reshape((geom.groups, self.out_channels) + Wp.shape[1:])

    def input_grad(self, a):
        """Gradient of ``inputs``' output (b, g*C, q...) -> gx (b, c_I, d...)."""
        geom, xp = self.geom, self.xp
        a = layout.depth_to_space(a, geom.stride)   # (b, c_I, q*s...)
        a = layout.crop(a, geom.padded)
        return pad_adjoint(xp, a, geom.pads, geom.padding_mode, geom.spatial)

    def weight_grad(self, a):
        """Gradient of ``filters``' output as (c_O, C, k'...) -> gW (c_O, c_I/g, k...)."""
        geom = self.geom
        a = layout.depth_to_space(a, geom.stride)
        if self.native_dilation:
            a = layout.crop(a, geom.kernel)
        else:
            a = layout.undilate(layout.crop(a, geom.dilated_kernel), geom.dilation)
        return self.xp.ascontiguousarray(a)
