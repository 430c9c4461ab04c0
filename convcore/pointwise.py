"""Pointwise convolutions (every kernel size 1, no padding): channel mixing, one product per image.

A 1x1 (x 1...) filter touches one cell per output, so the layer is a matrix product over the
channels of each group, at every output cell at once (the bottlenecks, projections and heads
of most networks). The direct engine's grid, column blocks and transposed copies of x, y, gy
and gx buy nothing here: x (n, g, C, P) is already the right-hand side, and y comes out in
place (P = prod(o), C = c_I/g, O = c_O/g):

    y[n, g]  = W[g] (O, C) @ x[n, g] (C, P)
    gx[n, g] = W[g]^T (C, O) @ gy[n, g] (O, P)
    gW[g]    = sum_n gy[n, g] (O, P) @ x[n, g]^T (P, C)

With a stride, the outputs read x's cells at the stride (one strided copy of x), and gx is
those cells' gradients with zeros between them. Dilation does not matter with one tap.
"""
from __future__ import annotations

import math

from . import backend
from .geometry import ConvGeometry


def applies(geom: ConvGeometry) -> bool:
    """Every kernel size 1 and no padding: the layer mixes channels only."""
    return all(k == 1 for k in geom.kernel) and not any(lo or hi for lo, hi in geom.pads)


def _strided(geom: ConvGeometry) -> bool:
    return any(s != 1 for s in geom.stride)


def _cells(geom: ConvGeometry) -> tuple:
    """The index of x's cells that the outputs read."""
    return (slice(None), slice(None)) + tuple(slice(None, None, s) for s in geom.stride)


def _read(xp, geom: ConvGeometry, x):
    """x at the outputs' cells as (n, g, C, P): a view of x unstrided, a copy otherwise."""
    if _strided(geom):
        x = xp.ascontiguousarray(x[_cells(geom)])
    n, g = geom.batch, geom.groups
    return x.reshape(n, g, geom.in_channels // g, math.prod(geom.out_spatial))


def _filters(geom: ConvGeometry, W):
    """W (c_O, c_I/g, 1...) as (g, O, C)."""
    g = geom.groups
    return W.reshape(g, geom.out_channels // g, geom.in_channels // g)


def forward(xp, geom: ConvGeometry, x, W):
    """y (n, c_O, o...) without bias."""
    y = backend.matmul(xp, _filters(geom, W), _read(xp, geom, x))     # (n, g, O, P)
    return y.reshape(geom.out_shape)


def backward(xp, geom: ConvGeometry, x, W, gy, need_x: bool, need_W: bool):
    """(gx, gW) for gy (n, c_O, o...); an entry not asked for is None."""
    n, g = geom.batch, geom.groups
    G = gy.reshape(n, g, geom.out_channels // g, math.prod(geom.out_spatial))
    gx = gW = None
    if need_W:
        X = _read(xp, geom, x)
        gW = backend.matmul(xp, G, X.swapaxes(-1, -2)).sum(axis=0).reshape(W.shape)
    if need_x:
        Wt = xp.ascontiguousarray(_filters(geom, W).swapaxes(1, 2))   # (g, C, O)
        cells = backend.matmul(xp, Wt, G)                               # (n, g, C, P)
        if _strided(geom):
            gx = xp.zeros(geom.in_shape, gy.dtype)
            gx[_cells(geom)] = cells.reshape((n, geom.in_channels) + tuple(geom.out_spatial))
        else:
            gx = cells.reshape(geom.in_shape)
    return gx, gW


def estimate_bytes(geom: ConvGeometry, itemsize: int) -> tuple:
    """(shared, forward, backward) allocations, as ``costs.Estimate`` names them."""
    n, g = geom.batch, geom.groups
    read = {"strided_input": n * geom.in_channels * math.prod(geom.out_spatial) * itemsize} if _strided(geom) else {}
    filters = geom.out_channels * (geom.in_channels // g) * itemsize
    forward = {"y": n * geom.out_channels * math.prod(geom.out_spatial) * itemsize, **read}
    backward = {"gx": n * geom.in_channels * math.prod(geom.spatial) * itemsize, "gW_per_image": n * filters,
                "gW": filters, "filters_transposed": filters, **read}
    if _strided(geom):
        backward["gx_cells"] = read["strided_input"]
    return {}, forward, backward


def seconds(geom: ConvGeometry, itemsize: int, rates) -> float:
    """Modelled seconds of forward + all gradients: three products, and the strided copies of x."""
    flops = 3 * 2.0 * geom.batch * geom.out_channels * (geom.in_channels // geom.groups) * math.prod(geom.out_spatial)
    copies = 3 * geom.batch * geom.in_channels * math.prod(geom.out_spatial) * itemsize if _strided(geom) else 0
    return rates.precision(itemsize) * (flops / rates.gemm + copies / rates.copy) + rates.overhead("direct")
