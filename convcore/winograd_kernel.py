"""Winograd F(m, 3) tile loops for 3^N kernels, compiled (Numba), fused per block of tiles.

The math (winograd.py) is the FFT engine's in a small real transform: with a = m + 2 points per
axis, a tile of m^N outputs reads an a^N patch of the padded input, and per axis

    y = A^T [ (G w G^T) . (B^T d B) ] A        (1-D: y = A^T [(G w) . (B^T d)])

with the transforms applied along every axis in turn. Its channel sums are per transform point,
M[p, o, t] = sum_c U[p, o, c] V[p, c, t] over the tiles t: the FFT engine's products with a^N real
points in place of the frequencies. A naive NumPy version (transform everything, then batched
products, then inverse) is slower than im2col + BLAS: each stage is a pass over arrays a^N / m^N
times the input's size. Here each block of TB tiles goes through gather, transforms, products
and the inverse transform while its arrays stay in cache, vectorised over the block's tiles.

Layout: every tile-block array is (rows, TB) with the block's tiles contiguous, so the transforms
are loops of TB lanes. The channel sums are one small BLAS product per
point (np.dot inside the loop: 50 G multiply-adds/s here, a written-out loop reached 12-20). Tiles
are walked in runs along a row of tiles, where the patches' cells along the last axis are one
contiguous range (tile i: cells m i .. m i + m + 1): the gathers and scatters read or write that
range once and do the last axis's transform on the way (per-lane gathers cost as much as all the
other transforms together).

The loops never allocate per tile and run without the GIL; winograd.py splits the tiles between
convcore's threads (the backward pass in chunks that do not depend on the thread count; each
output of the forward pass is one tile's, whichever thread computes it). Everything compiled is in
this one file: Numba's disk cache notices a change in the file of the function it compiles, not
in the files of the functions that one calls (a transform changed in a second module kept running
its old compiled code).
"""
from __future__ import annotations

import functools
import logging
import threading

import numpy as np

from . import numba_cache

log = logging.getLogger(__name__)

TB = 64   # tiles per block: the lanes of every loop; a block's arrays stay in L1/L2



# ---- the 1-D transforms ------------------------------------------------------------------------
# A block's arrays are (rows, TB): row r holds one point of TB tiles. Each transform is written out
# as one function per line (its output rows from its input rows, TB lanes each), inlined where it
# is called: a generic matrix loop, or line functions called rather than inlined, ran 2-3x slower.
#
# F(2, 3) (Lavin & Gray 2016, section 4.1):
#     B^T = [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]]     A^T = [[1, 1, 1, 0], [0, 1, -1, -1]]
# F(4, 3) (section 4.2):
#     B^T = [[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0],
#            [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]]
#     A^T = [[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]]
# F(3, 3) (points 0, 1, -1, 2 and infinity, by the same construction):
#     B^T = [[2, -1, -2, 1, 0], [0, -2, -1, 1, 0], [0, 2, -3, 1, 0], [0, -1, 0, 1, 0], [0, 2, -1, -2, 1]]
#     A^T = [[1, 1, 1, 1, 0], [0, 1, -1, 2, 0], [0, 1, 1, 4, 1]]
# B and A (their transposes) carry gradients back: B for the input gradient's patches, A for gy's tiles.

# transform kinds: (B^T, B, A^T, A) for F(2, 3), then for F(4, 3)
BT2, B2, AT2, A2, BT4, B4, AT4, A4, BT3, B3, AT3, A3 = range(12)
POINTS_IN = (4, 4, 4, 2, 6, 6, 6, 4, 5, 5, 5, 3)
POINTS_OUT = (4, 4, 2, 4, 6, 6, 4, 6, 5, 5, 3, 5)




def _line_bt2(src, dst, r_in, r_out, s_in, s_out):   # pragma: no cover - compiled
    """B^T = [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]]: rows r_in + v * s_in of src to
    rows r_out + u * s_out of dst (every line function reads and writes so)."""
    s0, s1, s2, s3 = src[r_in], src[r_in + s_in], src[r_in + 2 * s_in], src[r_in + 3 * s_in]
    d0, d1, d2, d3 = dst[r_out], dst[r_out + s_out], dst[r_out + 2 * s_out], dst[r_out + 3 * s_out]
    for t in range(TB):
        a1 = s1[t]
        a2 = s2[t]
        d0[t] = s0[t] - a2
        d1[t] = a1 + a2
        d2[t] = a2 - a1
        d3[t] = a1 - s3[t]


def _line_b2(src, dst, r_in, r_out, s_in, s_out):   # pragma: no cover - compiled
    """B = (B^T)^T = [[1, 0, 0, 0], [0, 1, -1, 1], [-1, 1, 1, 0], [0, 0, 0, -1]]."""
    s0, s1, s2, s3 = src[r_in], src[r_in + s_in], src[r_in + 2 * s_in], src[r_in + 3 * s_in]
    d0, d1, d2, d3 = dst[r_out], dst[r_out + s_out], dst[r_out + 2 * s_out], dst[r_out + 3 * s_out]
    for t in range(TB):
        a0 = s0[t]
        a1 = s1[t]
        a2 = s2[t]
        a3 = s3[t]
        d0[t] = a0
        d1[t] = a1 - a2 + a3
        d2[t] = a1 + a2 - a0
        d3[t] = -a3


def _line_at2(src, dst, r_in, r_out, s_in, s_out):   # pragma: no cover - compiled
    """A^T = [[1, 1, 1, 0], [0, 1, -1, -1]]."""
    s0, s1, s2, s3 = src[r_in], src[r_in + s_in], src[r_in + 2 * s_in], src[r_in + 3 * s_in]
    d0, d1 = dst[r_out], dst[r_out + s_out]
    for t in range(TB):
        a1 = s1[t]
        a2 = s2[t]
        d0[t] = s0[t] + a1 + a2
        d1[t] = a1 - a2 - s3[t]


def _line_a2(src, dst, r_in, r_out, s_in, s_out):   # pragma: no cover - compiled
    """A = (A^T)^T = [[1, 0], [1, 1], [1, -1], [0, -1]]."""
    s0, s1 = src[r_in], src[r_in + s_in]
    d0, d1, d2, d3 = dst[r_out], dst[r_out + s_out], dst[r_out + 2 * s_out], dst[r_out + 3 * s_out]
    for t in range(TB):
        a0 = s0[t]
        a1 = s1[t]
        d0[t] = a0
        d1[t] = a0 + a1
        d2[t] = a0 - a1
        d3[t] = -a1


def _line_bt4(src, dst, r_in, r_out, s_in, s_out):   # pragma: no cover - compiled
    """F(4, 3)'s B^T."""
    s0, s1, s2 = src[r_in], src[r_in + s_in], src[r_in + 2 * s_in]
    s3, s4, s5 = src[r_in + 3 * s_in], src[r_in + 4 * s_in], src[r_in + 5 * s_in]
    d0, d1, d2 = dst[r_out], dst[r_out + s_out], dst[r_out + 2 * s_out]
    d3, d4, d5 = dst[r_out + 3 * s_out], dst[r_out + 4 * s_out], dst[r_out + 5 * s_out]
    for t in range(TB):
        a1 = s1[t]
        a2 = s2[t]
        a3 = s3[t]
        a4 = s4[t]
        d0[t] = 4 * s0[t] - 5 * a2 + a4
        d1[t] = a3 + a4 - 4 * (a1 + a2)
        d2[t] = 4 * (a1 - a2) + a4 - a3
        d3[t] = 2 * (a3 - a1) + a4 - a2
        d4[t] = 2 * (a1 - a3) + a4 - a2
        d5[t] = 4 * a1 - 5 * a3 + s5[t]


def _line_b4(src, dst, r_in, r_out, s_in, s_out):   # pragma: no cover - compiled
    """F(4, 3)'s B = (B^T)^T."""
    s0, s1, s2 = src[r_in], src[r_in + s_in], src[r_in + 2 * s_in]
    s3, s4, s5 = src[r_in + 3 * s_in], src[r_in + 4 * s_in], src[r_in + 5 * s_in]
    d0, d1, d2 = dst[r_out], dst[r_out + s_out], dst[r_out + 2 * s_out]
    d3, d4, d5 = dst[r_out + 3 * s_out], dst[r_out + 4 * s_out], dst[r_out + 5 * s_out]
    for t in range(TB):
        a0 = s0[t]
        a1 = s1[t]
        a2 = s2[t]
        a3 = s3[t]
        a4 = s4[t]
        a5 = s5[t]
        d0[t] = 4 * a0
        d1[t] = 4 * (a2 - a1 + a5) + 2 * (a4 - a3)
        d2[t] = -5 * a0 - 4 * (a1 + a2) - a3 - a4
        d3[t] = a1 - a2 + 2 * (a3 - a4) - 5 * a5
        d4[t] = a0 + a1 + a2 + a3 + a4
        d5[t] = a5


def _line_at4(src, dst, r_in, r_out, s_in, s_out):   # pragma: no cover - compiled
    """F(4, 3)'s A^T (6 points -> 4 outputs)."""
    s0, s1, s2 = src[r_in], src[r_in + s_in], src[r_in + 2 * s_in]
    s3, s4, s5 = src[r_in + 3 * s_in], src[r_in + 4 * s_in], src[r_in + 5 * s_in]
    d0, d1, d2, d3 = dst[r_out], dst[r_out + s_out], dst[r_out + 2 * s_out], dst[r_out + 3 * s_out]
    for t in range(TB):
        p12 = s1[t] + s2[t]
        m12 = s1[t] - s2[t]
        p34 = s3[t] + s4[t]
        m34 = s3[t] - s4[t]
        d0[t] = s0[t] + p12 + p34
        d1[t] = m12 + 2 * m34
        d2[t] = p12 + 4 * p34
        d3[t] = m12 + 8 * m34 + s5[t]


def _line_a4(src, dst, r_in, r_out, s_in, s_out):   # pragma: no cover - compiled
    """F(4, 3)'s A = (A^T)^T (4 values -> 6 points)."""
    s0, s1, s2, s3 = src[r_in], src[r_in + s_in], src[r_in + 2 * s_in], src[r_in + 3 * s_in]
    d0, d1, d2 = dst[r_out], dst[r_out + s_out], dst[r_out + 2 * s_out]
    d3, d4, d5 = dst[r_out + 3 * s_out], dst[r_out + 4 * s_out], dst[r_out + 5 * s_out]
    for t in range(TB):
        g0 = s0[t]
        g1 = s1[t]
        g2 = s2[t]
        g3 = s3[t]
        e = g0 + g2
        o = g1 + g3
        e4 = g0 + 4 * g2
        o8 = 2 * g1 + 8 * g3
        d0[t] = g0
        d1[t] = e + o
        d2[t] = e - o
        d3[t] = e4 + o8
        d4[t] = e4 - o8
        d5[t] = g3


def _transform2(kind, src, buf0, buf1, dst, N, in_mul, in_add, out_mul, out_add):   # pragma: no cover
    """Apply the F(2, 3) transform ``kind`` along the first N - 1 axes (N >= 2) of an array of rows
    (row-major over N axes of 4 points, or 2 for A's input; the last axis is the gathers' and
    scatters' work): row r is read from src[r * in_mul + in_add] and the result's row r written to
    dst[r * out_mul + out_add], so that one channel of a (points x channels, TB) array is read or
    written in place; buf0 and buf1 (neither src nor dst) hold the passes between."""
    n_in, n_out = POINTS_IN[kind], POINTS_OUT[kind]
    prev = src
    for j in range(N - 1):
        outer = n_out ** j                  # axes before j: already transformed
        inner = n_in ** (N - 2 - j) * 4     # axes after j: not yet, and the last (4 points)
        im, ia = (in_mul, in_add) if j == 0 else (1, 0)
        nxt, om, oa = (dst, out_mul, out_add) if j == N - 2 else ((buf0, 1, 0) if j % 2 == 0 else (buf1, 1, 0))
        for o in range(outer):
            for i in range(inner):
                r_in = (o * n_in * inner + i) * im + ia
                r_out = (o * n_out * inner + i) * om + oa
                if kind == BT2:
                    _line_bt2(prev, nxt, r_in, r_out, inner * im, inner * om)
                elif kind == B2:
                    _line_b2(prev, nxt, r_in, r_out, inner * im, inner * om)
                elif kind == AT2:
                    _line_at2(prev, nxt, r_in, r_out, inner * im, inner * om)
                else:
                    _line_a2(prev, nxt, r_in, r_out, inner * im, inner * om)
        prev = nxt


def _transform4(kind, src, buf0, buf1, dst, N, in_mul, in_add, out_mul, out_add):   # pragma: no cover
    """``_transform2`` for F(4, 3) (6 points per axis). Two functions of four cases each: one of
    eight ran the same lines 4x slower (LLVM no longer vectorised them)."""
    n_in, n_out = POINTS_IN[kind], POINTS_OUT[kind]
    prev = src
    for j in range(N - 1):
        outer = n_out ** j
        inner = n_in ** (N - 2 - j) * 6
        im, ia = (in_mul, in_add) if j == 0 else (1, 0)
        nxt, om, oa = (dst, out_mul, out_add) if j == N - 2 else ((buf0, 1, 0) if j % 2 == 0 else (buf1, 1, 0))
        for o in range(outer):
            for i in range(inner):
                r_in = (o * n_in * inner + i) * im + ia
                r_out = (o * n_out * inner + i) * om + oa
                if kind == BT4:
                    _line_bt4(prev, nxt, r_in, r_out, inner * im, inner * om)
                elif kind == B4:
                    _line_b4(prev, nxt, r_in, r_out, inner * im, inner * om)
                elif kind == AT4:
                    _line_at4(prev, nxt, r_in, r_out, inner * im, inner * om)
                else:
                    _line_a4(prev, nxt, r_in, r_out, inner * im, inner * om)
        prev = nxt


def _line_bt3(src, dst, r_in, r_out, s_in, s_out):   # pragma: no cover - compiled
    """F(3, 3)'s B^T (points 0, 1, -1, 2 and infinity)."""
    s0, s1, s2, s3, s4 = src[r_in], src[r_in + s_in], src[r_in + 2 * s_in], src[r_in + 3 * s_in], src[r_in + 4 * s_in]
    d0, d1, d2 = dst[r_out], dst[r_out + s_out], dst[r_out + 2 * s_out]
    d3, d4 = dst[r_out + 3 * s_out], dst[r_out + 4 * s_out]
    for t in range(TB):
        a1 = s1[t]
        a2 = s2[t]
        a3 = s3[t]
        d0[t] = 2 * (s0[t] - a2) - a1 + a3
        d1[t] = a3 - a2 - 2 * a1
        d2[t] = 2 * a1 - 3 * a2 + a3
        d3[t] = a3 - a1
        d4[t] = 2 * (a1 - a3) - a2 + s4[t]


def _line_b3(src, dst, r_in, r_out, s_in, s_out):   # pragma: no cover - compiled
    """F(3, 3)'s B = (B^T)^T."""
    s0, s1, s2, s3, s4 = src[r_in], src[r_in + s_in], src[r_in + 2 * s_in], src[r_in + 3 * s_in], src[r_in + 4 * s_in]
    d0, d1, d2 = dst[r_out], dst[r_out + s_out], dst[r_out + 2 * s_out]
    d3, d4 = dst[r_out + 3 * s_out], dst[r_out + 4 * s_out]
    for t in range(TB):
        a0 = s0[t]
        a1 = s1[t]
        a2 = s2[t]
        a3 = s3[t]
        a4 = s4[t]
        d0[t] = 2 * a0
        d1[t] = 2 * (a2 - a1 + a4) - a0 - a3
        d2[t] = -2 * a0 - a1 - 3 * a2 - a4
        d3[t] = a0 + a1 + a2 + a3 - 2 * a4
        d4[t] = a4


def _line_at3(src, dst, r_in, r_out, s_in, s_out):   # pragma: no cover - compiled
    """F(3, 3)'s A^T = [[1, 1, 1, 1, 0], [0, 1, -1, 2, 0], [0, 1, 1, 4, 1]]."""
    s0, s1, s2, s3, s4 = src[r_in], src[r_in + s_in], src[r_in + 2 * s_in], src[r_in + 3 * s_in], src[r_in + 4 * s_in]
    d0, d1, d2 = dst[r_out], dst[r_out + s_out], dst[r_out + 2 * s_out]
    for t in range(TB):
        a1 = s1[t]
        a2 = s2[t]
        a3 = s3[t]
        d0[t] = s0[t] + a1 + a2 + a3
        d1[t] = a1 - a2 + 2 * a3
        d2[t] = a1 + a2 + 4 * a3 + s4[t]


def _line_a3(src, dst, r_in, r_out, s_in, s_out):   # pragma: no cover - compiled
    """F(3, 3)'s A = (A^T)^T (3 values -> 5 points)."""
    s0, s1, s2 = src[r_in], src[r_in + s_in], src[r_in + 2 * s_in]
    d0, d1, d2 = dst[r_out], dst[r_out + s_out], dst[r_out + 2 * s_out]
    d3, d4 = dst[r_out + 3 * s_out], dst[r_out + 4 * s_out]
    for t in range(TB):
        g0 = s0[t]
        g1 = s1[t]
        g2 = s2[t]
        e = g0 + g2
        d0[t] = g0
        d1[t] = e + g1
        d2[t] = e - g1
        d3[t] = g0 + 2 * g1 + 4 * g2
        d4[t] = g2


def _transform3(kind, src, buf0, buf1, dst, N, in_mul, in_add, out_mul, out_add):   # pragma: no cover
    """``_transform2`` for F(3, 3) (5 points per axis)."""
    n_in, n_out = POINTS_IN[kind], POINTS_OUT[kind]
    prev = src
    for j in range(N - 1):
        outer = n_out ** j
        inner = n_in ** (N - 2 - j) * 5
        im, ia = (in_mul, in_add) if j == 0 else (1, 0)
        nxt, om, oa = (dst, out_mul, out_add) if j == N - 2 else ((buf0, 1, 0) if j % 2 == 0 else (buf1, 1, 0))
        for o in range(outer):
            for i in range(inner):
                r_in = (o * n_in * inner + i) * im + ia
                r_out = (o * n_out * inner + i) * om + oa
                if kind == BT3:
                    _line_bt3(prev, nxt, r_in, r_out, inner * im, inner * om)
                elif kind == B3:
                    _line_b3(prev, nxt, r_in, r_out, inner * im, inner * om)
                elif kind == AT3:
                    _line_at3(prev, nxt, r_in, r_out, inner * im, inner * om)
                else:
                    _line_a3(prev, nxt, r_in, r_out, inner * im, inner * om)
        prev = nxt


def _transform(kind, src, buf0, buf1, dst, N, in_mul, in_add, out_mul, out_add):   # pragma: no cover
    """The transform ``kind`` (either tile size) along the first N - 1 axes: see ``_transform2``."""
    if kind < BT4:
        _transform2(kind, src, buf0, buf1, dst, N, in_mul, in_add, out_mul, out_add)
    elif kind < BT3:
        _transform4(kind, src, buf0, buf1, dst, N, in_mul, in_add, out_mul, out_add)
    else:
        _transform3(kind, src, buf0, buf1, dst, N, in_mul, in_add, out_mul, out_add)


LINES = (_line_bt2, _line_b2, _line_at2, _line_a2, _line_bt4, _line_b4, _line_at4, _line_a4, _line_bt3, _line_b3,
         _line_at3, _line_a3)


# ---- the tile loops ----------------------------------------------------------------------------

def _runs(s, nb, tiles, x_steps, x_image, y_steps, y_image, runs):   # pragma: no cover - compiled
    """Split the block's lanes (tiles s .. s + nb - 1, row-major over (image, tile index per axis))
    into runs along one row of tiles, whose cells are m apart: runs[k] = (first lane, length, its
    patch corner in the padded input, its tile corner in the padded output), flat offsets at channel
    0 (``*_steps``: the flat step between neighbouring tiles per axis, ``*_image``: per image).
    Returns the count of runs."""
    N = tiles.shape[0]
    row = tiles[N - 1]
    count = 0
    t = 0
    while t < nb:
        index = s + t
        n = min(nb - t, row - index % row)
        x_off = 0
        y_off = 0
        for j in range(N - 1, -1, -1):
            i = index % tiles[j]
            index //= tiles[j]
            x_off += i * x_steps[j]
            y_off += i * y_steps[j]
        runs[count, 0] = t
        runs[count, 1] = n
        runs[count, 2] = x_off + index * x_image
        runs[count, 3] = y_off + index * y_image
        count += 1
        t += n
    return count


# The gathers and scatters move a block's patches between the flat arrays and its rows, doing the
# last axis's transform on the way: along a run of tiles the patches' cells along that axis are
# one contiguous range (tile i: cells 2i .. 2i + 3), read or written once.

def _gather_bt2(flat, runs, count, offset, outer_off, buf, mul, add):   # pragma: no cover - compiled
    """buf rows (p', u): B^T along the last axis of the input patches, p' over the first N - 1
    axes (cells outer_off[p'] from a run's patch corner + offset); zeros after the tiles."""
    for po in range(outer_off.shape[0]):
        r = 4 * po
        d0, d1, d2, d3 = buf[r * mul + add], buf[(r + 1) * mul + add], buf[(r + 2) * mul + add], buf[(r + 3) * mul + add]
        last = 0
        for k in range(count):
            t, n = runs[k, 0], runs[k, 1]
            start = runs[k, 2] + offset + outer_off[po]
            src = flat[start:start + 2 * n + 2]
            e0, e1, e2, e3 = d0[t:t + n], d1[t:t + n], d2[t:t + n], d3[t:t + n]
            for i in range(n):
                a1 = src[2 * i + 1]
                a2 = src[2 * i + 2]
                e0[i] = src[2 * i] - a2
                e1[i] = a1 + a2
                e2[i] = a2 - a1
                e3[i] = a1 - src[2 * i + 3]
            last = t + n
        for t in range(last, TB):
            d0[t] = 0
            d1[t] = 0
            d2[t] = 0
            d3[t] = 0


def _gather_a2(flat, runs, count, offset, outer_off, buf, mul, add):   # pragma: no cover - compiled
    """buf rows (q', u): A along the last axis of the gy tiles (2 cells -> 4 points)."""
    for qo in range(outer_off.shape[0]):
        r = 4 * qo
        d0, d1, d2, d3 = buf[r * mul + add], buf[(r + 1) * mul + add], buf[(r + 2) * mul + add], buf[(r + 3) * mul + add]
        last = 0
        for k in range(count):
            t, n = runs[k, 0], runs[k, 1]
            start = runs[k, 3] + offset + outer_off[qo]
            src = flat[start:start + 2 * n]
            e0, e1, e2, e3 = d0[t:t + n], d1[t:t + n], d2[t:t + n], d3[t:t + n]
            for i in range(n):
                g0 = src[2 * i]
                g1 = src[2 * i + 1]
                e0[i] = g0
                e1[i] = g0 + g1
                e2[i] = g0 - g1
                e3[i] = -g1
            last = t + n
        for t in range(last, TB):
            d0[t] = 0
            d1[t] = 0
            d2[t] = 0
            d3[t] = 0


def _scatter_at2(flat, runs, count, offset, outer_off, buf, mul, add):   # pragma: no cover - compiled
    """The output tiles: A^T along the last axis of buf's rows (q', u), written to their 2 cells."""
    for qo in range(outer_off.shape[0]):
        r = 4 * qo
        s0, s1, s2, s3 = buf[r * mul + add], buf[(r + 1) * mul + add], buf[(r + 2) * mul + add], buf[(r + 3) * mul + add]
        for k in range(count):
            t, n = runs[k, 0], runs[k, 1]
            start = runs[k, 3] + offset + outer_off[qo]
            dst = flat[start:start + 2 * n]
            e0, e1, e2, e3 = s0[t:t + n], s1[t:t + n], s2[t:t + n], s3[t:t + n]
            for i in range(n):
                a1 = e1[i]
                a2 = e2[i]
                dst[2 * i] = e0[i] + a1 + a2
                dst[2 * i + 1] = a1 - a2 - e3[i]


def _scatter_add_b2(flat, runs, count, offset, outer_off, buf, mul, add):   # pragma: no cover - compiled
    """The input-gradient patches: B along the last axis of buf's rows (p', u), added to their 4
    cells. Neighbouring tiles share 2 cells, so the sums run in two passes (cells 2i, 2i + 1, then
    2i + 2, 2i + 3), each with distinct cells per tile: vectorised, and always in the same order."""
    for po in range(outer_off.shape[0]):
        r = 4 * po
        s0, s1, s2, s3 = buf[r * mul + add], buf[(r + 1) * mul + add], buf[(r + 2) * mul + add], buf[(r + 3) * mul + add]
        for k in range(count):
            t, n = runs[k, 0], runs[k, 1]
            start = runs[k, 2] + offset + outer_off[po]
            dst = flat[start:start + 2 * n + 2]
            e0, e1, e2, e3 = s0[t:t + n], s1[t:t + n], s2[t:t + n], s3[t:t + n]
            for i in range(n):
                dst[2 * i] += e0[i]
                dst[2 * i + 1] += e1[i] - e2[i] + e3[i]
            hi = dst[2:]
            for i in range(n):
                hi[2 * i] += e1[i] + e2[i] - e0[i]
                hi[2 * i + 1] -= e3[i]


def _gather_bt4(flat, runs, count, offset, outer_off, buf, mul, add):   # pragma: no cover - compiled
    """``_gather_bt2`` for F(4, 3): 6 cells per tile (4i .. 4i + 5), B^T written out."""
    for po in range(outer_off.shape[0]):
        r = 6 * po
        d0, d1, d2 = buf[r * mul + add], buf[(r + 1) * mul + add], buf[(r + 2) * mul + add]
        d3, d4, d5 = buf[(r + 3) * mul + add], buf[(r + 4) * mul + add], buf[(r + 5) * mul + add]
        last = 0
        for k in range(count):
            t, n = runs[k, 0], runs[k, 1]
            start = runs[k, 2] + offset + outer_off[po]
            src = flat[start:start + 4 * n + 2]
            e0, e1, e2, e3, e4, e5 = d0[t:t + n], d1[t:t + n], d2[t:t + n], d3[t:t + n], d4[t:t + n], d5[t:t + n]
            for i in range(n):
                a1 = src[4 * i + 1]
                a2 = src[4 * i + 2]
                a3 = src[4 * i + 3]
                a4 = src[4 * i + 4]
                e0[i] = 4 * src[4 * i] - 5 * a2 + a4
                e1[i] = a3 + a4 - 4 * (a1 + a2)
                e2[i] = 4 * (a1 - a2) + a4 - a3
                e3[i] = 2 * (a3 - a1) + a4 - a2
                e4[i] = 2 * (a1 - a3) + a4 - a2
                e5[i] = 4 * a1 - 5 * a3 + src[4 * i + 5]
            last = t + n
        for t in range(last, TB):
            d0[t] = 0
            d1[t] = 0
            d2[t] = 0
            d3[t] = 0
            d4[t] = 0
            d5[t] = 0


def _gather_a4(flat, runs, count, offset, outer_off, buf, mul, add):   # pragma: no cover - compiled
    """``_gather_a2`` for F(4, 3): 4 cells of gy -> 6 points (A)."""
    for qo in range(outer_off.shape[0]):
        r = 6 * qo
        d0, d1, d2 = buf[r * mul + add], buf[(r + 1) * mul + add], buf[(r + 2) * mul + add]
        d3, d4, d5 = buf[(r + 3) * mul + add], buf[(r + 4) * mul + add], buf[(r + 5) * mul + add]
        last = 0
        for k in range(count):
            t, n = runs[k, 0], runs[k, 1]
            start = runs[k, 3] + offset + outer_off[qo]
            src = flat[start:start + 4 * n]
            e0, e1, e2, e3, e4, e5 = d0[t:t + n], d1[t:t + n], d2[t:t + n], d3[t:t + n], d4[t:t + n], d5[t:t + n]
            for i in range(n):
                g0 = src[4 * i]
                g1 = src[4 * i + 1]
                g2 = src[4 * i + 2]
                g3 = src[4 * i + 3]
                ev = g0 + g2
                od = g1 + g3
                ev4 = g0 + 4 * g2
                od8 = 2 * g1 + 8 * g3
                e0[i] = g0
                e1[i] = ev + od
                e2[i] = ev - od
                e3[i] = ev4 + od8
                e4[i] = ev4 - od8
                e5[i] = g3
            last = t + n
        for t in range(last, TB):
            d0[t] = 0
            d1[t] = 0
            d2[t] = 0
            d3[t] = 0
            d4[t] = 0
            d5[t] = 0


def _scatter_at4(flat, runs, count, offset, outer_off, buf, mul, add):   # pragma: no cover - compiled
    """``_scatter_at2`` for F(4, 3): A^T along the last axis, written to the tile's 4 cells."""
    for qo in range(outer_off.shape[0]):
        r = 6 * qo
        s0, s1, s2 = buf[r * mul + add], buf[(r + 1) * mul + add], buf[(r + 2) * mul + add]
        s3, s4, s5 = buf[(r + 3) * mul + add], buf[(r + 4) * mul + add], buf[(r + 5) * mul + add]
        for k in range(count):
            t, n = runs[k, 0], runs[k, 1]
            start = runs[k, 3] + offset + outer_off[qo]
            dst = flat[start:start + 4 * n]
            e0, e1, e2, e3, e4, e5 = s0[t:t + n], s1[t:t + n], s2[t:t + n], s3[t:t + n], s4[t:t + n], s5[t:t + n]
            for i in range(n):
                p12 = e1[i] + e2[i]
                m12 = e1[i] - e2[i]
                p34 = e3[i] + e4[i]
                m34 = e3[i] - e4[i]
                dst[4 * i] = e0[i] + p12 + p34
                dst[4 * i + 1] = m12 + 2 * m34
                dst[4 * i + 2] = p12 + 4 * p34
                dst[4 * i + 3] = m12 + 8 * m34 + e5[i]


def _scatter_add_b4(flat, runs, count, offset, outer_off, buf, mul, add):   # pragma: no cover - compiled
    """``_scatter_add_b2`` for F(4, 3): 6 cells per tile, of which its neighbour shares 2: cells
    4i .. 4i + 3 first, then 4i + 4 and 4i + 5."""
    for po in range(outer_off.shape[0]):
        r = 6 * po
        s0, s1, s2 = buf[r * mul + add], buf[(r + 1) * mul + add], buf[(r + 2) * mul + add]
        s3, s4, s5 = buf[(r + 3) * mul + add], buf[(r + 4) * mul + add], buf[(r + 5) * mul + add]
        for k in range(count):
            t, n = runs[k, 0], runs[k, 1]
            start = runs[k, 2] + offset + outer_off[po]
            dst = flat[start:start + 4 * n + 2]
            e0, e1, e2, e3, e4, e5 = s0[t:t + n], s1[t:t + n], s2[t:t + n], s3[t:t + n], s4[t:t + n], s5[t:t + n]
            for i in range(n):
                a0 = e0[i]
                a1 = e1[i]
                a2 = e2[i]
                a3 = e3[i]
                a4 = e4[i]
                a5 = e5[i]
                dst[4 * i] += 4 * a0
                dst[4 * i + 1] += 4 * (a2 - a1 + a5) + 2 * (a4 - a3)
                dst[4 * i + 2] += -5 * a0 - 4 * (a1 + a2) - a3 - a4
                dst[4 * i + 3] += a1 - a2 + 2 * (a3 - a4) - 5 * a5
            hi = dst[4:]
            for i in range(n):
                hi[4 * i] += e0[i] + e1[i] + e2[i] + e3[i] + e4[i]
                hi[4 * i + 1] += e5[i]


def _gather_bt3(flat, runs, count, offset, outer_off, buf, mul, add):   # pragma: no cover - compiled
    """``_gather_bt2`` for F(3, 3): 5 cells per tile (3i .. 3i + 4), B^T written out."""
    for po in range(outer_off.shape[0]):
        r = 5 * po
        d0, d1, d2 = buf[r * mul + add], buf[(r + 1) * mul + add], buf[(r + 2) * mul + add]
        d3, d4 = buf[(r + 3) * mul + add], buf[(r + 4) * mul + add]
        last = 0
        for k in range(count):
            t, n = runs[k, 0], runs[k, 1]
            start = runs[k, 2] + offset + outer_off[po]
            src = flat[start:start + 3 * n + 2]
            e0, e1, e2, e3, e4 = d0[t:t + n], d1[t:t + n], d2[t:t + n], d3[t:t + n], d4[t:t + n]
            for i in range(n):
                a1 = src[3 * i + 1]
                a2 = src[3 * i + 2]
                a3 = src[3 * i + 3]
                e0[i] = 2 * (src[3 * i] - a2) - a1 + a3
                e1[i] = a3 - a2 - 2 * a1
                e2[i] = 2 * a1 - 3 * a2 + a3
                e3[i] = a3 - a1
                e4[i] = 2 * (a1 - a3) - a2 + src[3 * i + 4]
            last = t + n
        for t in range(last, TB):
            d0[t] = 0
            d1[t] = 0
            d2[t] = 0
            d3[t] = 0
            d4[t] = 0


def _gather_a3(flat, runs, count, offset, outer_off, buf, mul, add):   # pragma: no cover - compiled
    """``_gather_a2`` for F(3, 3): 3 cells of gy -> 5 points (A)."""
    for qo in range(outer_off.shape[0]):
        r = 5 * qo
        d0, d1, d2 = buf[r * mul + add], buf[(r + 1) * mul + add], buf[(r + 2) * mul + add]
        d3, d4 = buf[(r + 3) * mul + add], buf[(r + 4) * mul + add]
        last = 0
        for k in range(count):
            t, n = runs[k, 0], runs[k, 1]
            start = runs[k, 3] + offset + outer_off[qo]
            src = flat[start:start + 3 * n]
            e0, e1, e2, e3, e4 = d0[t:t + n], d1[t:t + n], d2[t:t + n], d3[t:t + n], d4[t:t + n]
            for i in range(n):
                g0 = src[3 * i]
                g1 = src[3 * i + 1]
                g2 = src[3 * i + 2]
                ev = g0 + g2
                e0[i] = g0
                e1[i] = ev + g1
                e2[i] = ev - g1
                e3[i] = g0 + 2 * g1 + 4 * g2
                e4[i] = g2
            last = t + n
        for t in range(last, TB):
            d0[t] = 0
            d1[t] = 0
            d2[t] = 0
            d3[t] = 0
            d4[t] = 0


def _scatter_at3(flat, runs, count, offset, outer_off, buf, mul, add):   # pragma: no cover - compiled
    """``_scatter_at2`` for F(3, 3): A^T along the last axis, written to the tile's 3 cells."""
    for qo in range(outer_off.shape[0]):
        r = 5 * qo
        s0, s1, s2 = buf[r * mul + add], buf[(r + 1) * mul + add], buf[(r + 2) * mul + add]
        s3, s4 = buf[(r + 3) * mul + add], buf[(r + 4) * mul + add]
        for k in range(count):
            t, n = runs[k, 0], runs[k, 1]
            start = runs[k, 3] + offset + outer_off[qo]
            dst = flat[start:start + 3 * n]
            e0, e1, e2, e3, e4 = s0[t:t + n], s1[t:t + n], s2[t:t + n], s3[t:t + n], s4[t:t + n]
            for i in range(n):
                a1 = e1[i]
                a2 = e2[i]
                a3 = e3[i]
                dst[3 * i] = e0[i] + a1 + a2 + a3
                dst[3 * i + 1] = a1 - a2 + 2 * a3
                dst[3 * i + 2] = a1 + a2 + 4 * a3 + e4[i]


def _scatter_add_b3(flat, runs, count, offset, outer_off, buf, mul, add):   # pragma: no cover - compiled
    """``_scatter_add_b2`` for F(3, 3): 5 cells per tile, of which its neighbour shares 2: cells
    3i .. 3i + 2 first, then 3i + 3 and 3i + 4."""
    for po in range(outer_off.shape[0]):
        r = 5 * po
        s0, s1, s2 = buf[r * mul + add], buf[(r + 1) * mul + add], buf[(r + 2) * mul + add]
        s3, s4 = buf[(r + 3) * mul + add], buf[(r + 4) * mul + add]
        for k in range(count):
            t, n = runs[k, 0], runs[k, 1]
            start = runs[k, 2] + offset + outer_off[po]
            dst = flat[start:start + 3 * n + 2]
            e0, e1, e2, e3, e4 = s0[t:t + n], s1[t:t + n], s2[t:t + n], s3[t:t + n], s4[t:t + n]
            for i in range(n):
                a0 = e0[i]
                a1 = e1[i]
                a2 = e2[i]
                a4 = e4[i]
                dst[3 * i] += 2 * a0
                dst[3 * i + 1] += 2 * (a2 - a1 + a4) - a0 - e3[i]
                dst[3 * i + 2] += -2 * a0 - a1 - 3 * a2 - a4
            hi = dst[3:]
            for i in range(n):
                hi[3 * i] += e0[i] + e1[i] + e2[i] + e3[i] - 2 * e4[i]
                hi[3 * i + 1] += e4[i]


def _gather_patches(m, flat, runs, count, offset, rows, buf, mul, add):   # pragma: no cover - compiled
    if m == 2:
        _gather_bt2(flat, runs, count, offset, rows, buf, mul, add)
    elif m == 3:
        _gather_bt3(flat, runs, count, offset, rows, buf, mul, add)
    else:
        _gather_bt4(flat, runs, count, offset, rows, buf, mul, add)


def _forward_tiles(m, x, x_cs, x_rows, U, y, y_cs, y_rows, place, work, t0, t1):   # pragma: no cover - compiled
    """Output tiles t0..t1 of one group, F(m, 3): y (flat padded output, channel stride y_cs) from x
    (flat padded input, channel stride x_cs) and the transformed filters U (a^N, O, C). x_rows,
    y_rows: offsets of a patch's and a tile's rows over the first N - 1 axes; ``place``: where
    tiles lie, (tiles per axis, x steps, x image stride, y steps, y image stride) as ``_runs``
    reads them. ``work``: (V (a^N C, TB), Mt (a^N O, TB), three (a^N, TB) buffers, runs (TB, 4)),
    allocated by the caller (``work_arrays``); V and Mt hold point p's channels in rows p C .. p C
    + C - 1 (p O ..), so that each point's product is one BLAS call and the transforms read and
    write one channel's rows in place."""
    P, O, C = U.shape
    N = place[0].shape[0]
    bt, _, at, _ = (BT2, B2, AT2, A2) if m == 2 else ((BT3, B3, AT3, A3) if m == 3 else (BT4, B4, AT4, A4))
    V, Mt, edge, buf0, buf1, runs = work
    for s in range(t0, t1, TB):
        count = _runs(s, min(TB, t1 - s), place[0], place[1], place[2], place[3], place[4], runs)
        for c in range(C):
            if N == 1:
                _gather_patches(m, x, runs, count, c * x_cs, x_rows, V, C, c)
            else:
                _gather_patches(m, x, runs, count, c * x_cs, x_rows, edge, 1, 0)
                _transform(bt, edge, buf0, buf1, V, N, 1, 0, C, c)
        for p in range(P):   # the channel sums, point by point: one small BLAS product each
            np.dot(U[p], V[p * C:(p + 1) * C], Mt[p * O:(p + 1) * O])
        for o in range(O):
            if N == 1:
                src, mul, add = Mt, O, o
            else:
                _transform(at, Mt, buf0, buf1, edge, N, O, o, 1, 0)
                src, mul, add = edge, 1, 0
            if m == 2:
                _scatter_at2(y, runs, count, o * y_cs, y_rows, src, mul, add)
            elif m == 3:
                _scatter_at3(y, runs, count, o * y_cs, y_rows, src, mul, add)
            else:
                _scatter_at4(y, runs, count, o * y_cs, y_rows, src, mul, add)


def _backward_tiles(m, x, x_cs, x_rows, U, UT, gy, y_cs, y_rows, place, gx, gU, need_x, need_W, work,
                    t0, t1):   # pragma: no cover - compiled
    """Tiles t0..t1 of one group's backward: gU (a^N, O, C) += sum_t Gt V^T (need_W), and the
    patches B gV B^T (gV = U^T Gt) added into gx (flat like x; need_x), where Gt = A gy_tile A^T.
    UT: U's transpose per point (a^N, C, O), contiguous for BLAS. ``work``: (V (a^N C, TB), Gt
    (a^N O, TB), tmp (O, C), three (a^N, TB) buffers, runs (TB, 4)), rows as in ``_forward_tiles``,
    whose arguments these are otherwise. gV is written over V once the filter gradient has read it:
    with a third array of that size, 32 channels ran 1.4x slower on one thread and 2.5x on two
    (their working sets no longer fit in cache)."""
    P, O, C = U.shape
    N = place[0].shape[0]
    bt, b, _, a_ = (BT2, B2, AT2, A2) if m == 2 else ((BT3, B3, AT3, A3) if m == 3 else (BT4, B4, AT4, A4))
    V, Gt, tmp, edge, buf0, buf1, runs = work
    gV = V
    for s in range(t0, t1, TB):
        count = _runs(s, min(TB, t1 - s), place[0], place[1], place[2], place[3], place[4], runs)
        if need_W:
            for c in range(C):
                if N == 1:
                    _gather_patches(m, x, runs, count, c * x_cs, x_rows, V, C, c)
                else:
                    _gather_patches(m, x, runs, count, c * x_cs, x_rows, edge, 1, 0)
                    _transform(bt, edge, buf0, buf1, V, N, 1, 0, C, c)
        for o in range(O):
            dst, mul, add = (Gt, O, o) if N == 1 else (edge, 1, 0)
            if m == 2:
                _gather_a2(gy, runs, count, o * y_cs, y_rows, dst, mul, add)
            elif m == 3:
                _gather_a3(gy, runs, count, o * y_cs, y_rows, dst, mul, add)
            else:
                _gather_a4(gy, runs, count, o * y_cs, y_rows, dst, mul, add)
            if N > 1:
                _transform(a_, edge, buf0, buf1, Gt, N, 1, 0, O, o)
        if need_W:
            for p in range(P):
                np.dot(Gt[p * O:(p + 1) * O], V[p * C:(p + 1) * C].T, tmp)
                gU[p] += tmp
        if need_x:
            for p in range(P):
                np.dot(UT[p], Gt[p * O:(p + 1) * O], gV[p * C:(p + 1) * C])
            for c in range(C):
                if N == 1:
                    src, mul, add = gV, C, c
                else:
                    _transform(b, gV, buf0, buf1, edge, N, C, c, 1, 0)
                    src, mul, add = edge, 1, 0
                if m == 2:
                    _scatter_add_b2(gx, runs, count, c * x_cs, x_rows, src, mul, add)
                elif m == 3:
                    _scatter_add_b3(gx, runs, count, c * x_cs, x_rows, src, mul, add)
                else:
                    _scatter_add_b4(gx, runs, count, c * x_cs, x_rows, src, mul, add)


def work_arrays(backward: bool, P: int, C: int, O: int, dtype) -> tuple:
    """The arrays one call of ``_forward_tiles`` (or ``_backward_tiles``) works in, allocated here
    (by NumPy, so that they count where a call's memory is measured): a^N (C + O + 3) TB values
    (and O C backward)."""
    rows = (np.empty((P, TB), dtype), np.empty((P, TB), dtype), np.empty((P, TB), dtype), np.empty((TB, 4), np.int64))
    if backward:
        return (np.empty((P * C, TB), dtype), np.empty((P * O, TB), dtype), np.empty((O, C), dtype)) + rows
    return (np.empty((P * C, TB), dtype), np.empty((P * O, TB), dtype)) + rows


_build_lock = threading.Lock()


def kernels():
    """(forward, backward) dispatchers, or None where Numba does not import (the engine then
    reports itself unavailable and ``auto`` never picks it). They compile on first use per dtype
    (winograd._working makes that use) and are kept in Numba's disk cache; FMA contraction only,
    so NaN and inf keep NumPy's semantics. Built once: a worker's warm-up thread and a first job
    asking at the same time get the same dispatchers, so the loops are not compiled twice."""
    with _build_lock:
        return _build()


@functools.cache
def _build():
    try:
        import numba
    except ImportError:
        return None
    except Exception as exc:  # noqa: BLE001 - a Numba build that does not load with this NumPy
        log.warning("Numba does not load (%s): the Winograd engine is not available", exc)
        return None
    for cache in (True, False):
        try:
            options = dict(cache=cache, nogil=True, fastmath={"contract"})

            def jit(func=None, **more):   # numba.njit, each dispatcher's saves under numba_cache's lock
                def make(f):
                    return numba_cache.lock_saves(numba.njit(**options, **more)(f))
                return make if func is None else make(func)
            # The helpers become dispatchers in this module's namespace, where their callers find
            # them; the line transforms are inlined where they are called.
            glob = globals()
            for func in LINES:
                glob[func.__name__] = jit(inline="always")(func)
            for name, func in _HELPERS.items():
                glob[name] = jit(func)
            return jit(_forward_tiles), jit(_backward_tiles)
        except Exception as exc:  # noqa: BLE001 - no folder Numba can cache in (compile errors show later)
            log.info("Numba cannot cache the Winograd loops (cache=%s): %s", cache, exc)
    return None


_HELPERS = {f.__name__: f for f in (_transform2, _transform4, _transform3, _transform, _runs, _gather_bt2, _gather_a2, _scatter_at2, _scatter_add_b2, _gather_bt4,
                                    _gather_a4, _scatter_at4, _scatter_add_b4, _gather_bt3, _gather_a3, _scatter_at3,
                                    _scatter_add_b3, _gather_patches)}
