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

import math


def tile_counts(out_len, tile):
    return tuple(-(-o // t) for o, t in zip(out_len, tile))


def windows(xp, a, tile, kernel, counts):
    """(B, K, q...) -> (B * M, K, T + k - 1 ...) overlapping input windows, M = prod(counts)."""
    N = len(tile)
    B, K = a.shape[:2]
    for j in range(N):
        axis = 2 + 2 * j  # axes before it are already split into (m, window) pairs
        a = _split_windows(xp, a, axis, tile[j], kernel[j], counts[j])
    # (B, K, m_1, w_1, ..., m_N, w_N) -> (B, m_1..m_N, K, w_1..w_N)
    order = (0,) + tuple(2 + 2 * j for j in range(N)) + (1,) + tuple(3 + 2 * j for j in range(N))
    win = tuple(t + k - 1 for t, k in zip(tile, kernel))
    return xp.ascontiguousarray(a.transpose(order)).reshape((B * math.prod(counts), K) + win)


def _split_windows(xp, a, axis, T, k, m):
    """Replace ``axis`` (length L) by (m, T + k - 1): window t covers [t*T, t*T + T + k - 1)."""
    a = xp.moveaxis(a, axis, -1)
    if m == 1:  # one tile: the window is the whole input (its tile may be shorter than k - 1)
        return xp.moveaxis(a[..., None, :T + k - 1], (-2, -1), (axis, axis + 1))
    need = (m + 1) * T
    if a.shape[-1] < need:
        a = xp.pad(a, [(0, 0)] * (a.ndim - 1) + [(0, need - a.shape[-1])])
    a = a[..., :need]
    head = a[..., :m * T].reshape(a.shape[:-1] + (m, T))
    tail = a[..., T:need].reshape(a.shape[:-1] + (m, T))[..., :k - 1]
    out = xp.concatenate([head, tail], axis=-1)           # (..., m, T + k - 1)
    return xp.moveaxis(xp.moveaxis(out, -1, axis), -1, axis)  # back to (.., m, w, ..) at axis


def overlap_add(xp, tiles, B, tile, kernel, counts, length):
    """Adjoint of ``windows``: (B * M, K, T + k - 1 ...) -> (B, K, length...)."""
    N = len(tile)
    K = tiles.shape[1]
    win = tiles.shape[2:]
    a = tiles.reshape((B,) + tuple(counts) + (K,) + win)
    order = (0, N + 1) + sum(((1 + j, N + 2 + j) for j in range(N)), ())
    a = a.transpose(order)                                 # (B, K, m_1, w_1, ..., m_N, w_N)
    for j in reversed(range(N)):
        a = _fold_windows(xp, a, 2 + 2 * j, tile[j], kernel[j], counts[j], length[j])
    return a


def _fold_windows(xp, a, axis, T, k, m, length):
    """Adjoint of ``_split_windows``: (.., m, T + k - 1, ..) at axis -> (.., length, ..)."""
    a = xp.moveaxis(xp.moveaxis(a, axis + 1, -1), axis, -2)   # (..., m, w)
    if m == 1:
        out = a[..., 0, :length]
        return xp.moveaxis(out, -1, axis)
    # Index a contiguous (m + 1, T) buffer directly: never write through a reshaped view.
    blocks = xp.zeros(a.shape[:-2] + (m + 1, T), dtype=a.dtype)
    blocks[..., :m, :] += a[..., :T]
    if k > 1:
        blocks[..., 1:, :k - 1] += a[..., T:]   # window t's tail overlaps block t + 1
    out = blocks.reshape(a.shape[:-2] + ((m + 1) * T,))
    out = out[..., :length] if length <= out.shape[-1] else xp.pad(
        out, [(0, 0)] * (out.ndim - 1) + [(0, length - out.shape[-1])])
    return xp.moveaxis(out, -1, axis)


def untile(xp, y, B, tile, counts):
    """(B * M, K, T...) tile outputs -> (B, K, m_1 * T_1, ...)."""
    N = len(tile)
    K = y.shape[1]
    a = y.reshape((B,) + tuple(counts) + (K,) + tuple(tile))
    order = (0, N + 1) + sum(((1 + j, N + 2 + j) for j in range(N)), ())
    return a.transpose(order).reshape((B, K) + tuple(m * t for m, t in zip(counts, tile)))


def tile_grad(xp, gy, tile, counts):
    """Adjoint of ``untile`` (gy zero-padded to m * T): (B, K, o...) -> (B * M, K, T...)."""
    N = len(tile)
    B, K = gy.shape[:2]
    full = tuple(m * t for m, t in zip(counts, tile))
    pad = [(0, 0), (0, 0)] + [(0, f - o) for f, o in zip(full, gy.shape[2:])]
    a = xp.pad(gy, pad) if any(p[1] for p in pad) else gy
    split = (B, K) + sum(((m, t) for m, t in zip(counts, tile)), ())
    order = (0,) + tuple(2 + 2 * j for j in range(N)) + (1,) + tuple(3 + 2 * j for j in range(N))
    return xp.ascontiguousarray(a.reshape(split).transpose(order)).reshape(
        (B * math.prod(counts), K) + tuple(tile))
