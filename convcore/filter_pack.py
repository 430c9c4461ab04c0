"""The direct engine's filters packed for its micro-kernels, by tiles transposed in registers.

The output micro-kernel (direct_kernel) reads, for each (channel, tap) row k, whole vectors of
output channels: the filters as (g, nob, K * taps, width), the pass's ``rows`` output channels
innermost in blocks of ``width`` lanes, zeros past ``rows``. The caller holds them the other way
round, (g, rows, K, taps), and for the input gradient as a view: the filters transposed over
their channels and flipped over every spatial axis (the taps of each row run backwards in memory).

NumPy's transposed copy reads that view one strided element at a time: 64 x 64 x 7 x 7 filters
took 67 us warm and 220-250 us with W out of cache, 5-8 % of the layer's forward. Here the copy
goes by TT x TT tiles: TT rows of TT contiguous taps loaded as vectors, transposed in registers
(``direct_kernel._tile_typer``) and stored as TT rows of lanes; a flipped row is read forwards and
its tile stored upwards. Rows and taps not a multiple of TT end with a tile that overlaps the one
before it (same values written twice); fewer than TT of either is copied element by element.
"""
from __future__ import annotations

import functools
import math
import threading

import numpy as np

from . import direct_kernel, numba_cache

_build_lock = threading.Lock()


def _load_typer(typingctx, isz, address):
    """The float of ``isz`` bytes at ``address`` (an integer; isz literal)."""
    from llvmlite import ir
    from numba import types
    sizes = direct_kernel._literals(isz)
    if sizes is None:
        return None
    itemsize, = sizes
    sig = (types.float32 if itemsize == 4 else types.float64)(isz, types.intp)

    def codegen(context, builder, signature, args):
        scalar = ir.FloatType() if itemsize == 4 else ir.DoubleType()
        return builder.load(builder.inttoptr(args[1], scalar.as_pointer()))

    return sig, codegen


# Bound by ``_build`` (Numba resolves a compiled function's globals when it compiles it).
literally = _tile = _load = None


def _pack_loop(src_a, s_g, s_r, s_k, s_t, dst, rows, K, T, zero, TT, isz):   # pragma: no cover - compiled
    """dst[gi, ob, k * T + t, lane] = src[gi * s_g + r * s_r + k * s_k + t * s_t] for r = ob * width + lane
    < rows (src at address ``src_a``, strides in elements, s_t = +-1 for the tiles); dst (g, nob, K * T,
    width) C-contiguous, its lanes past ``rows`` left as they are. ``zero``: TT zeros (the tile's bias)."""
    literally(TT)
    literally(isz)
    g, nob, KT, width = dst.shape
    dst_a, zero_a = dst.ctypes.data, zero.ctypes.data
    flat = dst.reshape(-1)
    for gi in range(g):
        for ob in range(nob):
            lanes = min(width, rows - ob * width)
            tiled = lanes >= TT and T >= TT and (s_t == 1 or s_t == -1)
            for k in range(K):
                src_row = gi * s_g + ob * width * s_r + k * s_k   # (ob's first row, k, t = 0)
                dst_row = ((gi * nob + ob) * KT + k * T) * width    # (k, t = 0, its first lane)
                if not tiled:
                    for t in range(T):
                        for lane in range(lanes):
                            at = src_a + (src_row + lane * s_r + t * s_t) * isz
                            flat[dst_row + t * width + lane] = _load(isz, at)
                    continue
                low = src_row if s_t == 1 else src_row - (T - 1)   # the row's taps' lowest address
                for l0 in range(0, lanes, TT):
                    lane = min(l0, lanes - TT)
                    for m0 in range(0, T, TT):
                        m = min(m0, T - TT)   # the tile's first tap in memory order
                        if s_t == 1:
                            at, step = dst_row + m * width + lane, width
                        else:   # memory order runs from tap T - 1 down: the tile stored upwards
                            at, step = dst_row + (T - 1 - m) * width + lane, -width
                        _tile(TT, isz, src_a + (low + lane * s_r + m) * isz, s_r, dst_a + at * isz, step, TT, zero_a)


@functools.cache
def _build():
    """The loop as a Numba dispatcher (cached on disk where Numba can), or None."""
    if direct_kernel._numba() is None:
        return None
    loops = numba_cache.compiled_with_intrinsics(globals(), {"_tile": direct_kernel._tile_typer, "_load": _load_typer},
                                                 (_pack_loop,), "filters packed by NumPy", nogil=True,
                                                 boundscheck=False)
    return loops[0] if loops else None


@functools.lru_cache(maxsize=None)
def _loop(TT: int, itemsize: int):
    with _build_lock:
        dtype = np.float32 if itemsize == 4 else np.float64
        # rows = 0: the compiling call copies nothing (its address is no array's)
        args = (0, 0, 0, 0, 1, np.zeros((1, 1, 1, 1), dtype), 0, 1, 1, np.zeros(TT, dtype))
        return direct_kernel._specialised(_build(), args, (TT, itemsize))


def tile_size(T: int, itemsize: int) -> int:
    """TT: the vector's lanes (at most), halved while the taps are fewer, 4 at least (the loop copies
    fewer taps, or rows, than TT element by element)."""
    TT = direct_kernel.machine()[0] // itemsize
    while TT > 4 and TT > T:
        TT //= 2
    return TT


def _merged_stride(shape: tuple, strides: tuple):
    """The one stride (bytes) of axes ``shape`` with ``strides`` read as one axis, row-major, or None
    where they do not merge (a slice of the taps). Axes of one entry have no say."""
    kept = [(n, s) for n, s in zip(shape, strides) if n != 1]
    if not kept:
        return None
    for (n, s), (n_next, s_next) in zip(kept, kept[1:]):
        if s != s_next * n_next:
            return None
    return kept[-1][1]


def pack(mats, width: int, nob: int):
    """(g, nob, K * taps, width) from ``mats`` (g, rows, K, k_1..k_N) or (g, rows, K * taps), any
    strides: the rows as blocks of ``width`` lanes, zeros past rows. Compiled where Numba is and the
    taps (with the channels, or without) merge into one axis of unit stride either way (a flipped view
    does; a phase's slice of the taps does not: NumPy's copy then)."""
    g, rows = mats.shape[:2]
    KT = math.prod(mats.shape[2:])
    dtype, itemsize = mats.dtype, mats.dtype.itemsize
    w = (np.empty if nob * width == rows else np.zeros)((g, nob, KT, width), dtype)
    unit = (itemsize, -itemsize)
    if itemsize in (4, 8) and dtype.kind == "f":
        K, s_k, s_t = 1, 0, _merged_stride(mats.shape[2:], mats.strides[2:])
        if s_t not in unit and mats.ndim > 3:   # each channel's taps one run
            K, s_k, s_t = mats.shape[2], mats.strides[2], _merged_stride(mats.shape[3:], mats.strides[3:])
        T = KT // max(K, 1)
        if (s_t in unit and T > 1 and mats.strides[0] % itemsize == mats.strides[1] % itemsize == s_k % itemsize == 0
                and _build() is not None):
            TT = tile_size(T, itemsize)
            _loop(TT, itemsize)(mats.ctypes.data, mats.strides[0] // itemsize, mats.strides[1] // itemsize,
                                s_k // itemsize, s_t // itemsize, w, rows, K, T, np.zeros(TT, dtype))
            return w
    rows_last = (0,) + tuple(range(2, mats.ndim)) + (1,)
    wv = w.reshape((g, nob) + mats.shape[2:] + (width,))
    for ob in range(nob):
        part = mats[:, ob * width:(ob + 1) * width]
        wv[:, ob, ..., :part.shape[1]] = part.transpose(rows_last)
    return w
