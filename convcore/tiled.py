"""A transposed convolution whose kernel tiles its output: kernel == stride, no padding, no
dilation, no output_padding (the 2x2 / 2x2x2 up-convolution of U-Nets).

Input cell i writes the block y[i * k + t] (t < k in every dim) and nothing else, so with
K = prod(k), D = prod(d) and, per group, x (n, C, D), W (C, O, K):

    y[n, o, t, i]  = sum_c W[c, o, t] x[n, c, i]        one GEMM (O K, C) @ (C, D) per sample
    gx[n, c, i]    = sum_{o,t} W[c, o, t] gy[n, o, t, i]
    gW[c, o, t]    = sum_{n,i} x[n, c, i] gy[n, o, t, i]

and y's (o, t, i) layout is one transposed copy away from (n, c_O, d_1 k_1, ..., d_N k_N).
The products go through backend.matmul, single-threaded BLAS like every convcore GEMM (OpenBLAS's
own threads on these small stacked products ran 100x slower on a busy machine).
Shapes as in transpose.py: x (n, c_I, d...), W (c_I, c_O // g, k...), y / gy (n, c_O, d k...).
"""
from __future__ import annotations

import math

from . import backend
from .backend import get_array_module


def _interleave(N: int) -> tuple:
    """Axes (n, g, O, k_1..k_N, d_1..d_N) -> (n, g, O, d_1, k_1, ..., d_N, k_N)."""
    return (0, 1, 2) + sum(((3 + N + j, 3 + j) for j in range(N)), ())


def _split(N: int) -> tuple:
    """Inverse of ``_interleave``: (n, g, O, d_1, k_1, ...) -> (n, g, O, k_1..k_N, d_1..d_N)."""
    return (0, 1, 2) + tuple(4 + 2 * j for j in range(N)) + tuple(3 + 2 * j for j in range(N))


def forward(x, W, groups: int):
    """y (n, c_O, d_1 k_1, ..., d_N k_N) from x (n, c_I, d...) and W (c_I, c_O // g, k...)."""
    xp = get_array_module(x)
    n, N, d, k = x.shape[0], x.ndim - 2, x.shape[2:], W.shape[2:]
    C, O, K, D = W.shape[0] // groups, W.shape[1], math.prod(k), math.prod(d)
    Wt = W.reshape(groups, C, O * K).swapaxes(1, 2)                    # (g, O K, C)
    Z = backend.matmul(xp, Wt, x.reshape(n, groups, C, D))             # (n, g, O K, D)
    y = xp.empty((n, groups * O) + tuple(a * b for a, b in zip(d, k)), x.dtype)
    y.reshape((n, groups, O) + sum(((a, b) for a, b in zip(d, k)), ()))[...] = Z.reshape(
        (n, groups, O) + k + d).transpose(_interleave(N))
    return y


def backward(gy, x, W, groups: int, need_x: bool, need_W: bool):
    """(gx like x, gW like W) for gy (n, c_O, d k...); an entry not asked for is None."""
    xp = get_array_module(gy)
    n, N, d, k = x.shape[0], x.ndim - 2, x.shape[2:], W.shape[2:]
    C, O, K, D = W.shape[0] // groups, W.shape[1], math.prod(k), math.prod(d)
    G = xp.ascontiguousarray(gy.reshape((n, groups, O) + sum(((a, b) for a, b in zip(d, k)), ())).transpose(
        _split(N))).reshape(n, groups, O * K, D)                        # (n, g, O K, D)
    gx = gW = None
    if need_x:
        gx = backend.matmul(xp, W.reshape(groups, C, O * K), G).reshape(x.shape)  # (n, g, C, D)
    if need_W:
        X = x.reshape(n, groups, C, D)
        gW = backend.matmul(xp, X, G.swapaxes(-1, -2)).sum(axis=0).reshape(W.shape)   # (g, C, O K) summed over n
    return gx, gW
