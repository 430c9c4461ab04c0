"""Upsample by an integer factor per spatial dim, ``nearest`` or ``linear`` (PyTorch's ``Upsample`` with
``align_corners=False``: linear, bilinear, trilinear, and the same rule in any N).

    x (n, c, d_1..d_N) -> y (n, c, s_1*d_1, ..., s_N*d_N)
Both modes are separable: one small interpolation matrix per axis, M_j (s_j*d_j, d_j), applied
along that axis; backward applies M_j^T. Nearest: M[o, o // s] = 1 (done as a repeat and a
block sum, which is the same map). Linear: output o samples input position (o + 0.5) / s - 0.5,
clamped at 0, between its two neighbours (the upper one clamped at d - 1).
"""
from __future__ import annotations

import numpy as np

from ...backend import get_array_module
from ...geometry import MAX_EXTENT
from .base import Layer, as_json, check_sizes, per_dim_option

MODES = ("nearest", "linear")


def linear_matrix(d: int, s: int) -> np.ndarray:
    """(s*d, d) weights of linear interpolation with align_corners=False."""
    src = np.maximum((np.arange(s * d) + 0.5) / s - 0.5, 0.0)
    lo = np.floor(src).astype(np.int64)
    hi = np.minimum(lo + 1, d - 1)
    frac = src - lo
    M = np.zeros((s * d, d))
    np.add.at(M, (np.arange(s * d), lo), 1.0 - frac)
    np.add.at(M, (np.arange(s * d), hi), frac)
    return M


class Upsample(Layer):
    type_name = "upsample"

    def __init__(self, scale=2, mode="nearest"):
        super().__init__()
        check_sizes("scale", scale)
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self.scale, self.mode = scale, mode
        self._matrices = None

    def output_shape(self, in_shape):
        if len(in_shape) < 2:
            raise ValueError(f"upsample needs an input (c, d_1, ..., d_N) with N >= 1, got {tuple(in_shape)}")
        s = per_dim_option("scale", self.scale, len(in_shape) - 1)
        out = (in_shape[0],) + tuple(d * f for d, f in zip(in_shape[1:], s))
        if max(out) > MAX_EXTENT:   # the arrays' sizes could not even be passed to NumPy (OverflowError)
            raise ValueError(f"upsample scale {as_json(self.scale)} turns the input {tuple(in_shape)} into "
                             f"{out}: each size must be at most 2**48")
        return out

    def init_params(self, rng, dtype, xp):
        self.s = per_dim_option("scale", self.scale, len(self.in_shape) - 1)
        if self.mode == "linear":  # one matrix per axis, transposed for a matmul over the last axis
            self._matrices = [xp.asarray(linear_matrix(d, f).T.astype(dtype))
                              for d, f in zip(self.in_shape[1:], self.s)]

    def forward(self, x, training=False):
        xp = get_array_module(x)
        for j, f in enumerate(self.s):
            axis = 2 + j
            if f == 1:
                continue
            if self.mode == "nearest":
                x = xp.repeat(x, f, axis=axis)
            else:   # (..., d) @ (d, s*d) along this axis
                x = xp.moveaxis(xp.moveaxis(x, axis, -1) @ self._matrices[j], -1, axis)
        return xp.ascontiguousarray(x)

    def backward(self, gy):
        xp = get_array_module(gy)
        for j, f in enumerate(self.s):
            axis = 2 + j
            if f == 1:
                continue
            if self.mode == "nearest":   # each input cell fed f consecutive outputs
                shape = gy.shape[:axis] + (gy.shape[axis] // f, f) + gy.shape[axis + 1:]
                gy = gy.reshape(shape).sum(axis=axis + 1)
            else:
                gy = xp.moveaxis(xp.moveaxis(gy, axis, -1) @ self._matrices[j].T, -1, axis)
        return xp.ascontiguousarray(gy)

    def config(self):
        return {"scale": as_json(self.scale), "mode": self.mode}
