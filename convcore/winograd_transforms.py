"""Winograd's 1-D transforms on lines of rows, and along the axes of a block of patches (Numba).

A block's arrays are (rows, TB): row r holds one point of TB tiles. ``_transform`` applies one
1-D transform along the first N - 1 axes of such an array (the gathers and scatters of
winograd_kernel.py do the last axis on the way in and out). Each transform is written out
as one function per line (its output rows from its input rows, TB lanes each), inlined where it
is called: a generic matrix loop, or line functions called rather than inlined, ran 2-3x slower.

F(2, 3) (Lavin & Gray 2016, section 4.1):
    B^T = [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]]     A^T = [[1, 1, 1, 0], [0, 1, -1, -1]]
F(4, 3) (section 4.2):
    B^T = [[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0],
           [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]]
    A^T = [[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]]
B and A (their transposes) carry gradients back: B for the input gradient's patches, A for gy's tiles.
"""
from __future__ import annotations

TB = 64   # tiles per block: the lanes of every loop; a block's arrays stay in L1/L2

# transform kinds: (B^T, B, A^T, A) for F(2, 3), then for F(4, 3)
BT2, B2, AT2, A2, BT4, B4, AT4, A4 = range(8)
POINTS_IN = (4, 4, 4, 2, 6, 6, 6, 4)
POINTS_OUT = (4, 4, 2, 4, 6, 6, 4, 6)




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


def _transform(kind, src, buf0, buf1, dst, N, in_mul, in_add, out_mul, out_add):   # pragma: no cover
    """The transform ``kind`` (either tile size) along the first N - 1 axes: see ``_transform2``."""
    if kind < BT4:
        _transform2(kind, src, buf0, buf1, dst, N, in_mul, in_add, out_mul, out_add)
    else:
        _transform4(kind, src, buf0, buf1, dst, N, in_mul, in_add, out_mul, out_add)


LINES = (_line_bt2, _line_b2, _line_at2, _line_a2, _line_bt4, _line_b4, _line_at4, _line_a4)
