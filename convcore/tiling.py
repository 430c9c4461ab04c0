"""Overlap-save tiling: spatial tiles of a valid correlation become extra batch rows.

A valid correlation with a kernel of length k, cut into output tiles of length T,
reads input windows of length T + k - 1 that overlap by k - 1. Treating the m
windows as batch rows lets the FFT engine run with transforms of the tile size
instead of the whole input: smaller filter spectra, a bounded working set, and
the weight gradient's sum over the batch now also sums over tiles. The input
gradient of the windows folds back by overlap-add (the adjoint of the windowing).

All helpers act on (B, K, s_1..s_N) arrays; ``counts`` is m per dim.
"""
from __future__ import annotations

import itertools
import math

from . import backend


def tile_counts(out_len, tile):
    return tuple(-(-o // t) for o, t in zip(out_len, tile))


def windows(xp, a, tile, kernel, counts):
    """(B, K, q...) -> (B * M, K, T + k - 1 ...) overlapping input windows, M = prod(counts).

    One copy per window position (all B images at once): M slice copies, each reading
    its window once, instead of a pad, split and concatenate per dim.
    """
    B, K = a.shape[:2]
    win = tuple(t + k - 1 for t, k in zip(tile, kernel))
    a = _pad_to(xp, a, tuple((m - 1) * t + w for m, t, w in zip(counts, tile, win)))
    out = xp.empty((B, math.prod(counts), K) + win, dtype=a.dtype)
    for i, corner in enumerate(_corners(tile, counts)):
        out[:, i] = a[(slice(None), slice(None)) + tuple(slice(c, c + w) for c, w in zip(corner, win))]
    return out.reshape((B * math.prod(counts), K) + win)


def window_view(xp, a, tile, kernel, counts):
    """The windows of ``windows`` as a strided view (B, m_1..m_N, K, T + k - 1 ...) of ``a``
    (zero-padded first if the last windows reach past it), never written: no copy of the windows.

    A transform that reads the view directly (the FFT engine's, channels last) copies each
    line it transforms anyway; materialising the windows first was one more pass over
    (T + k - 1) / T times the input."""
    B, K = a.shape[:2]
    win = tuple(t + k - 1 for t, k in zip(tile, kernel))
    a = _pad_to(xp, a, tuple((m - 1) * t + w for m, t, w in zip(counts, tile, win)))
    spatial = a.strides[2:]
    shape = (B,) + tuple(counts) + (K,) + win
    strides = (a.strides[0],) + tuple(t * st for t, st in zip(tile, spatial)) + (a.strides[1],) + spatial
    view = xp.lib.stride_tricks.as_strided(a, shape, strides)   # CuPy's takes no writeable=
    if backend.is_host_module(xp):
        view.flags.writeable = False   # the windows overlap: a write would land in several
    return view


def overlap_add(xp, tiles, B, tile, kernel, counts, length):
    """Adjoint of ``windows``: (B * M, K, T + k - 1 ...) -> (B, K, length...).

    Each window is added once at its place in a buffer that holds the last window's
    end too, then the buffer is cut to ``length`` (zero-padded if shorter).
    """
    K = tiles.shape[1]
    win = tiles.shape[2:]
    tiles = tiles.reshape((B, math.prod(counts), K) + win)
    reach = tuple(max(L, (m - 1) * t + w) for L, m, t, w in zip(length, counts, tile, win))
    out = xp.zeros((B, K) + reach, dtype=tiles.dtype)
    for i, corner in enumerate(_corners(tile, counts)):
        out[(slice(None), slice(None)) + tuple(slice(c, c + w) for c, w in zip(corner, win))] += tiles[:, i]
    return out[(slice(None), slice(None)) + tuple(slice(0, L) for L in length)]


def _corners(tile, counts):
    """The first input index of every window, window positions in row-major order."""
    return itertools.product(*(range(0, m * t, t) for m, t in zip(counts, tile)))


def _pad_to(xp, a, shape):
    """Zero-pad the trailing spatial axes at their high end up to ``shape`` (never cut)."""
    extra = [max(0, L - d) for L, d in zip(shape, a.shape[2:])]
    if not any(extra):
        return a
    return xp.pad(a, ((0, 0), (0, 0)) + tuple((0, e) for e in extra))


def untile(xp, y, B, tile, counts):
    """(B * M, K, T...) tile outputs -> (B, K, m_1 * T_1, ...)."""
    N = len(tile)
    K = y.shape[1]
    a = y.reshape((B,) + tuple(counts) + (K,) + tuple(tile))
    order = (0, N + 1) + sum(((1 + j, N + 2 + j) for j in range(N)), ())
    return a.transpose(order).reshape((B, K) + tuple(m * t for m, t in zip(counts, tile)))


def tile_grad(xp, gy, tile, counts):
    """Adjoint of ``untile`` (gy zero-padded to m * T): (B, K, o...) -> (B * M, K, T...)."""
    return xp.ascontiguousarray(tile_grad_view(xp, gy, tile, counts)).reshape(
        (gy.shape[0] * math.prod(counts), gy.shape[1]) + tuple(tile))


def tile_grad_view(xp, gy, tile, counts):
    """``tile_grad`` as a view (B, m_1..m_N, K, T...) of gy (zero-padded first if needed)."""
    N = len(tile)
    B, K = gy.shape[:2]
    full = tuple(m * t for m, t in zip(counts, tile))
    pad = [(0, 0), (0, 0)] + [(0, f - o) for f, o in zip(full, gy.shape[2:])]
    a = xp.pad(gy, pad) if any(p[1] for p in pad) else gy
    split = (B, K) + sum(((m, t) for m, t in zip(counts, tile)), ())
    order = (0,) + tuple(2 + 2 * j for j in range(N)) + (1,) + tuple(3 + 2 * j for j in range(N))
    return a.reshape(split).transpose(order)
