"""Direct convolution for small kernels: blocked im2col, one GEMM per block of positions.

After the reduction (reduction.py) the problem is a stride-1 valid correlation of
inputs (b, g, C, q_1..q_N) with filters (g, c_O/g, C, k_1..k_N) at core dilation dl.
Put the batch inside the channels, A (g, C, b * prod(q)), and flatten (b, q...)
row-major into one axis of positions: tap k reads position p + off(k) with
off(k) = sum_j k_j * dl_j * stride_of_grid_j. For a block of positions [p, p + B)
the column matrix

    cols[c, k, j] = A[c, p + j + off(k)]          (C, k_1..k_N, B) = (C * taps, B)

is one strided *view* of A (as_strided), copied once into a small buffer that stays
in cache, and the block's outputs are one GEMM with the filters in their natural
layout, inner size C * taps (BLAS near its peak instead of per-tap GEMMs):

    y[:, p:p+B]   = Wmat (c_O/g, C * taps) @ cols
    gW           += gy_grid[:, p:p+B] @ cols^T
    gA[:, p:p+B]  = Wflip (C, c_O/g * taps) @ gcols      gcols[o, k', j] = G[o, p + j + off(k')]

The input gradient is the same blocked im2col run on G, gy placed on the grid (zeros
elsewhere) behind max_off zeros, with the filters flipped over every spatial axis
and transposed. Positions whose window runs past the edge of an image (or into the
next one) are computed and cropped: few, for small kernels. Blocks are independent,
so on the CPU they are shared by a pool of threads, each BLAS call single-threaded.
On a GPU (CuPy) the same code runs with blocks as large as the budget allows.
"""
from __future__ import annotations

import itertools
import math
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from . import backend, costs
from .costs import block_positions, pass_threads
from .geometry import ConvGeometry
from .reduction import Reduction

class DirectConv:
    """One direct convolution; keeps the reduced input (A) for the weight gradient."""

    def __init__(self, xp, geom: ConvGeometry, x, W, budget: int):
        self.xp, self.geom = xp, geom
        self.x, self.W = x, W
        self.budget = budget
        red = self.red = Reduction(xp, geom, keep_dilation=True)
        N = geom.ndim
        grid_stride = [math.prod(red.qx[j + 1:]) for j in range(N)]
        self.steps = tuple(d * s for d, s in zip(red.core_dilation, grid_stride))
        self.max_off = sum((k - 1) * st for k, st in zip(red.qk, self.steps))
        self.positions = geom.batch * math.prod(red.qx)      # b * prod(q): all grid positions
        self.taps = math.prod(red.qk)
        self.offsets = [sum(t * st for t, st in zip(tap, self.steps))
                        for tap in itertools.product(*(range(k) for k in red.qk))]   # row-major taps
        self._A = None

    estimate = staticmethod(costs.direct_estimate)   # the Engine protocol's cost hook

    # ---- the blocked im2col primitive ---------------------------------------------
    def _block(self, K: int, count: int) -> int:
        """Positions per block for a (K * taps, block) column matrix over ``count`` positions."""
        per_position = self.geom.groups * K * self.taps * self.x.dtype.itemsize
        return block_positions(per_position, count, backend.is_host_module(self.xp), self.budget)

    def _run_blocks(self, src, mats, count, K, out=None, acc_rhs=None):
        """For each block [p, p + B) of ``count`` positions, with cols the block's column matrix of
        ``src`` (g, K, positions + max_off): ``out[:, :, p:p+B] = mats @ cols`` (out given), or
        sum ``acc_rhs[:, :, p:p+B] @ cols^T`` over blocks and return it (g, rows, K * taps)."""
        xp, g = self.xp, self.geom.groups
        B = self._block(K, count)
        spans = [(p, min(B, count - p)) for p in range(0, count, B)]

        def work(part):
            buf = xp.empty((g, K) + self.red.qk + (B,), src.dtype)
            acc = None
            for p, w in part:
                cols = self._cols(src, p, w, buf)                      # (g, K * taps, w)
                if out is not None:
                    xp.matmul(mats, cols, out=out[:, :, p:p + w])
                else:
                    prod = xp.matmul(acc_rhs[:, :, p:p + w], cols.swapaxes(-1, -2))
                    acc = prod if acc is None else acc.__iadd__(prod)
            return acc

        rows = (mats if out is not None else acc_rhs).shape[1]
        madds = g * count * K * self.taps * rows                      # multiply-adds of this pass
        threads = min(pass_threads(madds, backend.is_host_module(xp)), len(spans))
        parts = [spans[t::threads] for t in range(threads)]
        results = _parallel(work, parts)
        if out is None:
            total = results[0]
            for r in results[1:]:
                total += r
            return total
        return out

    def _cols(self, src, p, w, buf):
        """buf[..., :w] <- src[g, K, p + j + off(k)] as (g, K * taps, w)."""
        g, K = src.shape[:2]
        cols = buf[..., :w]
        if backend.is_host_module(self.xp):   # one strided copy of an as_strided view
            sg, sK, s1 = src.strides
            view = np.lib.stride_tricks.as_strided(
                src[:, :, p:], shape=(g, K) + self.red.qk + (w,),
                strides=(sg, sK) + tuple(st * s1 for st in self.steps) + (s1,), writeable=False)
            cols[...] = view
        else:   # device arrays: one slice copy per tap (no strided views needed)
            flat = cols.reshape(g, K, self.taps, w)
            for t, off in enumerate(self.offsets):
                flat[:, :, t] = src[:, :, p + off:p + off + w]
        return cols.reshape(g, K * self.taps, w)

    # ---- forward and backward ---------------------------------------------------------
    def grid_input(self):
        """A (g, C, b * prod(q) + max_off): the reduced input, batch inside the channels."""
        if self._A is None:
            xp, geom, red = self.xp, self.geom, self.red
            a = red.inputs(self.x, 0, geom.batch)                         # (b, g, C, q...)
            g, C = geom.groups, red.channels
            A = xp.empty((g, C, self.positions + self.max_off), a.dtype)
            A[:, :, self.positions:] = 0
            grid = A[:, :, :self.positions].reshape((g, C, geom.batch) + red.qx)
            grid[...] = a.transpose((1, 2, 0) + tuple(range(3, 3 + geom.ndim)))
            self._A = A
        return self._A

    def forward(self):
        """y: (n, c_O, o...) without bias."""
        xp, geom, red, N = self.xp, self.geom, self.red, self.geom.ndim
        A = self.grid_input()
        g, C, O = geom.groups, red.channels, red.out_channels
        Wmat = xp.ascontiguousarray(red.filters(self.W)).reshape(g, O, C * self.taps)
        Y = xp.empty((g, O, self.positions), A.dtype)
        self._run_blocks(A, Wmat, self.positions, C, out=Y)
        Y = Y.reshape((g, O, geom.batch) + red.qx)
        Y = Y[(slice(None),) * 3 + tuple(slice(0, o) for o in geom.out_spatial)]
        y = xp.empty(geom.out_shape, A.dtype)
        y.reshape((geom.batch, g, O) + geom.out_spatial)[...] = Y.transpose(
            (2, 0, 1) + tuple(range(3, 3 + N)))
        return y

    def backward(self, gy, need_x: bool, need_W: bool):
        """(gx, gW) for gy (n, c_O, o...); an entry not asked for is None."""
        if not (need_x or need_W):
            return None, None
        xp, geom, red, N = self.xp, self.geom, self.red, self.geom.ndim
        g, C, O, b = geom.groups, red.channels, red.out_channels, geom.batch
        # G (g, O, max_off + b * prod(q)): gy at its grid positions, zeros elsewhere and in front
        G = xp.zeros((g, O, self.max_off + self.positions), gy.dtype)
        grid = G[:, :, self.max_off:].reshape((g, O, b) + red.qx)
        grid[(slice(None),) * 3 + tuple(slice(0, o) for o in geom.out_spatial)] = gy.reshape(
            (b, g, O) + geom.out_spatial).transpose((1, 2, 0) + tuple(range(3, 3 + N)))
        gx = gW = None
        if need_W:
            gWm = self._run_blocks(self.grid_input(), None, self.positions, C,
                                   acc_rhs=G[:, :, self.max_off:])          # (g, O, C * taps)
            gW = red.weight_grad(gWm.reshape((g * O, C) + red.qk))
        if need_x:
            flip = (slice(None),) * 3 + (slice(None, None, -1),) * N
            Wadj = xp.ascontiguousarray(red.filters(self.W)[flip].swapaxes(1, 2)).reshape(
                g, C, O * self.taps)
            gA = xp.empty((g, C, self.positions), gy.dtype)
            self._run_blocks(G, Wadj, self.positions, O, out=gA)
            gA = gA.reshape((g * C, b) + red.qx).swapaxes(0, 1)              # (b, g*C, q...)
            gx = red.input_grad(xp.ascontiguousarray(gA))
        return gx, gW


_pool = None
_pool_lock = threading.Lock()


def _parallel(work, parts):
    """[work(part) for part in parts], on a thread pool when there are several parts, with
    BLAS single-threaded meanwhile (the threads are the parallelism)."""
    global _pool
    if len(parts) == 1:
        with backend._single_threaded_blas():
            return [work(parts[0])]
    with _pool_lock:
        if _pool is None or _pool[0] < len(parts):
            _pool = (len(parts), ThreadPoolExecutor(len(parts), thread_name_prefix="convcore-direct"))
        pool = _pool[1]
    with backend._single_threaded_blas():
        return list(pool.map(work, parts))
