"""Pointwise convolutions (every kernel size 1, no padding): channel mixing, as matrix products.

A 1x1 (x 1...) filter touches one cell per output, so the layer is a matrix product over the
channels of each group, at every output cell at once (the bottlenecks, projections and heads
of most networks). The direct engine's grid and column blocks buy nothing here: x (n, g, C, P)
is already the right-hand side, and y comes out in place (P = prod(o), C = c_I/g, O = c_O/g):

    y[n, g]  = W[g] (O, C) @ x[n, g] (C, P)
    gx[n, g] = W[g]^T (C, O) @ gy[n, g] (O, P)
    gW[g]    = sum_n gy[n, g] (O, P) @ x[n, g]^T (P, C)

The weight gradient's per-image products hold n filter-sized results before their sum; where
those would outgrow x and gy (many channels on few cells: the late layers of a ResNet, whose
n filters run to gigabytes), it is one product over all n * P cells of transposed copies of gy
and x instead (``_gW_form``). With a stride, the outputs read x's cells at the stride (one
strided copy of x), and gx is those cells' gradients with zeros between them. Dilation does not
matter with one tap.
"""
from __future__ import annotations

import math

import numpy as np

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
    """x at the outputs' cells as (n, g, C, P): x itself unstrided (a view of a contiguous x), a copy otherwise."""
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
        form = _gW_form(geom)
        if form == "one image":
            gW = backend.matmul(xp, G[0], X[0].swapaxes(-1, -2))
        elif form == "per image":
            gW = backend.matmul(xp, G, X.swapaxes(-1, -2)).sum(axis=0)
        else:   # (g, O, n * P) @ (g, n * P, C): one product over every image's cells
            cells = n * math.prod(geom.out_spatial)
            Gt = xp.ascontiguousarray(G.transpose(1, 2, 0, 3)).reshape(g, -1, cells)
            Xt = xp.ascontiguousarray(X.transpose(1, 2, 0, 3)).reshape(g, -1, cells)
            gW = backend.matmul(xp, Gt, Xt.swapaxes(-1, -2))
        gW = gW.reshape(W.shape)
    if need_x:
        Wt = xp.ascontiguousarray(_filters(geom, W).swapaxes(1, 2))   # (g, C, O)
        cells = backend.matmul(xp, Wt, G)                               # (n, g, C, P)
        if _strided(geom):
            gx = xp.zeros(geom.in_shape, gy.dtype)
            gx[_cells(geom)] = cells.reshape((n, geom.in_channels) + tuple(geom.out_spatial))
        else:
            gx = cells.reshape(geom.in_shape)
    return gx, gW


def _gW_form(geom: ConvGeometry) -> str:
    """How the weight gradient is taken: "one image" (one product), else "per image" (n products,
    n filter-sized results summed) or "transposed" (one product over all n * P cells of transposed
    copies of gy and x), whichever moves fewer values (per image, c_O * c_I / g results against
    P * (c_I + c_O) copied cells)."""
    if geom.batch == 1:
        return "one image"
    per_image = geom.out_channels * geom.in_channels // geom.groups <= math.prod(geom.out_spatial) * (
        geom.in_channels + geom.out_channels)
    return "per image" if per_image else "transposed"


def estimate_bytes(geom: ConvGeometry, itemsize: int) -> tuple:
    """(shared, forward, backward) allocations, as ``costs.Estimate`` names them. Each pass also
    counts one ufunc buffer (NumPy's, up to ``np.getbufsize()`` values: the bias add, broadcast
    products), which outgrows ``memory.FIXED_BYTES`` for float64."""
    n, g = geom.batch, geom.groups
    out_cells = n * math.prod(geom.out_spatial)
    read = {"strided_input": out_cells * geom.in_channels * itemsize} if _strided(geom) else {}
    filters = geom.out_channels * (geom.in_channels // g) * itemsize
    ufunc = np.getbufsize() * itemsize
    forward = {"y": out_cells * geom.out_channels * itemsize, "ufunc_buffer": ufunc, **read}
    backward = {"gx": n * geom.in_channels * math.prod(geom.spatial) * itemsize, "gW": filters,
                "filters_transposed": filters, "ufunc_buffer": ufunc, **read}
    if _strided(geom):
        backward["gx_cells"] = read["strided_input"]
    form = _gW_form(geom)
    if form == "per image":
        backward["gW_per_image"] = n * filters
    elif form == "transposed":
        backward["gW_transposed_inputs"] = out_cells * (geom.in_channels + geom.out_channels) * itemsize
    return {}, forward, backward


def seconds(geom: ConvGeometry, itemsize: int, rates) -> float:
    """Modelled seconds of forward + all gradients: three products, the strided copies of x and
    the weight gradient's extra traffic (per-image results, or transposed copies of gy and x)."""
    n, g = geom.batch, geom.groups
    out_cells = n * math.prod(geom.out_spatial)
    flops = 3 * 2.0 * out_cells * geom.out_channels * (geom.in_channels // g)
    copies = 3 * out_cells * geom.in_channels * itemsize if _strided(geom) else 0
    form = _gW_form(geom)
    if form == "per image":
        copies += 2 * n * geom.out_channels * (geom.in_channels // g) * itemsize
    elif form == "transposed":
        copies += 2 * out_cells * (geom.in_channels + geom.out_channels) * itemsize
    return rates.precision(itemsize) * (flops / rates.gemm + copies / rates.copy) + rates.overhead("direct")
