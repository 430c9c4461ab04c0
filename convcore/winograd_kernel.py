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

Layout: every tile-block array is (rows, TB) with the block's tiles contiguous, so the transform
along an axis and the channel sums are loops of TB lanes with a scalar factor. A transform is
given by its nonzeros per output row (``_sparse``): F(2, 3)'s B^T has two per row.

The loops never allocate per tile and run without the GIL; winograd.py splits the tiles between
convcore's threads in chunks that do not depend on the thread count.
"""
from __future__ import annotations

import functools
import logging

import numpy as np

log = logging.getLogger(__name__)

TB = 64   # tiles per block: the lanes of every loop; a block's arrays stay in L1/L2
M = 2     # outputs per tile and axis (F(2, 3)); neighbouring tiles of a row start M cells apart


# F(2, 3)'s four 1-D transforms, each on one line of rows (TB lanes each): B^T (4 -> 4) for input
# patches, A^T (4 -> 2) back to outputs, and their transposes A (2 -> 4) for gy tiles and B (4 -> 4)
# for the input gradient. Written out and inlined into ``_transform`` (a generic matrix loop, or
# line functions called rather than inlined, ran 3x slower).
BT, B, AT, A = 0, 1, 2, 3
POINTS_IN = (4, 4, 4, 2)
POINTS_OUT = (4, 4, 2, 4)


def _line_bt(src, dst, r_in, r_out, step):   # pragma: no cover - compiled
    """B^T = [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]] on rows r_in + v * step."""
    s0, s1, s2, s3 = src[r_in], src[r_in + step], src[r_in + 2 * step], src[r_in + 3 * step]
    d0, d1, d2, d3 = dst[r_out], dst[r_out + step], dst[r_out + 2 * step], dst[r_out + 3 * step]
    for t in range(TB):
        a1 = s1[t]
        a2 = s2[t]
        d0[t] = s0[t] - a2
        d1[t] = a1 + a2
        d2[t] = a2 - a1
        d3[t] = a1 - s3[t]


def _line_b(src, dst, r_in, r_out, step):   # pragma: no cover - compiled
    """B = (B^T)^T = [[1, 0, 0, 0], [0, 1, -1, 1], [-1, 1, 1, 0], [0, 0, 0, -1]]."""
    s0, s1, s2, s3 = src[r_in], src[r_in + step], src[r_in + 2 * step], src[r_in + 3 * step]
    d0, d1, d2, d3 = dst[r_out], dst[r_out + step], dst[r_out + 2 * step], dst[r_out + 3 * step]
    for t in range(TB):
        a0 = s0[t]
        a1 = s1[t]
        a2 = s2[t]
        a3 = s3[t]
        d0[t] = a0
        d1[t] = a1 - a2 + a3
        d2[t] = a1 + a2 - a0
        d3[t] = -a3


def _line_at(src, dst, r_in, r_out, step):   # pragma: no cover - compiled
    """A^T = [[1, 1, 1, 0], [0, 1, -1, -1]]."""
    s0, s1, s2, s3 = src[r_in], src[r_in + step], src[r_in + 2 * step], src[r_in + 3 * step]
    d0, d1 = dst[r_out], dst[r_out + step]
    for t in range(TB):
        a1 = s1[t]
        a2 = s2[t]
        d0[t] = s0[t] + a1 + a2
        d1[t] = a1 - a2 - s3[t]


def _line_a(src, dst, r_in, r_out, step):   # pragma: no cover - compiled
    """A = (A^T)^T = [[1, 0], [1, 1], [1, -1], [0, -1]]."""
    s0, s1 = src[r_in], src[r_in + step]
    d0, d1, d2, d3 = dst[r_out], dst[r_out + step], dst[r_out + 2 * step], dst[r_out + 3 * step]
    for t in range(TB):
        a0 = s0[t]
        a1 = s1[t]
        d0[t] = a0
        d1[t] = a0 + a1
        d2[t] = a0 - a1
        d3[t] = -a1


def _transform(kind, buf0, buf1, N):   # pragma: no cover - compiled
    """Apply the 1-D transform ``kind`` along the first N - 1 axes of buf0's rows (row-major over
    N axes: the first N - 1 of n_in points, the last of 4, which the gathers and scatters
    transform); returns the buffer holding the result rows (buf0 or buf1, both overwritten)."""
    n_in, n_out = POINTS_IN[kind], POINTS_OUT[kind]
    src, dst = buf0, buf1
    for j in range(N - 1):
        outer = n_out ** j                  # axes before j: already transformed
        inner = n_in ** (N - 2 - j) * 4     # axes after j: not yet, and the last
        for o in range(outer):
            for i in range(inner):
                r_in, r_out = o * n_in * inner + i, o * n_out * inner + i
                if kind == BT:
                    _line_bt(src, dst, r_in, r_out, inner)
                elif kind == B:
                    _line_b(src, dst, r_in, r_out, inner)
                elif kind == AT:
                    _line_at(src, dst, r_in, r_out, inner)
                else:
                    _line_a(src, dst, r_in, r_out, inner)
        src, dst = dst, src
    return src


def _runs(s, nb, tiles, x_steps, x_image, y_steps, y_image, runs):   # pragma: no cover - compiled
    """Split the block's lanes (tiles s .. s + nb - 1, row-major over (image, tile index per axis))
    into runs along one row of tiles, whose cells are M apart: runs[k] = (first lane, length, its
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

def _gather_bt(flat, runs, count, offset, outer_off, buf):   # pragma: no cover - compiled
    """buf rows (p', u): B^T along the last axis of the input patches, p' over the first N - 1
    axes (cells outer_off[p'] from a run's patch corner + offset); zeros after the tiles."""
    for po in range(outer_off.shape[0]):
        d0, d1, d2, d3 = buf[4 * po], buf[4 * po + 1], buf[4 * po + 2], buf[4 * po + 3]
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


def _gather_a(flat, runs, count, offset, outer_off, buf):   # pragma: no cover - compiled
    """buf rows (q', u): A along the last axis of the gy tiles (2 cells -> 4 points)."""
    for qo in range(outer_off.shape[0]):
        d0, d1, d2, d3 = buf[4 * qo], buf[4 * qo + 1], buf[4 * qo + 2], buf[4 * qo + 3]
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


def _scatter_at(flat, runs, count, offset, outer_off, buf):   # pragma: no cover - compiled
    """The output tiles: A^T along the last axis of buf's rows (q', u), written to their 2 cells."""
    for qo in range(outer_off.shape[0]):
        s0, s1, s2, s3 = buf[4 * qo], buf[4 * qo + 1], buf[4 * qo + 2], buf[4 * qo + 3]
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


def _scatter_add_b(flat, runs, count, offset, outer_off, buf):   # pragma: no cover - compiled
    """The input-gradient patches: B along the last axis of buf's rows (p', u), added to their 4
    cells. Neighbouring tiles share 2 cells, so the sums run in two passes (cells 2i, 2i + 1, then
    2i + 2, 2i + 3), each with distinct cells per tile: vectorised, and always in the same order."""
    for po in range(outer_off.shape[0]):
        s0, s1, s2, s3 = buf[4 * po], buf[4 * po + 1], buf[4 * po + 2], buf[4 * po + 3]
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


def _forward_tiles(x, x_cs, x_rows, U, y, y_cs, y_rows, place, t0, t1):   # pragma: no cover - compiled
    """Output tiles t0..t1 of one group: y (flat padded output, channel stride y_cs) from x (flat
    padded input, channel stride x_cs) and the transformed filters U (a^N, O, C). x_rows, y_rows:
    offsets of a patch's and a tile's rows over the first N - 1 axes; ``place``: where tiles lie,
    (tiles per axis, x steps, x image stride, y steps, y image stride) as ``_runs`` reads them."""
    P, O, C = U.shape
    N = place[0].shape[0]
    dt = y.dtype
    V = np.empty((P, C, TB), dt)
    Mt = np.empty((P, O, TB), dt)
    buf0 = np.empty((P, TB), dt)
    buf1 = np.empty((P, TB), dt)
    runs = np.empty((TB, 4), np.int64)
    for s in range(t0, t1, TB):
        count = _runs(s, min(TB, t1 - s), place[0], place[1], place[2], place[3], place[4], runs)
        for c in range(C):
            _gather_bt(x, runs, count, c * x_cs, x_rows, buf0)
            V[:, c, :] = _transform(BT, buf0, buf1, N)
        for p in range(P):   # the channel sums, point by point: one small BLAS product each
            np.dot(U[p], V[p], Mt[p])
        for o in range(O):
            buf0[:, :] = Mt[:, o, :]
            _scatter_at(y, runs, count, o * y_cs, y_rows, _transform(AT, buf0, buf1, N))


def _backward_tiles(x, x_cs, x_rows, U, UT, gy, y_cs, y_rows, place, gx, gU, need_x, need_W,
                    t0, t1):   # pragma: no cover - compiled
    """Tiles t0..t1 of one group's backward: gU (a^N, O, C) += sum_t Gt V^T (need_W), and the
    patches B gV B^T (gV = U^T Gt) added into gx (flat like x; need_x), where Gt = A gy_tile A^T.
    UT: U's transpose per point (a^N, C, O), contiguous for BLAS. Arguments as ``_forward_tiles``."""
    P, O, C = U.shape
    N = place[0].shape[0]
    dt = gy.dtype
    V = np.empty((P, C, TB), dt)
    Gt = np.empty((P, O, TB), dt)
    gV = np.empty((P, C, TB), dt)
    tmp = np.empty((O, C), dt)
    buf0 = np.empty((P, TB), dt)
    buf1 = np.empty((P, TB), dt)
    runs = np.empty((TB, 4), np.int64)
    for s in range(t0, t1, TB):
        count = _runs(s, min(TB, t1 - s), place[0], place[1], place[2], place[3], place[4], runs)
        if need_W:
            for c in range(C):
                _gather_bt(x, runs, count, c * x_cs, x_rows, buf0)
                V[:, c, :] = _transform(BT, buf0, buf1, N)
        for o in range(O):
            _gather_a(gy, runs, count, o * y_cs, y_rows, buf0)
            Gt[:, o, :] = _transform(A, buf0, buf1, N)
        if need_W:
            for p in range(P):
                np.dot(Gt[p], V[p].T, tmp)
                gU[p] += tmp
        if need_x:
            for p in range(P):
                np.dot(UT[p], Gt[p], gV[p])
            for c in range(C):
                buf0[:, :] = gV[:, c, :]
                _scatter_add_b(gx, runs, count, c * x_cs, x_rows, _transform(B, buf0, buf1, N))


@functools.cache
def kernels():
    """(forward, backward) compiled, or None where Numba does not import or compile (the engine
    then reports itself unavailable and ``auto`` never picks it). Compiled on first use per dtype
    and kept in Numba's disk cache; FMA contraction only, so NaN and inf keep NumPy's semantics."""
    try:
        import numba
    except ImportError:
        return None
    except Exception as exc:  # noqa: BLE001 - a Numba build that does not load with this NumPy
        log.warning("Numba does not load (%s): the Winograd engine is not available", exc)
        return None
    for cache in (True, False):
        try:
            jit = functools.partial(numba.njit, cache=cache, nogil=True, fastmath={"contract"})
            # the helpers become dispatchers in this module's namespace, where the tile loops find
            # them; the line transforms are inlined where they are called
            glob = globals()
            for name, func in _HELPERS.items():
                glob[name] = jit(inline="always")(func) if name.startswith("_line") else jit(func)
            return jit(_forward_tiles), jit(_backward_tiles)
        except Exception as exc:  # noqa: BLE001 - the cache's folder, or LLVM on this CPU
            log.info("Numba could not build the Winograd loops (cache=%s): %s", cache, exc)
    return None


_HELPERS = {f.__name__: f for f in (_line_bt, _line_b, _line_at, _line_a, _transform, _runs, _gather_bt, _gather_a,
                                    _scatter_at, _scatter_add_b)}
