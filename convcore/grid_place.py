"""An array put on a zero grid in one compiled pass: each cell of the grid written once.

The direct engine reads x from a grid of channel rows (g * C, cells): per channel, b images of
q_1..q_N cells, x's cells in a box of each image (offset by the low padding), zeros around it and
after the images (the taps' overrun), and for gy a zero front too (gy on the input gradient's
grid). NumPy builds that as ``zeros`` and then a strided copy of the box: two passes over the grid,
and the first is a memset of memory that is not in cache. A 3-D 3^3 32-channel layer on 8 x 16^3
spent 1.5 ms of its 8.3 ms forward there (1.0 ms of it in the zeros), a 1-D 3-tap 64-channel layer on
16 x 4096 1.9 ms of 13.5. Here each grid row is written once, zeros or a copy of x's row between
two runs of zeros, and the channel rows are split between threads where the grid is large.
"""
from __future__ import annotations

import functools
import math

import numpy as np

from . import backend, numba_cache
from .positions import run_parallel

# Smaller grids are left to NumPy: in cache its memset is fast and its strided copy as fast as this
# loop, whose rows each cost 10-20 ns of set-up (short rows run LLVM's scalar remainder): 2 x 64 x 34^2
# cells took 55 us here and 33 with NumPy, and a 3-D U-Net's 1.5-3 MiB grids of 18-cell rows made its
# epoch 2-3 % slower. From 4 MiB on the memset runs out of cache, and placing wins.
MIN_BYTES = 1 << 22
# Grids of fewer bytes are placed on one thread: a second thread's wake-up (20-40 us on these
# machines) is what a copy of this size takes.
SPLIT_BYTES = 1 << 21


def _place_loop(dst, cells, src, first, stop, front, batch, q, lo, rows, s_sp, s_b, s_c):   # pragma: no cover
    """For channel rows ``first`` <= ch < ``stop`` of dst (flat, rows of ``cells``): ``front`` zeros,
    then ``batch`` images of prod(q) cells (row-major q_1..q_N), image bi holding src's cells
    [bi * s_b + ch * s_c + sum_d i_d * s_sp[d]] (i_d < rows[d]) at lo[d] + i_d and zeros elsewhere,
    then zeros to the row's end. ``src``: flat and C-contiguous, strides in elements (s_sp: the
    spatial axes', the last 1). The innermost loops index with
    unsigned integers: a signed index costs a wrap-around test per access, which keeps LLVM from
    vectorising them (Numba's slice assignments were as slow: a generic strided loop)."""
    u = np.uint64
    N = q.shape[0]
    qlast, lolast, rlast = q[N - 1], lo[N - 1], rows[N - 1]
    outer = 1
    for d in range(N - 1):
        outer *= q[d]
    image = outer * qlast
    idx = np.zeros(max(N - 1, 1), np.int64)   # row r's coordinates, counted on (divisions cost more)
    for ch in range(first, stop):
        start = ch * cells
        for j in range(u(start), u(start + front)):
            dst[j] = 0
        for bi in range(batch):
            base = start + front + bi * image
            idx[:] = 0
            for r in range(outer):
                inside, src_at = True, bi * s_b + ch * s_c
                for d in range(N - 1):
                    i = idx[d] - lo[d]
                    if i < 0 or i >= rows[d]:
                        inside = False
                    src_at += i * s_sp[d]
                d = N - 2
                while d >= 0:   # the next row's coordinates
                    idx[d] += 1
                    if idx[d] < q[d]:
                        break
                    idx[d] = 0
                    d -= 1
                at = base + r * qlast
                if not inside:
                    for j in range(u(at), u(at + qlast)):
                        dst[j] = 0
                    continue
                for j in range(u(at), u(at + lolast)):
                    dst[j] = 0
                to, frm = u(at + lolast), u(src_at)
                for j in range(u(rlast)):   # src is C-contiguous: its rows are runs
                    dst[to + j] = src[frm + j]
                for j in range(u(at + lolast + rlast), u(at + qlast)):
                    dst[j] = 0
        for j in range(u(start + front + batch * image), u(start + cells)):
            dst[j] = 0


@functools.cache
def _loop():
    """The compiled loop, or None where Numba does not import or compile."""
    loops = numba_cache.compiled((_place_loop,), "grids built by NumPy", nogil=True, boundscheck=False)
    return loops[0] if loops else None


@functools.lru_cache(maxsize=256)
def _int_arrays(*tuples) -> tuple:
    """Each tuple as an int64 array, made once per layer shape (four arrays a call cost 4 us)."""
    return tuple(np.array(t, np.int64) for t in tuples)


def place(dst, src, front: int, q: tuple, lo: tuple, rows: tuple) -> bool:
    """dst (channels, cells) C-contiguous := per channel row ch, ``front`` zeros, then for each image bi
    of src (b, channels, d_1..d_N) a grid of q cells holding src[bi, ch, :rows] at ``lo``, zeros
    elsewhere, then zeros to the row's end. False (dst untouched) where the loop would not pay or
    cannot run: a grid under MIN_BYTES, no Numba, not host arrays of one dtype (float32, float64), a
    strided src (a user's view), a box that does not fit. The caller then builds the grid with NumPy."""
    N = len(q)
    if not (isinstance(dst, np.ndarray) and isinstance(src, np.ndarray) and dst.nbytes >= MIN_BYTES
            and dst.dtype == src.dtype and dst.dtype in (np.float32, np.float64)
            and dst.ndim == 2 and dst.flags.c_contiguous and src.ndim == N + 2 and src.flags.c_contiguous
            and src.shape[1] == dst.shape[0]
            and all(lo_d + r <= q_d and r <= d for lo_d, r, q_d, d in zip(lo, rows, q, src.shape[2:]))
            and front + src.shape[0] * math.prod(q) <= dst.shape[1]):
        return False
    loop = _loop()
    if loop is None:
        return False
    flat_src, strides = src.reshape(-1), tuple(s // src.itemsize for s in src.strides)
    args = (front, src.shape[0]) + _int_arrays(q, lo, rows, strides[2:]) + (strides[0], strides[1])
    channels = dst.shape[0]
    # a copy is bound by memory, which two threads mostly fill: no more than that
    threads = min(2, backend.num_threads(), channels) if dst.nbytes >= SPLIT_BYTES else 1
    cuts = [channels * t // threads for t in range(threads + 1)]
    run_parallel(lambda part: loop(dst.reshape(-1), dst.shape[1], flat_src, part[0], part[1], *args),
                 [(cuts[t], cuts[t + 1]) for t in range(threads)], blas=False)
    return True


def put_on_grid(dst, src, front: int, q: tuple, lo: tuple, rows: tuple) -> None:
    """``place``'s grid in dst, by the compiled loop where it pays and runs, else by the array module's own
    ``zeros`` and strided copy (any array type with NumPy's indexing: NumPy, CuPy)."""
    if place(dst, src, front, q, lo, rows):
        return
    dst[...] = 0
    images = dst[:, front:front + src.shape[0] * math.prod(q)].reshape((dst.shape[0], src.shape[0]) + tuple(q))
    box = tuple(slice(lo_d, lo_d + r) for lo_d, r in zip(lo, rows))
    images[(slice(None),) * 2 + box] = src[(slice(None),) * 2 + tuple(slice(0, r) for r in rows)].swapaxes(0, 1)
