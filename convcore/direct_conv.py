"""Direct convolution for small kernels: blocked im2col, one GEMM per block of positions.

After the reduction (reduction.py) the problem is a stride-1 valid correlation of
inputs (b, g, C, q_1..q_N) with filters (g, c_O/g, C, k_1..k_N) at core dilation dl.
Put the batch inside the channels, A (g, C, b * prod(q)), and flatten (b, q...)
row-major into one axis of positions: tap k reads position p + off(k) with
off(k) = sum_j k_j * dl_j * stride_of_grid_j. For a block of positions [p, p + B)
the column matrix

    cols[c, k, j] = A[c, p + j + off(k)]          (C, k_1..k_N, B) = (C * taps, B)

is one strided *view* of A, copied once into a small buffer that stays
in cache, and the block's outputs are one GEMM with the filters in their natural
layout, inner size C * taps (BLAS near its peak instead of per-tap GEMMs):

    y[:, p:p+B]   = Wmat (c_O/g, C * taps) @ cols
    gW           += gy_grid[:, p:p+B] @ cols^T
    gA[:, p:p+B]  = Wflip (C, c_O/g * taps) @ gcols      gcols[o, k', j] = G[o, p + j + off(k')]

The input gradient is the same blocked im2col run on G, gy placed on the grid (zeros
elsewhere) behind max_off zeros, with the filters flipped over every spatial axis
and transposed.

With few GEMM rows (c_O/g, or C for the input gradient: costs.folded_tap_axes) the taps of the
last kernel axis (of the last two for 3^5 and up) are folded into the rows instead (_run_folded):
tap j of that axis reads off_j cells further, so Z = (mats_j stacked: F * rows, C * taps/F) @ cols'
over the block's positions widened by max(off_j), and y[:, p] = sum_j Z[j][:, p + off_j]. A k-th
of the column copies and k times the rows: BLAS runs 8 rows at half the rate of 32.

Which positions a pass runs over is its *position space*: axes with strides in the flat
grid. On the CPU the forward and weight-gradient passes run over the outputs only,
(b, o_1..o_{N-1}, q_N) with strides (prod(q), grid strides): the ring of positions whose
window runs past an edge is skipped on every axis but the last (over the whole grid it
would be computed and cropped: (q/o)^N more work, 1.3-2.4x for a 3^N kernel on 8-24 points
per axis), and the last axis is kept whole so that a block's copies stay long contiguous
runs (on the compiled micro-kernels, which copy nothing, the forward and the input gradient
cut it to the cells they write where that computes fewer positions: ``_cut_last``; a run
near a zero-padded border skips the taps that read only padding: ``_live_chunks``; and along the
run, a micro-block at the border sums per position only the taps that read data: ``_edge_blocks``,
``edge_kernel``; the weight pass, per block of rows, only the positions of a row where they do:
``_row_windows``).
A block is a range of one axis times the whole of the axes after it: a basic slice of one
strided view of the pass. With a stride (when costs.native_stride_pays) these two
passes run on the padded input itself (the ``fw`` reduction, no polyphase split) over the
outputs at their strided places, prod(k) taps each. The input gradient runs over the cells
of x (the ring skipped the same way) when padding is zeros and there is no stride; with a
stride and zero padding, on the micro-kernels, phase by phase of x where that saves enough
(``_phases``: each phase's cells of x with its own ceil((k - r) / s) taps per axis, written a
stride apart); otherwise, or with another padding mode (whose ring gradient folds back onto x),
it needs every position of the (polyphase) grid. Blocks are independent, so they are shared by a pool of
threads, each BLAS call single-threaded.

On a GPU (CuPy) every pass runs over the whole flat grid at once and crops, without blocks and
without the full column matrix (``_run_taps``): the taps of the trailing kernel axes are
gathered into columns (as many as keep the inner size modest, costs.device_grouped_axes), and
each remaining tap is one cuBLAS product reading its window of them in place
(view_matmul.matmul_into: a window is a strided view with leading dimension > its width, which
CuPy's own matmul would copy first).

Pointwise layers (every kernel size 1, no padding) skip all of this, on any device: products of
x as it lies, per image (pointwise.py).
"""
from __future__ import annotations

import contextlib
import functools
import itertools
import math
from typing import NamedTuple

import numpy as np

from . import (
    backend,
    costs,
    direct_kernel,
    edge_kernel,
    filter_pack,
    grid_place,
    layout,
    pointwise,
)
from .costs import block_positions, native_stride_pays, pass_split, pass_threads
from .geometry import ConvGeometry
from .positions import Space, run_parallel, strided_view
from .reduction import Reduction
from .view_matmul import matmul_into

# An output pass runs over the cells it writes (its last axis cut) when that computes under this
# fraction of the positions the whole axis does (``DirectConv._cut_last``). 0.9 until the scatter
# wrote whole runs in tiles; since, cutting any saving paid: 2d-k7 1.03x, 3-D 3^3 16 channels
# 1.04x, 2d-3x3-d2 1.02x, 3x3 32-64 channels 0.99-1.00x (30 alternated rounds, docs/benchmarks.md).
CUT_LAST_BELOW = 1.0


class _Grid:
    """A reduction's input grid, flattened with the batch: the taps' steps, their farthest offset and
    position counts."""

    def __init__(self, red: Reduction, batch: int):
        N = len(red.qx)
        self.red = red
        self.strides = tuple(math.prod(red.qx[j + 1:]) for j in range(N))   # of each grid axis
        self.steps = tuple(d * s for d, s in zip(red.core_dilation, self.strides))
        self.max_off = sum((k - 1) * st for k, st in zip(red.qk, self.steps))
        self.positions = batch * math.prod(red.qx)      # b * prod(q): all grid positions
        self.taps = math.prod(red.qk)


def _x_rows(geom: ConvGeometry, red: Reduction) -> tuple:
    """Per spatial axis, how many cells of x an unstrided reduction's grid holds from the low pad
    on: all of them, except where an axis with one output reads less than the padded input."""
    return tuple(max(0, min(d, q - lo)) for d, q, (lo, _) in zip(geom.spatial, red.qx, geom.pads))


_SHAPE_MEMO: dict = {}
_SHAPE_MEMO_MOST = 4096


def _per_shape(method):
    """Memoise a ``DirectConv`` method whose result depends on the layer's shape alone (its geometry,
    the strided-read choice, dtype size, whether the compiled passes run, the CPU's vectors; the
    engine's class, as a registered subclass may change the rules) and
    the method's hashable arguments: a training step makes a new engine per call, and these
    spaces, cuts and tails were a quarter of a small layer's forward (3x3 16 -> 16 channels on 8^2:
    25 of 93 us). ``clear_shape_memo`` empties it (tests that patch the rules start from nothing)."""
    name = method.__name__

    @functools.wraps(method)
    def memo(self, *args):
        key = (name, self._shape_key, args)
        try:
            return _SHAPE_MEMO[key]
        except KeyError:
            pass
        if len(_SHAPE_MEMO) >= _SHAPE_MEMO_MOST:
            _SHAPE_MEMO.clear()
        value = _SHAPE_MEMO[key] = method(self, *args)
        return value

    return memo


def clear_shape_memo() -> None:
    _SHAPE_MEMO.clear()


@functools.lru_cache(maxsize=256)
def _layout(xp, geom: ConvGeometry, native: bool) -> tuple:
    """(red, fw, gx_grid, fw_grid) of a geometry, ``fw`` reading strided outputs in place when
    ``native``: no arrays, so built once per layer shape and shared by every call (a training step
    makes a new engine per call; rebuilding these was a tenth of a small layer's time)."""
    red = Reduction(xp, geom, keep_dilation=True)
    fw = Reduction(xp, geom, keep_dilation=True, native_stride=True) if native else red
    gx_grid = _Grid(red, geom.batch)
    return red, fw, gx_grid, (_Grid(fw, geom.batch) if fw is not red else gx_grid)


class DirectConv:
    """One direct convolution; keeps the reduced input (A) for the weight gradient.

    Two reductions: ``red`` (polyphase for strides) for the input gradient, and ``fw`` for the
    forward and weight-gradient passes: on the CPU with the stride native (outputs read in place
    on the padded input, prod(k) taps each), on a device the same as ``red``.
    """

    def __init__(self, xp, geom: ConvGeometry, x, W, budget: int):
        self.xp, self.geom = xp, geom
        self.x, self.W = x, W
        self.budget = budget
        self.host = backend.is_host_module(xp)
        # native_stride_pays is decided on every call (its threshold is a setting), not cached
        self.red, self.fw, self.gx_grid, self.fw_grid = _layout(xp, geom, self.host and native_stride_pays(geom))
        self._kernels = direct_kernel.available(xp, x.dtype)   # read once a call (an environment lookup)
        self._shape_key = (type(self), geom, self.fw is not self.red, self.host, x.dtype.itemsize, self._kernels,
                           direct_kernel.machine())
        self._A = None
        self._W_finite = None
        self._red_filters = None
        self.pointwise = pointwise.applies(geom)   # 1x1 kernels: products of x as it lies, no grid

    estimate = staticmethod(costs.direct_estimate)   # the Engine protocol's cost hook
    unsupported = staticmethod(costs.direct_unsupported)

    @staticmethod
    def ready(xp) -> bool:
        """The engines' warm-up hook: load the compiled passes' commonest loops (from Numba's disk
        cache, or compiled once per machine). The engine runs either way (BLAS without them)."""
        if direct_kernel.available(xp, np.float32):
            direct_kernel.warm()
        return True

    # ---- the blocked im2col primitive ---------------------------------------------
    def _block(self, K: int, count: int, taps: int) -> int:
        """Positions per block for a (K * taps, block) column matrix over ``count`` positions."""
        per_position = self.geom.groups * K * taps * self.x.dtype.itemsize
        return block_positions(per_position, count)

    def _run_blocks(self, grid, src, mats, space, K, out=None, acc_rhs=None, rhs_on_grid=True, rhs_front=0,
                    live=None):
        """For each block of the position ``space`` (``positions.Space``), with cols the block's column matrix
        of ``src`` (g, K, grid + max_off) on ``grid``: ``out[:, :, p:p+w] = mats @ cols`` (out given,
        indexed by the space's own row-major positions), or sum ``acc_rhs[block] @ cols^T`` over
        blocks and return it (g, rows, K * taps), ``acc_rhs`` being (g, rows, rhs_front + grid
        positions) read at the block's grid positions (``rhs_on_grid``) or (g, rows, space.count)
        at its own. A weight pass with enough rows runs compiled (``_compiled_weights``, skipping the
        taps that read only zeros of src where ``live`` says so); output passes choose in ``_out_pass``."""
        if not self.host:
            return self._run_taps(grid, src, mats, K, out, acc_rhs, rhs_front)
        rows = (mats if out is not None else acc_rhs).shape[1]
        if out is None and self._compiled(rows):
            return self._compiled_weights(grid, src, space, K, acc_rhs, rhs_on_grid, rhs_front, live=live)
        m = costs.folded_tap_axes(grid.red.qk, K, rows, space.strides[-1])
        if m:
            return self._run_folded(grid, src, mats, space, K, out, acc_rhs, rhs_on_grid, rhs_front, m)
        xp, g, qk = self.xp, self.geom.groups, grid.red.qk
        B = self._block(K, space.count, grid.taps)
        spans = space.blocks(B)
        # one strided view of the whole pass; a block is a basic slice of it
        lead = (slice(None),) * (2 + len(qk))
        src_all = strided_view(src, space.origin, (g, K) + qk + space.dims, (None, None) + grid.steps + space.strides)
        if acc_rhs is not None and rhs_on_grid:
            rhs_all = strided_view(acc_rhs, rhs_front + space.origin, (g, rows) + space.dims, (None, None) + space.strides)

        def work(part):
            buf = xp.empty((g, K) + qk + (B,), src.dtype)
            shaped = {}   # block shape -> (copy destination, column matrix): views of buf
            acc = None
            for block in part:
                p, w = block.start, block.size
                if block.shape not in shaped:
                    shaped[block.shape] = (buf[..., :w].reshape((g, K) + qk + block.shape),
                                           buf[..., :w].reshape(g, K * grid.taps, w))
                dst, cols = shaped[block.shape]
                dst[...] = src_all[lead + block.index]                   # (g, K * taps, w)
                if out is not None:
                    xp.matmul(mats, cols, out=out[:, :, p:p + w])
                    continue
                if not rhs_on_grid:
                    rhs = acc_rhs[:, :, p:p + w]
                else:
                    rhs = rhs_all[(slice(None), slice(None)) + block.index].reshape(g, rows, w)
                prod = xp.matmul(rhs, cols.swapaxes(-1, -2))
                acc = prod if acc is None else acc.__iadd__(prod)
            return acc

        madds = g * space.count * K * grid.taps * rows                # multiply-adds of this pass
        threads = min(pass_threads(madds), len(spans))
        parts = [spans[t::threads] for t in range(threads)]
        results = run_parallel(work, parts)
        if out is None:
            total = results[0]
            for r in results[1:]:
                total += r
            return total
        return out

    def _out_pass(self, grid, src, mats, space, K):
        """An output pass (forward, input gradient): (g, rows) + space.dims, compiled where it can
        run so (a view of its channels-last result), else the BLAS blocks into a new array."""
        g, rows = mats.shape[0], mats.shape[1]
        if self._compiled(rows):
            return self._compiled_outputs(grid, src, mats, space, K)
        mats = self.xp.ascontiguousarray(mats).reshape(g, rows, -1)
        out = self.xp.empty((g, rows, space.count), src.dtype)
        return self._run_blocks(grid, src, mats, space, K, out=out).reshape((g, rows) + space.dims)

    # ---- the compiled passes (direct_kernel.py) -------------------------------------------
    def _compiled(self, rows: int) -> bool:
        """Whether a CPU pass with ``rows`` output rows runs the compiled micro-kernels (on NumPy
        arrays; its grid arrays A and G are made here, C-contiguous)."""
        return rows >= direct_kernel.MIN_ROWS and self._kernels

    @_per_shape
    def _tail(self, rows: int, space) -> int:
        """Cells past the grid an output pass over ``space`` reads when it runs compiled: its runs
        padded to whole micro-blocks (``direct_kernel.tail_cells``); 0 on BLAS."""
        if not self._compiled(rows):
            return 0
        blocking = direct_kernel.Blocking(rows, self.x.dtype.itemsize)
        tails = []
        for runs in space.run_choices():   # any of them may run (``_live_plan``)
            sp = runs.coalesced()
            tails.append(direct_kernel.tail_cells(sp.dims[-1], direct_kernel.micro_blocks(sp.dims[-1], blocking.P),
                                                  sp.strides[-1]))
        return max(tails)

    @_per_shape
    def _forward_tail(self) -> int:
        return self._tail(self.fw.out_channels, self._forward_space()) if self.host else 0

    @_per_shape
    def _input_grad_tail(self) -> int:
        if not self.host:
            return 0
        inner = self._input_space()
        if inner is None:
            whole = self._tail(self.red.channels, self._grid_space(self.gx_grid))
            if self._phase_list() is None:
                return whole
            C = self.red.channels // math.prod(self.red.stride)   # a phase's runs may end closer to the grid's end
            return max([whole] + [self._tail(C, space) for _, _, space, _, _ in self._phase_list()])
        # its runs end no later than the whole axis's: the larger tail covers either
        cut = self._cut_last(inner, _x_rows(self.geom, self.red)[-1], self.geom.pads[-1][0], self.red.channels)[0]
        return max(self._tail(self.red.channels, inner), self._tail(self.red.channels, cut))

    def _compiled_outputs(self, grid, src, mats, space, K, dest=None, fold=None, threads=None, deferred=False,
                          bias=None, live=None, taps=None, tap_origin=0):
        """The output pass (forward, input gradient) on the micro-kernels: (g, rows) + space.dims,
        a view of their channels-last result (one copy later makes it the caller's layout); or,
        with ``dest`` = (flat array, strides, limits, shifts, channel stride, group stride[, step]) as in
        ``direct_kernel.destinations``, written there by each thread as its blocks are done
        (returns None); or, with ``fold`` = (flat gx, ``direct_kernel.PhaseFold``, group stride),
        an input gradient over the whole polyphase grid folded into gx likewise (returns None).
        ``threads``: how many parts (default: as the pass's size warrants); ``deferred``: return
        (parts, finish) instead, to run the parts beside another pass's (``_backward``). ``bias``
        (g * rows,): added to each output as ``dest`` is written (the forward's b: no pass over y after).
        ``live`` (``Live``): where src holds data, so that blocks skip the taps that read only zeros.
        ``taps`` (k_1..k_N, default the grid's), read from ``tap_origin`` cells on: the part of the grid's
        kernel that mats holds (a stride's phase of x reads some of the polyphase filters' taps)."""
        g, rows, itemsize = mats.shape[0], mats.shape[1], src.dtype.itemsize
        taps = taps or grid.red.qk
        if live is not None and len(space.dims) != len(live.qx) + 1:
            live = None   # a flat space (the whole grid): its runs' coordinates are not known here
        space, plan = _live_plan(space, grid.steps, taps, src.shape[-1], K, rows, itemsize, grid.max_off, live,
                                 tap_origin)
        if dest is not None:
            dst, ch_stride, group_stride = dest[0], dest[4], dest[5]
            step = dest[6] if len(dest) > 6 else 1
            segments = _destinations(space, dest[1], dest[2], dest[3], plan.P, plan.per_run, step)
            shift = (np.zeros((g, rows), src.dtype) if bias is None
                     else np.ascontiguousarray(bias, dtype=src.dtype).reshape(g, rows))
            scatter = direct_kernel.scatter_loop(plan.blocking.VW, itemsize)
        b = plan.blocking
        # filters packed (g, blocks of channels, K * taps, width), zeros past rows, from mats as it lies
        w = filter_pack.pack(mats, b.V * b.VW, b.nob)
        blocks = len(plan.bases)
        out = np.empty((g, blocks * plan.P, b.padded), src.dtype)
        flat = src.reshape(g, -1)
        madds = g * space.count * K * math.prod(taps) * rows
        threads = min(threads or pass_threads(madds), g * blocks)
        cuts = _cuts(g * blocks, threads, madds, deferred)

        def work(part):
            lo, hi = part
            for gi in range(lo // blocks, -(-hi // blocks)):
                first, last = max(lo - gi * blocks, 0), min(hi - gi * blocks, blocks)
                plan.loop(flat[gi], w[gi], plan.koff, out[gi], plan.bases, first, last, plan.kind, plan.chunk_ptr,
                          plan.chunk_start, plan.chunk_len)
                for edge, edge_blocks in plan.edges:   # the border blocks the loop left empty
                    edge(flat[gi], w[gi], plan.koff, out[gi], plan.bases, edge_blocks, first, last, plan.live_kind,
                         plan.chunk_ptr, plan.chunk_start, plan.chunk_len)
                if dest is not None:
                    scatter(out[gi], dst, *segments, rows, ch_stride, gi * group_stride, plan.per_run * plan.P,
                            first * plan.P, last * plan.P, shift[gi], step)
                elif fold is not None:
                    direct_kernel.phase_scatter(out[gi], fold[0], *fold[1][:-1], rows, gi * fold[2], plan.P,
                                                first, last, space.count)

        def finish(_results):
            if dest is not None or fold is not None:
                return None
            runs = blocks // plan.per_run
            shaped = out.reshape(g, runs, plan.per_run * plan.P, b.padded)[:, :, :plan.L, :rows]
            return np.moveaxis(shaped.reshape((g,) + space.dims + (rows,)), -1, 1)

        return _run_or_defer(work, [(cuts[t], cuts[t + 1]) for t in range(threads)], finish, deferred)

    def _compiled_weights(self, grid, src, space, K, acc_rhs, rhs_on_grid, rhs_front, threads=None, deferred=False,
                          live=None):
        """The weight-gradient pass on the micro-kernels: (g, rows, K * taps). Each segment of
        positions reads its rows of gy channels-first where they lie (on the grid, or in the
        space's own layout) and copies them channels-last in the thread that uses them; or, columns
        first (``direct_kernel.columns_first``: few columns (c, tap), many filters), broadcasts
        them and gathers the grid's columns instead. ``threads`` and ``deferred`` as in
        ``_compiled_outputs``; ``live`` (``Live``): where src holds data, so that runs skip the taps
        that read only zeros there (``_weight_live``)."""
        g, rows, itemsize = acc_rhs.shape[0], acc_rhs.shape[1], src.dtype.itemsize
        rhs = np.ascontiguousarray(acc_rhs.reshape(g, rows, -1))
        columns = direct_kernel.columns_first(K * grid.taps, rows)
        # gy on its grid over the outputs' whole-axis space: each row's ring (past the outputs) holds zeros
        keep = (self.geom.out_spatial[-1] if rhs_on_grid and self.fw.out_stride[-1] == 1
                and space == self._output_space() else 0)
        plan = _weight_plan(space, grid.steps, grid.red.qk, src.shape[-1], K, rows, itemsize, rhs.shape[-1], columns,
                            live, keep)
        b, sp = plan.blocking, plan.space
        if rhs_on_grid:   # the space's positions at their grid cells, behind rhs_front
            rhs_start, rhs_step = plan.seg_base + rhs_front, sp.strides[-1]
        else:
            rhs_start, rhs_step = plan.seg_row, 1
        flat = src.reshape(g, -1)
        segments = len(plan.seg_base)
        spans = (plan.seg_kind, plan.kind_ptr, plan.span_lo, plan.span_hi, plan.row_len, plan.keep, plan.win_lo,
                 plan.win_hi)
        madds = g * space.count * K * grid.taps * rows
        threads = min(threads or pass_threads(madds), segments)
        cuts = _cuts(segments, threads, madds, deferred)

        def work(part):
            acc = np.zeros((g, len(plan.koff), b.padded), src.dtype)
            for gi in range(g):
                if columns:   # gy's rows broadcast, the columns gathered: acc is (rows, columns)
                    plan.loop(rhs[gi].reshape(-1), plan.koff, rhs_step, flat[gi], plan.roff, sp.strides[-1],
                              acc[gi], rhs_start, plan.seg_base, plan.seg_len, *spans, part[0], part[1])
                else:   # the grid's columns broadcast, gy's rows gathered: acc is (columns, rows)
                    plan.loop(flat[gi], plan.koff, sp.strides[-1], rhs[gi].reshape(-1), plan.roff, rhs_step,
                              acc[gi], plan.seg_base, rhs_start, plan.seg_len, *spans, part[0], part[1])
            return acc

        def finish(results):
            total = results[0]
            for r in results[1:]:
                total += r
            if plan.tap_major:   # (tap, channel) rows back to (channel, tap)
                total = total[:, :K * grid.taps].reshape(g, grid.taps, K, -1).swapaxes(1, 2).reshape(g, K * grid.taps, -1)
            if columns:
                return total[:, :rows, :K * grid.taps]
            return total[:, :K * grid.taps, :rows].swapaxes(1, 2)

        return _run_or_defer(work, [(cuts[t], cuts[t + 1]) for t in range(threads)], finish, deferred)

    def _run_folded(self, grid, src, mats, space, K, out, acc_rhs, rhs_on_grid, rhs_front, m):
        """``_run_blocks`` with the taps of the last ``m`` kernel axes folded into the GEMM's rows: the
        column matrix holds the taps of the other axes only (1/F of the copies, F the folded taps)
        and the GEMM makes F times the rows (small channel counts run BLAS far below its peak: 8
        rows at half the rate of 32).

        Folded tap j reads off_j cells further on the flat grid. With u the grid cells between
        neighbouring positions along the space's last axis (1, or a stride read in place), off_j =
        phi_j + u * a_j: tap j reads phase phi_j of that axis, a_j positions on. Per phase, with
        Z[(j, r), p] = mats_j @ cols_phi[:, p] over the block's positions and the largest a_j
        positions after them, ``out[r, p] = sum_j Z[(j, r), p + a_j]``; the weight gradient is the
        adjoint: acc_rhs's rows shifted by a_j (zeros elsewhere) against the same widened columns.
        Unstrided there is one phase. The space's trailing contiguous axes are merged first, so a
        block widens one long run per row of blocks (widening each short row cut the copies into
        runs of a few cells: 2x slower). Exact for any block: the widened reads stay within the
        grid's max_off tail."""
        xp, g, qk, N = self.xp, self.geom.groups, grid.red.qk, len(grid.red.qk)
        offs = [sum(t * st for t, st in zip(tap, grid.steps[N - m:]))
                for tap in itertools.product(*(range(k) for k in qk[N - m:]))]
        F, outer_qk = len(offs), qk[:N - m]
        taps = math.prod(outer_qk)
        rows = (mats if out is not None else acc_rhs).shape[1]
        space = space.coalesced()
        u = space.strides[-1]
        by_phase = {}
        for j, off in enumerate(offs):
            by_phase.setdefault(off % u, []).append(j)
        phases = [(phi, js, [offs[j] // u for j in js]) for phi, js in sorted(by_phase.items())]
        per_position = g * (K * taps + F * rows) * src.dtype.itemsize
        spans = space.blocks(block_positions(per_position, space.count))
        lead = (slice(None),) * (2 + len(outer_qk))
        views = []
        for phi, js, shifts in phases:
            dims = space.dims[:-1] + (space.dims[-1] + shifts[-1],)
            views.append(strided_view(src, space.origin + phi, (g, K) + outer_qk + dims,
                                      (None, None) + grid.steps[:N - m] + space.strides))
        if out is not None:   # (g, rows, K * taps * F) -> per phase (g, F_phi * rows, K * taps): tap j's filters as rows
            per_tap = mats.reshape(g, rows, K * taps, F).transpose(0, 3, 1, 2)
            mats = [xp.ascontiguousarray(per_tap[:, js]).reshape(g, len(js) * rows, K * taps) for _, js, _ in phases]
        elif rhs_on_grid:
            rhs_all = strided_view(acc_rhs, rhs_front + space.origin, (g, rows) + space.dims, (None, None) + space.strides)

        def widened(block, ext):
            """The block's index and box shape in a view widened by ``ext`` positions."""
            index = block.index
            if len(index) == len(space.dims):   # a slice of the last axis itself
                index = index[:-1] + (slice(index[-1].start, index[-1].stop + ext),)
            return index, block.shape[:-1] + (block.shape[-1] + ext,)

        ext = max(shifts[-1] for _, _, shifts in phases)
        most = max(math.prod(shape[:-1]) * (shape[-1] + ext) for shape in {block.shape for block in spans})

        def work(part):
            cols_buf = xp.empty(g * K * taps * most, src.dtype)
            side_buf = xp.empty(g * F * rows * most, src.dtype)
            shape, acc = None, [None] * len(phases)
            for block in part:
                L = block.shape[-1]
                if block.shape != shape:   # each phase's Z (or shifted rows) in its own part of side_buf
                    shape, sides, start = block.shape, [], 0
                    for _, js, shifts in phases:
                        wshape = widened(block, shifts[-1])[1]
                        size = g * len(js) * rows * math.prod(wshape)
                        sides.append(side_buf[start:start + size].reshape((g, len(js), rows) + wshape))
                        start += size
                        if out is None:
                            sides[-1][...] = 0   # shifted rows: zeros where no row of acc_rhs lands
                if out is not None:
                    dst = out[:, :, block.start:block.start + block.size].reshape((g, rows) + block.shape)
                elif rhs_on_grid:
                    rhs = rhs_all[(slice(None), slice(None)) + block.index]
                else:
                    rhs = acc_rhs[:, :, block.start:block.start + block.size].reshape((g, rows) + block.shape)
                for n, ((_, js, shifts), view, side) in enumerate(zip(phases, views, sides)):
                    index, wshape = widened(block, shifts[-1])
                    ww = math.prod(wshape)
                    cols = cols_buf[:g * K * taps * ww].reshape(g, K * taps, ww)
                    cols.reshape((g, K) + outer_qk + wshape)[...] = view[lead + index]
                    if out is not None:
                        xp.matmul(mats[n], cols, out=side.reshape(g, len(js) * rows, ww))
                        for f, a in enumerate(shifts):
                            if n == 0 and f == 0:
                                dst[...] = side[:, 0, ..., a:a + L]
                            else:
                                dst += side[:, f, ..., a:a + L]
                        continue
                    for f, a in enumerate(shifts):
                        side[:, f, ..., a:a + L] = rhs
                    prod = xp.matmul(side.reshape(g, len(js) * rows, ww), cols.swapaxes(-1, -2))
                    acc[n] = prod if acc[n] is None else acc[n].__iadd__(prod)
            return acc

        madds = g * space.count * K * grid.taps * rows
        threads = min(pass_threads(madds), len(spans))
        results = run_parallel(work, [spans[t::threads] for t in range(threads)])
        if out is not None:
            return out
        # per phase (g, F_phi * rows, K * taps), summed over threads -> (g, rows, K * taps * F): the filters' layout
        total = xp.empty((g, F, rows, K * taps), src.dtype)
        for n, (_, js, _) in enumerate(phases):
            part = results[0][n]
            for r in results[1:]:
                part += r[n]
            total[:, js] = part.reshape(g, len(js), rows, K * taps)
        return total.transpose(0, 2, 3, 1).reshape(g, rows, K * taps * F)

    def _run_taps(self, grid, src, mats, K, out, acc_rhs, rhs_front):
        """``_run_blocks`` on a device, over every grid position at once, without a full column matrix.

        The taps of the last ``m`` kernel axes (``_grouped_axes``) are gathered into
        Acol (g, K * Tg, L), Acol[:, (c, j), p] = src[:, c, p + inner_off(j)], Tg of them; each
        remaining (outer) tap r is then one product that reads its window Acol[:, :, oo_r:oo_r + P]
        where it lies (view_matmul: cuBLAS with the window's leading dimension). m = 0 copies
        nothing (one product per tap); at most N - 1 axes are gathered, so some tap is always a
        product of its own (the whole im2col lost to all but the first axis in every 3-D layer
        measured: docs/benchmarks.md, "Fourth GPU session").
        Forward and input gradient: out (g, rows, P) = sum_r mats_r (g, rows, K * Tg) @ window_r,
        accumulated in place. Weight gradient: per outer tap, acc_rhs's grid part (g, rows, P) @
        window_r^T, returned as (g, rows, K * taps) like the blocked passes."""
        xp, g, P = self.xp, self.geom.groups, grid.positions
        cols, outer_offsets, Tg = self._gathered(grid, src, K)
        R = len(outer_offsets)
        if out is not None:
            rows = mats.shape[1]
            per_tap = xp.ascontiguousarray(mats.reshape(g, rows, K, R, Tg).transpose(0, 3, 1, 2, 4))   # (g, R, rows, K, Tg)
            per_tap = per_tap.reshape(g, R, rows, K * Tg)
            for r, off in enumerate(outer_offsets):
                matmul_into(xp, per_tap[:, r], cols[:, :, off:off + P], out, accumulate=r > 0)
            return out
        rows = acc_rhs.shape[1]
        rhs = acc_rhs[:, :, rhs_front:rhs_front + P]
        per_tap = xp.empty((R, g, rows, K * Tg), src.dtype)
        for r, off in enumerate(outer_offsets):
            matmul_into(xp, rhs, cols[:, :, off:off + P].swapaxes(1, 2), per_tap[r])
        per_tap = per_tap.reshape(R, g, rows, K, Tg).transpose(1, 2, 3, 0, 4)
        return per_tap.reshape(g, rows, K * R * Tg)

    def _gathered(self, grid, src, K: int):
        """(Acol (g, K * Tg, L), the outer taps' offsets, Tg) for ``_run_taps``. Gathered again by
        the weight gradient rather than kept from the forward pass: a layer keeps its engine
        between calls (inference included), and Tg copies of its input would stay with it."""
        xp, g, P = self.xp, self.geom.groups, grid.positions
        qk, steps, N = grid.red.qk, grid.steps, len(grid.red.qk)
        m = self._grouped_axes(grid, K, src.dtype.itemsize)
        outer = [sum(t * st for t, st in zip(tap, steps)) for tap in itertools.product(*(range(k) for k in qk[:N - m]))]
        inner = [sum(t * st for t, st in zip(tap, steps[N - m:])) for tap in itertools.product(*(range(k) for k in qk[N - m:]))]
        if len(inner) == 1:
            cols = src                                                    # (g, K, P + max_off): read in place
        else:
            L = P + sum((k - 1) * st for k, st in zip(qk[:N - m], steps[:N - m]))
            cols = xp.empty((g, K, len(inner), L), src.dtype)
            for j, off in enumerate(inner):
                cols[:, :, j] = src[:, :, off:off + L]
            cols = cols.reshape(g, K * len(inner), L)
        return cols, outer, len(inner)

    def _grouped_axes(self, grid, K: int, itemsize: int) -> int:
        """How many trailing kernel axes ``_run_taps`` gathers into its column matrix."""
        tap_bytes = self.geom.groups * K * (grid.positions + grid.max_off) * itemsize
        return costs.device_grouped_axes(grid.red.qk, K, tap_bytes, self.budget)

    # ---- position spaces -------------------------------------------------------------
    @staticmethod
    def _grid_space(grid: _Grid):
        """Every grid position, flat: what the input gradient needs (and a device runs)."""
        return Space((grid.positions,), (1,))

    @_per_shape
    def _output_space(self):
        """The CPU's forward and weight-gradient passes on the ``fw`` grid: the outputs
        (b, o_1..o_N), each at its strided place. Along an unstrided last axis the space takes
        the whole axis (q_N, its ring included): then its last two axes are one contiguous run of
        the grid, which keeps the column copies long and fast (skipping that ring would cut them
        into runs of o_N, slower than the work saved). The compiled weight pass still sums only each
        row's outputs, its segments whole rows (``_weight_plan``'s ``keep``)."""
        red, geom, grid = self.fw, self.geom, self.fw_grid
        last = red.qx[-1] if red.out_stride[-1] == 1 else geom.out_spatial[-1]
        dims = (geom.batch,) + tuple(geom.out_spatial[:-1]) + (last,)
        strides = (math.prod(red.qx),) + tuple(s * st for s, st in zip(red.out_stride, grid.strides))
        return Space(dims, strides)

    @_per_shape
    def _forward_space(self):
        """The forward's output space: ``_output_space``, on the micro-kernels with its last axis cut
        to the outputs when that pays (``_cut_last``). The weight pass keeps the whole axis: its
        segments would be as short, and each segment's sums are loaded and stored once per block
        of rows."""
        whole = self._output_space()
        if not self.host or self.fw.out_stride[-1] != 1:
            return whole
        return self._cut_last(whole, self.geom.out_spatial[-1], 0, self.fw.out_channels)[0]

    @_per_shape
    def _cut_last(self, space, length: int, start: int, rows: int) -> tuple:
        """(space, start): ``space`` with its last axis cut to the ``length`` positions from ``start`` on
        (the cells an output pass writes) and 0, when the micro-kernels then compute fewer positions
        (``CUT_LAST_BELOW``); else ``space`` and ``start`` as they were. The whole axis makes runs of
        several rows; cut, each row's run is padded to micro-blocks of its own, so a thin ring can
        cost less than that padding (3x3 on 12 x 29: the whole axis)."""
        if not self._compiled(rows):
            return space, start
        cut = space._replace(dims=space.dims[:-1] + (length,), origin=space.origin + start * space.strides[-1])
        most = direct_kernel.Blocking(rows, self.x.dtype.itemsize).P
        return (cut, 0) if _computed(cut, most) < CUT_LAST_BELOW * _computed(space, most) else (space, start)

    @_per_shape
    def _input_space(self):
        """The CPU's input-gradient pass when no padded cell's gradient is kept (zero padding) and
        there is no polyphase split: the grid cells of x itself, (b, r_1..r_{N-1}, q_N) with r_j the
        rows of x on the grid. The ring of padding is skipped on every axis but the last, which
        stays whole for long copies as in the output space (a 4x4 input padded to 6x6 runs 24
        positions per image instead of 36). None where the pass needs the whole grid."""
        red, geom, grid = self.red, self.geom, self.gx_grid
        rows = _x_rows(geom, red)
        if not self.host or geom.padding_mode != "zeros" or any(s != 1 for s in red.stride) or not all(rows):
            return None
        dims = (geom.batch,) + rows[:-1] + (red.qx[-1],)
        origin = sum(lo * st for (lo, _), st in zip(geom.pads[:-1], grid.strides[:-1]))
        return Space(dims, (math.prod(red.qx),) + grid.strides, origin)

    def _input_from_space(self, gA, space):
        """gx (b, c_I, d...) from the input space's gradient (g, C, space.count): the last axis
        cropped to x, the batch moved to the front, zeros for cells of x the grid never read."""
        xp, geom, N = self.xp, self.geom, self.geom.ndim
        rows, lo = _x_rows(geom, self.red), geom.pads[-1][0]
        a = gA.reshape((geom.groups, self.red.channels) + space.dims)[..., lo:lo + rows[-1]]
        gx = (xp.empty if rows == geom.spatial else xp.zeros)(geom.in_shape, gA.dtype)
        gx.reshape((geom.batch, geom.groups, self.red.channels) + geom.spatial)[
            (slice(None),) * 3 + tuple(slice(0, r) for r in rows)] = a.transpose((2, 0, 1) + tuple(range(3, 3 + N)))
        return gx

    def _compiled_gx(self, grid, G, Wadj, inner, space, O, threads=None, deferred=False):
        """gx by a compiled pass that writes it in place: over the input space (``inner``) or, for a
        strided layer with zero padding, over the polyphase grid (``space``); with ``deferred``,
        (gx, parts, finish) to run later."""
        if inner is not None:
            return self._compiled_input_grad(grid, G, Wadj, inner, O, threads, deferred)
        if self._phases() is not None:
            return self._compiled_phase_passes(grid, G, O, threads, deferred)
        return self._compiled_phase_grad(grid, G, Wadj, space, O, threads, deferred)

    def _both_gradients(self, split, weights, gx_pass):
        """(gx, gW) with the two passes side by side: ``split`` = (threads of the weight pass, of the
        input-gradient pass), all the parts handed out at once (one hand-off instead of two, and on
        two threads each pass on one, so no partial sums of gW to add)."""
        geom, fw = self.geom, self.fw
        w_parts, w_finish = self._compiled_weights(*weights[:-1], threads=split[0], deferred=True, live=weights[-1])
        gx, x_parts, x_finish = self._compiled_gx(*gx_pass, threads=split[1], deferred=True)
        results = run_parallel(lambda part: part(), w_parts + x_parts, blas=False)
        x_finish(results[len(w_parts):])
        gWm = w_finish(results[:len(w_parts)])
        return gx, fw.weight_grad(gWm.reshape((geom.groups * fw.out_channels, fw.channels) + fw.qk))

    def _input_grad_run(self, space) -> tuple:
        """(space, start, live) of the compiled input-gradient pass over the input space ``space``: its last
        axis cut to x's cells where that pays (``_cut_last``), and where gy lies on its grid (``Live``:
        taps that read only its zero front and ring are skipped, for finite filters)."""
        geom, grid, N = self.geom, self.gx_grid, self.geom.ndim
        space, lo = self._cut_last(space, _x_rows(geom, self.red)[-1], geom.pads[-1][0], self.red.channels)
        dil = tuple(st // s for st, s in zip(grid.steps, grid.strides))
        live = Live(grid.red.qx, (0,) * N, geom.out_spatial, tuple((k - 1) * d for k, d in zip(grid.red.qk, dil)),
                    dil) if self._finite_filters() else None
        return space, lo, live

    def _gy_grid_cells(self) -> int:
        """Cells of G per channel, gy on the input gradient's grid: its zero front, the grid, the tail."""
        return self.gx_grid.max_off + self.gx_grid.positions + self._input_grad_tail()

    @_per_shape
    def _input_grad_madds(self, space, O: int, finite: bool) -> int:
        """The multiply-adds the compiled input-gradient pass over the input space ``space`` computes:
        each run's micro-blocks times the (channel, tap) rows it sums (the skipped taps not counted;
        ``finite``: ``_finite_filters()``, on which that depends: a key of the memo)."""
        grid, C = self.gx_grid, self.red.channels
        space, _, live = self._input_grad_run(space)
        _, plan = _live_plan(space, grid.steps, grid.red.qk, self._gy_grid_cells(), O, C, self.x.dtype.itemsize,
                             grid.max_off, live if len(space.dims) == len(grid.red.qx) + 1 else None)
        return self.geom.groups * _plan_rows(plan) * C

    def _compiled_input_grad(self, grid, G, Wadj, space, O, threads=None, deferred=False):
        """gx (b, c_I, d...) from the compiled input-gradient pass over the input space, each
        thread writing its blocks' cells of x (the last axis cropped to x, zeros where the grid
        never reads x), as ``_input_from_space`` lays them out."""
        geom, N, C = self.geom, self.geom.ndim, self.red.channels
        rows = _x_rows(geom, self.red)
        space, lo, live = self._input_grad_run(space)
        gx = (np.empty if rows == geom.spatial else np.zeros)(geom.in_shape, G.dtype)
        plane = math.prod(geom.spatial)
        strides = (geom.groups * C * plane,) + tuple(math.prod(geom.spatial[d:]) for d in range(1, N + 1))
        run = self._compiled_outputs(grid, G, Wadj, space, O, dest=(
            gx.reshape(-1), strides, (geom.batch,) + rows, (0,) * N + (lo,), plane, C * plane),
            threads=threads, deferred=deferred, live=live)
        return (gx,) + run if deferred else gx

    def _compiled_phase_grad(self, grid, G, Wadj, space, O, threads=None, deferred=False):
        """gx (b, c_I, d...) from the compiled input-gradient pass over the whole polyphase grid
        (zero padding), each thread folding its blocks' phases straight into the cells of x they
        belong to (``direct_kernel.phase_fold``): no channels-first copy of the grid's gradient and
        no ``depth_to_space_window`` after it (a sixth of a strided small layer's forward + backward)."""
        geom, red, C = self.geom, self.red, self.red.channels
        plane = math.prod(geom.spatial)
        fold = direct_kernel.phase_fold(red.stride, red.read, tuple(lo for lo, _ in geom.pads), geom.spatial,
                                        red.qx, geom.in_shape[1] * plane)
        gx = (np.empty if fold.covers else np.zeros)(geom.in_shape, G.dtype)
        run = self._compiled_outputs(grid, G, Wadj, space, O, fold=(gx.reshape(-1), fold,
                                                                    C // math.prod(red.stride) * plane),
                                     threads=threads, deferred=deferred)
        return (gx,) + run if deferred else gx

    @_per_shape
    def _phases(self):
        """A strided layer's input gradient phase by phase of x (zero padding): per phase r of the
        polyphase grid that holds cells of x, (r's index (its channels are c * s^N + index), taps T,
        space, x's cell of the space's first position, tap origin), or
        None where the pass runs over the whole polyphase grid instead: other padding, no stride, fewer
        than MIN_ROWS channels a phase, or where the phases save under PHASE_MIN_SAVING multiply-adds
        each (a pass per phase has its own packing, plan and hand-off: 16 phases of a 4-stride 11x11
        layer on 64^2 saved 1 M each and took 1.5x the time) or under PHASE_MIN_FRACTION of the whole
        grid's pass with its scatter (a phase has a phase's channels, the whole grid all of them: fewer
        vectors of rows per block, more loads per multiply-add; a 1-D 9-tap stride-2 layer saved 6 % and
        took 1.09x the time, the 4-stride layer 25 %). x's cell s m + r - lo gets
        sum_t W[r + s t] gy[m - t]: per axis T_r = ceil((k - r) / s) taps, not the polyphase filters'
        ceil(k / s) (zeros past T_r), over the grid rows m of x's cells only (``direct_kernel.phase_fold``),
        not the whole grid with its ring: a 9x9 stride-2 layer on 64^2 computes 85 M multiply-adds, not
        133 M (PyTorch's count). The space is gy's grid (``gx_grid``): its taps read T_r of the grid's
        ceil(k / s) from ``tap origin`` on."""
        red = self.red
        phases = self._phase_list()
        if phases is None:
            return None
        whole = self._grid_gx_madds()
        saved = whole - self._phase_madds(red.out_channels, True)
        scatter = self._cell_by_cell_madds()
        return phases if saved >= max(len(phases) * PHASE_MIN_SAVING, PHASE_MIN_FRACTION * (whole + scatter)) else None

    def _grid_gx_madds(self) -> int:
        """The multiply-adds of the input gradient over the whole (polyphase) grid: every tap everywhere."""
        red = self.red
        return self.geom.groups * self.gx_grid.positions * red.out_channels * self.gx_grid.taps * red.channels

    def _cell_by_cell_madds(self) -> int:
        """What writing gx cell by cell costs in multiply-adds (``costs.CELL_BY_CELL_MADDS`` a cell) where a
        stride along the last axis interleaves the phases in x's rows; 0 without one."""
        return math.prod(self.geom.in_shape) * costs.CELL_BY_CELL_MADDS if self.red.stride[-1] > 1 else 0

    @_per_shape
    def _phase_list(self):
        """``_phases``' list whatever it saves, or None where the layer has no such phases."""
        geom, red, grid = self.geom, self.red, self.gx_grid
        s = red.stride
        if (geom.padding_mode != "zeros" or all(v == 1 for v in s) or self._input_space() is not None
                or not self._compiled(red.channels // math.prod(s))):
            return None
        fold = direct_kernel.phase_fold(s, red.read, tuple(lo for lo, _ in geom.pads), geom.spatial, red.qx,
                                        geom.in_shape[1] * math.prod(geom.spatial))
        phases = []
        for ph, r in enumerate(itertools.product(*(range(v) for v in s))):
            T = tuple(-(-(e - rd) // sd) for e, rd, sd in zip(geom.dilated_kernel, r, s))
            first, stop = fold.first_q[ph], fold.stop_q[ph]
            if min(T) <= 0 or (stop <= first).any():
                continue   # no tap, or no cell of x: those cells stay zero
            space = Space((geom.batch,) + tuple(int(v) for v in stop - first), (math.prod(red.qx),) + grid.strides,
                          int(first @ np.array(grid.strides)))
            cell = int(fold.phase_off[ph] + first @ fold.pos_step)   # x's cell of the space's first position
            origin = sum((q - t) * st for q, t, st in zip(red.qk, T, grid.steps))
            phases.append((ph, T, space, cell, origin))
        return tuple(phases) or None

    def _phase_covers(self) -> bool:
        """Whether the phases of ``_phases`` write every cell of x (else gx starts as zeros)."""
        return sum(space.count for _, _, space, _, _ in self._phase_list()) == self.geom.batch * math.prod(
            self.geom.spatial)

    @_per_shape
    def _phase_madds(self, O: int, finite: bool) -> int:
        """The multiply-adds of ``_compiled_phase_passes`` (its plans' blocks times the rows they sum; the
        skipped taps not counted; ``finite``: ``_finite_filters()``)."""
        grid, C = self.gx_grid, self.red.channels // math.prod(self.red.stride)
        total = 0
        for _, T, space, _, origin in self._phase_list():
            _, plan = _live_plan(space, grid.steps, T, self._gy_grid_cells(), O, C, self.x.dtype.itemsize,
                                 grid.max_off, self._phase_live(T) if finite else None, origin)
            total += _plan_rows(plan)
        return self.geom.groups * total * C

    def _phase_live(self, T: tuple) -> Live:
        """``Live`` of gy on its grid for a phase pass with taps T (read from m - T + 1 on)."""
        N = self.geom.ndim
        return Live(self.red.qx, (0,) * N, self.geom.out_spatial, tuple(t - 1 for t in T), (1,) * N)

    def _compiled_phase_passes(self, grid, G, O, threads=None, deferred=False):
        """gx (b, c_I, d...) by one compiled output pass per phase of x (``_phases``), each writing its
        cells of x in place (``stride`` apart along the last axis); the phases' parts run together, part
        t of every phase on thread t. With ``deferred``, (gx, parts, finish)."""
        geom, red, N = self.geom, self.red, self.geom.ndim
        nph = math.prod(red.stride)
        C = red.channels // nph
        plane = math.prod(geom.spatial)
        gx = (np.empty if self._phase_covers() else np.zeros)(geom.in_shape, G.dtype)
        flat = gx.reshape(-1)
        xst = tuple(math.prod(geom.spatial[d + 1:]) for d in range(N))
        strides = (geom.in_shape[1] * plane,) + tuple(s * st for s, st in zip(red.stride, xst))
        Wd = self._gx_filters()                                    # (g, O, C * nph, qk...): channel c * nph + r
        finite = self._finite_filters()
        phases = self._phases()
        threads = threads or pass_threads(self._phase_madds(O, finite) + self._cell_by_cell_madds())   # scatter too
        runs = []
        for ph, T, space, cell, origin in phases:
            taps = tuple(slice(t - 1, None, -1) if t > 1 else slice(0, 1) for t in T)   # the first T, flipped
            Wadj = Wd[(slice(None), slice(None), slice(ph, None, nph)) + taps].swapaxes(1, 2)   # (g, C, O, T...)
            runs.append(self._compiled_outputs(
                grid, G, Wadj, space, O, dest=(flat[cell:], strides, space.dims, (0,) * (N + 1), plane, C * plane,
                                                red.stride[-1]),
                threads=threads, deferred=True, live=self._phase_live(T) if finite else None, taps=T,
                tap_origin=origin))
        count = max(len(parts) for parts, _ in runs)
        parts = [functools.partial(_call_all, [p[t] for p, _ in runs if t < len(p)]) for t in range(count)]

        def finish(_results):
            return None

        if deferred:
            return gx, parts, finish
        run_parallel(lambda part: part(), parts, blas=False)
        return gx

    # ---- forward and backward ---------------------------------------------------------
    def grid_input(self):
        """A (g, C, b * prod(q) + max_off): the forward reduction's input, batch inside the channels."""
        if self._A is None:
            xp, geom, red, grid, N = self.xp, self.geom, self.fw, self.fw_grid, self.geom.ndim
            g, C, b = geom.groups, red.channels, geom.batch
            if geom.padding_mode == "zeros" and all(s == 1 for s in red.stride):
                # x straight into its place on the zero grid: one copy, no padded intermediate
                cells = grid.positions + grid.max_off + self._forward_tail()
                rows, lows = _x_rows(geom, red), tuple(lo for lo, _ in geom.pads)
                A = xp.empty((g, C, cells), self.x.dtype)
                grid_place.put_on_grid(A.reshape(g * C, cells), self.x, 0, red.qx, lows, rows)
            elif geom.padding_mode == "zeros" and layout.phase_copies_pay(red.stride):
                # polyphase: each phase of x straight into its channels of the zero grid, one pass
                # over x (the padded, split copies of red.inputs were two more)
                A = xp.zeros((g, C, grid.positions + grid.max_off + self._forward_tail()), self.x.dtype)
                c = C // math.prod(red.stride)                               # x's channels per group
                phases = A[:, :, :grid.positions].reshape((g, c) + red.stride + (b,) + red.qx)
                xv = self.x.reshape((b, g, c) + geom.spatial).transpose((1, 2, 0) + tuple(range(3, 3 + N)))
                lows = tuple(lo for lo, _ in geom.pads)
                for r, cells, places in layout.phase_windows(red.stride, red.read, lows, geom.spatial):
                    phases[(slice(None),) * 2 + r + (slice(None),) + cells] = xv[(slice(None),) * 3 + places]
            else:
                a = red.inputs(self.x, 0, b)                                  # (b, g, C, q...)
                A = xp.empty((g, C, grid.positions + grid.max_off + self._forward_tail()), a.dtype)
                A[:, :, grid.positions:] = 0
                A[:, :, :grid.positions].reshape((g, C, b) + red.qx)[...] = a.transpose(
                    (1, 2, 0) + tuple(range(3, 3 + N)))
            self._A = A
        return self._A

    def _gx_filters(self):
        """The input gradient's reduction of W, (g, c_O/g, C, k'...), made once a call (a strided layer's
        polyphase filters: dilated, padded, split, 40-70 us on a small layer)."""
        if self._red_filters is None:
            self._red_filters = self.red.filters(self.W)
        return self._red_filters

    def _finite_filters(self) -> bool:
        """Whether W is all finite: only then may a tap that reads zero padding be skipped (0 * inf is
        NaN, and PyTorch and JAX give NaN there). One pass over W per call, a few microseconds."""
        if self._W_finite is None:
            self._W_finite = bool(np.isfinite(self.W).all())
        return self._W_finite

    @_per_shape
    def _input_live(self):
        """``Live`` of the forward's grid where ``grid_input`` puts x on a zero grid unsplit (zero
        padding, no polyphase split), else None: the padding's rows hold zeros."""
        geom, red, grid = self.geom, self.fw, self.fw_grid
        if geom.padding_mode != "zeros" or any(s != 1 for s in red.stride):
            return None
        lo = tuple(p for p, _ in geom.pads)
        dil = tuple(st // s for st, s in zip(grid.steps, grid.strides))
        hi = tuple(a + r for a, r in zip(lo, _x_rows(geom, red)))
        return Live(red.qx, lo, hi, (0,) * geom.ndim, dil)

    def _weight_live(self, space, gy):
        """``Live`` of x on the forward's grid for the weight pass over ``space`` when its runs have
        axes outside them (a whole-axis space's runs span its last two axes: 3-D and up) and gy is
        finite (gy * 0 is NaN, and JAX gives NaN in gW there), else None."""
        live = self._input_live()
        if live is None or len(space.coalesced().dims) < 3 or not bool(np.isfinite(gy).all()):
            return None
        return live

    def forward(self, bias=None):
        """y: (n, c_O, o...) + bias (c_O,) if given: the compiled pass adds it as it writes y."""
        y, added = self._forward(bias)
        if bias is not None and not added:
            y += bias.reshape((1, -1) + (1,) * self.geom.ndim)
        return y

    forward.adds_bias = True   # the Engine protocol's optional hook (a subclass's own forward has not)

    def _forward(self, bias):
        """(y, whether bias is in it): the compiled pass adds it, the others leave it to ``forward``."""
        if self.pointwise:
            return pointwise.forward(self.xp, self.geom, self.x, self.W), False
        xp, geom, red, grid, N = self.xp, self.geom, self.fw, self.fw_grid, self.geom.ndim
        A = self.grid_input()
        g, C, O = geom.groups, red.channels, red.out_channels
        Wmat = xp.ascontiguousarray(red.filters(self.W)).reshape(g, O, C * grid.taps)
        if self._compiled(O):
            # y written in place by the threads that compute it
            y = xp.empty(geom.out_shape, A.dtype)
            plane = math.prod(geom.out_spatial)
            strides = (g * O * plane,) + tuple(math.prod(geom.out_spatial[d:]) for d in range(1, N + 1))
            self._compiled_outputs(grid, A, Wmat, self._forward_space(), C, dest=(
                y.reshape(-1), strides, (geom.batch,) + geom.out_spatial, (0,) * (N + 1), plane, O * plane),
                bias=bias, live=self._input_live() if self._finite_filters() else None)
            return y, True
        if self.host:
            space = self._output_space()
            Y = self._out_pass(grid, A, Wmat, space, C)[..., :geom.out_spatial[-1]]
        else:
            Y = self._out_pass(grid, A, Wmat, self._grid_space(grid), C).reshape((g, O, geom.batch) + red.qx)
            Y = Y[(slice(None),) * 3 + tuple(slice(0, o) for o in geom.out_spatial)]
        y = xp.empty(geom.out_shape, A.dtype)
        y.reshape((geom.batch, g, O) + geom.out_spatial)[...] = Y.transpose((2, 0, 1) + tuple(range(3, 3 + N)))
        return y, False

    def backward(self, gy, need_x: bool, need_W: bool):
        """(gx, gW) for gy (n, c_O, o...); an entry not asked for is None."""
        if not (need_x or need_W):
            return None, None
        # BLAS single-threaded once for both passes (each pass's own is then a count), unless both
        # run compiled: they call no BLAS
        compiled = self.host and not self.pointwise and all(
            self._compiled(rows) for rows, needed in ((self.red.out_channels, need_W), (self.red.channels, need_x))
            if needed)
        with contextlib.nullcontext() if compiled else backend._single_threaded_blas():
            return self._backward(gy, need_x, need_W)

    def _backward(self, gy, need_x: bool, need_W: bool):
        if self.pointwise:
            return pointwise.backward(self.xp, self.geom, self.x, self.W, gy, need_x, need_W)
        xp, geom, red, N = self.xp, self.geom, self.red, self.geom.ndim
        g, C, O, b = geom.groups, red.channels, red.out_channels, geom.batch
        gy_grouped = gy.reshape((b, g, O) + geom.out_spatial).transpose((1, 2, 0) + tuple(range(3, 3 + N)))
        same_grid = all(s == 1 for s in self.fw.out_stride)   # then fw and red share one grid
        G = None
        if need_x or same_grid:
            # G (g, O, max_off + b * prod(q)): gy at its (polyphase) grid positions, zeros elsewhere and in front
            cells, front = self._gy_grid_cells(), self.gx_grid.max_off
            G = xp.empty((g, O, cells), gy.dtype)
            grid_place.put_on_grid(G.reshape(g * O, cells), gy, front, red.qx, (0,) * N, geom.out_spatial)
        gx = gW = None
        fw = self.fw
        w_live = None
        if need_W:
            if not self.host:
                w_space, rhs, on_grid = self._grid_space(self.fw_grid), G, True
            elif same_grid:
                w_space, rhs, on_grid = self._output_space(), G, True
                w_live = self._weight_live(w_space, gy)
            else:   # strided: gy in the output space's own layout (zeros on a last-axis ring it includes)
                w_space = self._output_space()
                rhs = xp.zeros((g, O) + w_space.dims, gy.dtype)
                rhs[..., :geom.out_spatial[-1]] = gy_grouped
                rhs, on_grid = rhs.reshape(g, O, w_space.count), False
        if need_x:
            grid = self.gx_grid
            flip = (slice(None),) * 3 + (slice(None, None, -1),) * N
            Wadj = self._gx_filters()[flip].swapaxes(1, 2)   # (g, C, O, k...): a view, packed once where it is used
            inner = self._input_space()
            space = inner or self._grid_space(grid)
            in_place = self._compiled(C) and (inner is not None or (
                geom.padding_mode == "zeros" and any(s != 1 for s in red.stride)))
            if need_W and in_place and self._compiled(O):
                gx_madds = (self._input_grad_madds(inner, O, self._finite_filters()) if inner is not None
                            else self._phase_madds(O, self._finite_filters()) if self._phases() is not None
                            else self._grid_gx_madds())
                if inner is None:   # gx written cell by cell where a stride apart
                    gx_madds += self._cell_by_cell_madds()
                split = pass_split(g * w_space.count * fw.channels * self.fw_grid.taps * O, gx_madds,
                                   backend.num_threads())
                if split:
                    weights = (self.fw_grid, self.grid_input(), w_space, fw.channels, rhs, on_grid,
                               self.gx_grid.max_off, w_live)
                    return self._both_gradients(split, weights, (grid, G, Wadj, inner, space, O))
        if need_W:
            gWm = self._run_blocks(self.fw_grid, self.grid_input(), None, w_space, fw.channels, acc_rhs=rhs,
                                   rhs_on_grid=on_grid, rhs_front=self.gx_grid.max_off, live=w_live)   # (g, O, C * taps)
            gW = fw.weight_grad(gWm.reshape((g * O, fw.channels) + fw.qk))
        if need_x:
            if in_place:   # gx written in place by the threads
                return self._compiled_gx(grid, G, Wadj, inner, space, O), gW
            if inner is None and self._compiled(C):
                # the whole (polyphase) grid, written channels-first by the threads: input_grad's
                # phase copies then read contiguous rows (2d-3x3-s2: they read the channels-last
                # result across channels, a quarter of the call)
                gA = np.empty((g, C, space.count), G.dtype)
                self._compiled_outputs(grid, G, Wadj, space, O, dest=(
                    gA.reshape(-1), (1,), (space.count,), (0,), space.count, C * space.count))
                return red.input_grad(gA.reshape((g * C, b) + red.qx).swapaxes(0, 1)), gW
            gA = self._out_pass(grid, G, Wadj, space, O)
            if inner is not None:
                gx = self._input_from_space(gA, inner)
            else:   # (b, g*C, q...) as a view: input_grad crops and copies it once (no transposed copy first)
                gx = red.input_grad(gA.reshape((g * C, b) + red.qx).swapaxes(0, 1))
        return gx, gW


# The calling thread's part of a pass is longer by the work of LEAD_S seconds (at LEAD_RATE multiply-adds
# a second on one thread): it starts first, as the pool thread's wake-up takes 20-40 us, and if it ends
# first it sleeps until the pool thread's part is done and is woken (30-60 us more on these machines);
# ending last it finds the other part done and goes on.
LEAD_S = 6e-5
LEAD_RATE = 5e10


def _cuts(count: int, threads: int, madds: int, deferred: bool) -> list:
    """Where ``count`` units of a pass of ``madds`` multiply-adds are cut into ``threads`` parts: evenly,
    but for the first part's lead (``LEAD_S``) when the parts run now, the first on the calling thread
    (deferred parts run beside another pass's, whose first part it is)."""
    if threads <= 1:
        return [0, count]
    cuts = [count * t // threads for t in range(threads + 1)]
    if not deferred and madds > 0:
        lead = min(int(count * LEAD_S * LEAD_RATE / madds), (cuts[2] - cuts[1]) // 2)
        cuts[1] += lead
    return cuts


def _call_all(calls: list) -> None:
    for call in calls:
        call()


def _run_or_defer(work, parts: list, finish, deferred: bool):
    """finish([work(p) for p in parts]) run on the thread pool now, or (callables, finish) to run later
    (the compiled passes: no BLAS in them, so BLAS's thread count is left as it is)."""
    if deferred:
        return [functools.partial(work, p) for p in parts], finish
    return finish(run_parallel(work, parts, blas=False))


# ---- the compiled passes' plans: arrays of offsets, built once per layer shape -------------------------

def _tap_offsets(steps: tuple, qk: tuple, plane: int, K: int) -> np.ndarray:
    """koff (K * taps,) int64: the src cell of (channel c, tap t) relative to a position, c-major
    like the filters' (C, k_1..k_N) columns."""
    offs = np.array([sum(t * st for t, st in zip(tap, steps)) for tap in itertools.product(*(range(k) for k in qk))],
                    np.int64)
    return (np.arange(K, dtype=np.int64)[:, None] * plane + offs).reshape(-1)


class _OutputPlan(NamedTuple):
    blocking: direct_kernel.Blocking
    P: int
    L: int            # positions per run (the coalesced space's last axis)
    per_run: int      # micro-blocks per run
    bases: np.ndarray  # (blocks,) the src cell of each micro-block's first position
    koff: np.ndarray
    loop: object
    kind: np.ndarray         # (blocks,) each block's kind: which chunks of (channel, tap) rows it sums
    chunk_ptr: np.ndarray    # (kinds + 1,) kind i's chunks are chunk_ptr[i] .. chunk_ptr[i + 1] - 1
    chunk_start: np.ndarray  # (chunks,) a chunk's first row
    chunk_len: np.ndarray    # (chunks,) its rows
    edges: tuple = ()        # (loop, blocks) per edge window (``_edge_blocks``); kind gives those blocks no rows
    live_kind: np.ndarray | None = None   # (blocks,) the kinds the edge loops sum (kind's, where no edges)
    share: np.ndarray | None = None       # (blocks,) the (position, tap) pairs a block sums, of P * taps


class Live(NamedTuple):
    """Where an output pass's source grid holds data (zeros elsewhere), per spatial axis: the grid
    (qx), the data's first and end rows (lo, hi) in grid coordinates, the rows a tap's read is shifted
    back by (``shift``: the front of a gradient grid, (k - 1) * dilation) and the taps' spacing."""
    qx: tuple
    lo: tuple
    hi: tuple
    shift: tuple
    dil: tuple


@functools.lru_cache(maxsize=64)
def _output_plan(space: Space, steps: tuple, qk: tuple, plane: int, K: int, rows: int, itemsize: int,
                 max_off: int, live: Live | None = None, tap_origin: int = 0) -> _OutputPlan:
    """How an output pass runs on the micro-kernels (a training step makes a new engine per call;
    these arrays are the same every step). With ``live``, each run sums only the taps that read data
    on its axes outside the run (``_live_chunks``). Tap offsets start ``tap_origin`` cells on (at most
    ``max_off`` with the farthest tap)."""
    sp = space.coalesced()
    L, ps = sp.dims[-1], sp.strides[-1]
    blocking = direct_kernel.Blocking(rows, itemsize)
    P = direct_kernel.micro_blocks(L, blocking.P)
    per_run = -(-L // P)
    run_bases = direct_kernel.runs_of(sp.dims, sp.strides, sp.origin)
    bases = (run_bases[:, None] + np.arange(per_run, dtype=np.int64) * (P * ps)).reshape(-1)
    if int(bases[-1]) + (P - 1) * ps + max_off >= plane:   # no room for the padded blocks
        raise AssertionError("direct engine: the grid lacks the compiled passes' tail")
    loop = direct_kernel.output_loop(P, blocking.V, blocking.VW, ps, itemsize)
    merged = space.merged_axes()
    kind, ptr, start, length = _live_chunks(run_bases, len(space.dims) - merged - 1, qk, K, live)
    plan = _OutputPlan(blocking, P, L, per_run, bases, _tap_offsets(steps, qk, plane, K) + tap_origin, loop,
                       np.repeat(kind, per_run), ptr, start, length)
    if (live is not None and merged == 1 and tap_origin == 0 and 1 < qk[-1] <= EDGE_MAX_TAPS
            and space.count * K * math.prod(qk) * rows >= EDGE_MIN_MADDS and edge_kernel.available()):
        plan = _edge_blocks(plan, run_bases, ps, steps[-1], qk[-1], itemsize, live)
    return plan


# Border micro-blocks of the last axis get their own compiled blocks (``edge_kernel``) on passes of at
# least EDGE_MIN_MADDS multiply-adds (each window is one more loop to compile, 0.5-1 s, then Numba's
# disk cache, which a small pass would not win back) where they skip at least EDGE_MIN_SAVING of the
# pass's (position, tap) pairs: an edge block runs its taps in groups of kw, at the plain blocks' rate
# for kw >= 7 and 2 % slower for kw = 3 (3x3 64 channels on 8 x 32^2, every block an edge block with
# nothing skipped), where a 3x3 'same' layer skips 2-3 %.
EDGE_MIN_MADDS = 1 << 22
EDGE_MIN_SAVING = 0.04
# An edge block unrolls its kw taps by P positions: a 1-D layer's 257 taps took minutes to compile. Wider
# kernels run on the FFT engine anyway.
EDGE_MAX_TAPS = 15


def _first_column(run_bases: np.ndarray, live: Live) -> int | None:
    """The last-axis grid column every run starts at, less ``live``'s shift (tap t of position j then reads
    column first + j * ps + t * dl), or None where the runs start at different columns."""
    cols = np.unravel_index(run_bases, (int(run_bases.max()) // math.prod(live.qx) + 1,) + tuple(live.qx))[-1]
    if len(cols) == 0 or (cols != cols[0]).any():
        return None
    return int(cols[0]) - live.shift[-1]


def _edge_blocks(plan: _OutputPlan, run_bases: np.ndarray, ps: int, dl: int, kw: int, itemsize: int,
                 live: Live) -> _OutputPlan:
    """``plan`` with its micro-blocks at a zero-padded border of the last axis summed by edge loops
    (``edge_kernel``): each position only the last-axis taps that read data. Positions ``ps`` cells
    apart, last-axis taps ``dl``; the runs must all start at one column (they do: a space is a box)."""
    first = _first_column(run_bases, live)
    if first is None:
        return plan
    wins = edge_kernel.windows(first, plan.per_run, plan.P, ps, kw, dl, live.lo[-1], live.hi[-1])
    skipped = sum(plan.P * kw - edge_kernel.live_pairs(plan.P, ps, kw, dl, a, e) for _, a, e in wins)
    if skipped < EDGE_MIN_SAVING * plan.per_run * plan.P * kw:   # of a run's pairs (every run has the same)
        return plan
    b = plan.blocking
    kind = plan.kind.copy()
    empty = len(plan.chunk_ptr) - 1   # a kind of no chunks: the main loop writes zeros there
    share = np.ones(len(kind))
    edges = []
    for i, a, e in wins:
        blocks = np.arange(len(run_bases), dtype=np.int64) * plan.per_run + i
        kind[blocks] = empty
        share[blocks] = edge_kernel.live_pairs(plan.P, ps, kw, dl, a, e) / (plan.P * kw)
        edges.append((edge_kernel.edge_loop(plan.P, b.V, b.VW, ps, itemsize, kw, dl, a, e), blocks))
    return plan._replace(kind=kind, chunk_ptr=np.append(plan.chunk_ptr, plan.chunk_ptr[-1]), edges=tuple(edges),
                         live_kind=plan.kind, share=share)


# An output pass with taps to skip (``Live``) runs shorter runs (rows, or planes, of a contiguous box)
# where they compute under this fraction of the multiply-adds the longest runs do: the taps that read
# only padding are skipped per run, on the axes outside it. A valid 3-D layer's input gradient is one
# contiguous box (x fills its grid), whose one long run skips nothing; as rows, 7^3 on 16^3 computes
# 0.39x the multiply-adds.
SHORTER_RUNS_BELOW = 0.9

# A strided layer's input gradient runs phase by phase of x (``DirectConv._phases``) where that saves at
# least this many multiply-adds a phase, and this fraction of the whole polyphase grid's pass (with the
# scatter's cost, ``costs.CELL_BY_CELL_MADDS``). Measured, fwd + bwd, phases / whole grid: 2-D 9x9 stride
# 2 on 4 x 16 x 64^2 (saves 32 %) 0.90x, 7x7 on 2 x 16 x 32^2 (42 %) 0.86x, 3x3 on 8 x 32 x 64^2 (33 %)
# 0.92x, on 8 x 32 x 32^2 (35 %) 1.02x; 3-D 7^3 on 2 x 8 x 32^3 0.76x, 5^3 0.80x.
PHASE_MIN_SAVING = 1 << 21
PHASE_MIN_FRACTION = 0.3


@functools.lru_cache(maxsize=64)
def _live_plan(space: Space, steps: tuple, qk: tuple, plane: int, K: int, rows: int, itemsize: int,
               max_off: int, live: Live | None = None, tap_origin: int = 0) -> tuple:
    """(space, plan): ``_output_plan`` of ``space`` cut into the runs (``Space.run_choices``) that compute
    the fewest multiply-adds with ``live``'s taps skipped, longer runs unless shorter ones compute under
    SHORTER_RUNS_BELOW of theirs; without ``live``, the longest runs."""
    choices = space.run_choices() if live is not None else [space]
    best = None
    for runs in choices:
        plan = _output_plan(runs, steps, qk, plane, K, rows, itemsize, max_off, live, tap_origin)
        if best is None or _plan_rows(plan) < SHORTER_RUNS_BELOW * _plan_rows(best[1]):
            best = (runs, plan)
    return best


def _plan_rows(plan: _OutputPlan) -> int:
    """Positions times the (channel, tap) rows an output plan sums for them (its micro-blocks padded
    to P positions each, the skipped taps not counted): its multiply-adds per output row."""
    ends = np.concatenate(([0], np.cumsum(plan.chunk_len)))
    per_kind = ends[plan.chunk_ptr[1:]] - ends[plan.chunk_ptr[:-1]]   # rows summed by a block of each kind
    if plan.edges:
        return int(round(plan.P * float((per_kind[plan.live_kind] * plan.share).sum())))
    return plan.P * int(per_kind[plan.kind].sum())


def _live_chunks(run_bases: np.ndarray, outer: int, qk: tuple, K: int, live: Live | None) -> tuple:
    """(kind per run, chunk_ptr, chunk_start, chunk_len) for ``_output_loop``: runs whose first
    ``outer`` spatial axes (those outside the run, constant along it) read only zeros for some taps
    skip those taps' rows (c, tap) of every channel c; the rest are summed in chunks of consecutive
    rows. A 3-D 5^3 layer padded by 2 on 24^3 does 90 % of the multiply-adds, 4-D 3^4 on 12^4 84 %
    (oneDNN skips them too). Without ``live`` (data everywhere, or not known), one chunk of all rows."""
    taps = math.prod(qk)
    if live is None or outer <= 0:
        return (np.zeros(len(run_bases), np.int64), np.array([0, 1], np.int64), np.zeros(1, np.int64),
                np.array([K * taps], np.int64))
    kind, masks = _live_kinds(run_bases, outer, qk, live)
    ptr, starts, lengths = [0], [], []
    for mask in masks:
        rows_alive = np.tile(mask, K)   # rows k = c * taps + tap
        edges = np.flatnonzero(np.diff(np.concatenate(([0], rows_alive.astype(np.int8), [0]))))
        starts += list(edges[0::2])
        lengths += list(edges[1::2] - edges[0::2])
        ptr.append(len(starts))
    return kind, np.array(ptr, np.int64), np.array(starts, np.int64), np.array(lengths, np.int64)


def _live_kinds(run_bases: np.ndarray, outer: int, qk: tuple, live: Live) -> tuple:
    """(kind per run, masks (kinds, taps) bool): which taps read data on a run's first ``outer`` spatial
    axes (``outer`` >= 1), one mask per kind of run (a mixed-radix code of each axis's pattern)."""
    N = len(qk)
    outer = min(outer, N)
    coords = np.unravel_index(run_bases, (int(run_bases.max()) // math.prod(live.qx) + 1,) + tuple(live.qx))
    # per axis, the taps alive at each grid row (a few patterns: the borders' and the inside's); a
    # run's kind is its axes' patterns together (per axis, not per run: 65 k runs of 27 taps took 0.5 s)
    patterns, kind = [], np.zeros(len(run_bases), np.int64)
    for d in range(outer):
        rows = np.arange(live.qx[d])[:, None] + np.arange(qk[d])[None, :] * live.dil[d] - live.shift[d]
        axis_patterns, axis_kind = np.unique((rows >= live.lo[d]) & (rows < live.hi[d]), axis=0, return_inverse=True)
        patterns.append(axis_patterns)
        kind = kind * len(axis_patterns) + axis_kind.reshape(-1)[coords[1 + d]]
    used, kind = np.unique(kind, return_inverse=True)
    masks = np.ones((len(used),) + tuple(qk), bool)
    for i, code in enumerate(used):
        for d in range(outer - 1, -1, -1):   # the mixed-radix code, last axis first
            code, which = divmod(int(code), len(patterns[d]))
            masks[i] &= patterns[d][which].reshape((1,) * d + (qk[d],) + (1,) * (N - d - 1))
    return kind.reshape(-1).astype(np.int64), masks.reshape(len(used), -1)


class _WeightPlan(NamedTuple):
    blocking: direct_kernel.Blocking
    space: Space       # coalesced
    koff: np.ndarray   # the broadcast rows' offsets, padded to whole blocks of R with offset 0
    roff: np.ndarray   # the gathered columns' offsets
    seg_base: np.ndarray
    seg_row: np.ndarray
    seg_len: np.ndarray
    seg_kind: np.ndarray   # (segments,) which spans of rows a segment broadcasts: its run's kind
    kind_ptr: np.ndarray   # (kinds + 1,) kind i's spans are kind_ptr[i] .. kind_ptr[i + 1] - 1
    span_lo: np.ndarray    # (spans,) a span's first row and its end (multiples of R)
    span_hi: np.ndarray
    tap_major: bool        # koff's rows are (tap, channel) (with spans), else (channel, tap)
    row_len: int           # segments are whole rows of row_len positions, of which the first keep are
    keep: int              # summed (0, 0: every position)
    loop: object
    win_lo: np.ndarray     # (blocks of R rows,) the positions of each row a block sums: win_lo .. win_hi - 1
    win_hi: np.ndarray     # (``_row_windows``; 0 .. a large number: all)


# A tap-major weight plan takes blocks of R rows with R dividing the channels (at least MIN_TAP_BLOCK), so
# that no block straddles two taps. With 32 channels, blocks of 8 instead of 12 sum 3-D 5^3 layers' weight
# gradients in 0.94-0.98x the time (the FMA units run as fast on 8 rows as on 12: 2-D 7x7 64 ch 0.995).
MIN_TAP_BLOCK = 4


@functools.lru_cache(maxsize=64)
def _weight_plan(space: Space, steps: tuple, qk: tuple, plane: int, K: int, rows: int, itemsize: int,
                 rhs_cells: int, columns: bool, live: Live | None = None, keep: int = 0) -> _WeightPlan:
    """How a weight-gradient pass runs on the micro-kernels: runs cut into segments of at most
    SEGMENT positions, rhs (gy, rows of ``rhs_cells``) row r * L + i for position i of run r. Rows
    first the grid's (channel, tap) columns are broadcast and gy's rows gathered; columns first
    (``direct_kernel.columns_first``) the other way round. With ``live`` (rows first), each run
    broadcasts only the blocks of R rows that hold a tap reading data on the axes outside it
    (``_live_kinds``): the rows then go tap by tap ((tap, channel): a tap's rows together, so a dead
    tap is whole blocks), and ``finish`` puts the sums back in (channel, tap) order. With ``keep`` (a
    whole-axis space whose rows' positions past ``keep`` read zeros of gy: its ring), segments are whole
    rows and only their first ``keep`` positions are summed (4-D 3^4 on 8^4: 8 of 10)."""
    sp = space.coalesced()
    L, ps = sp.dims[-1], sp.strides[-1]
    row_len = space.dims[-1] if 0 < keep < space.dims[-1] <= direct_kernel.SEGMENT else 0
    seg = direct_kernel.SEGMENT // row_len * row_len if row_len else direct_kernel.SEGMENT   # whole rows
    run_bases = direct_kernel.runs_of(sp.dims, sp.strides, sp.origin)
    starts = np.arange(0, L, seg, dtype=np.int64)
    seg_base = (run_bases[:, None] + starts * ps).reshape(-1)
    seg_row = (np.arange(len(run_bases), dtype=np.int64)[:, None] * L + starts).reshape(-1)
    seg_len = np.tile(np.minimum(L - starts, seg), len(run_bases))
    outer = len(space.dims) - space.merged_axes() - 1
    tap_major = live is not None and not columns and outer > 0
    taps = _tap_offsets(steps, qk, plane, K)
    if tap_major:
        taps = taps.reshape(K, -1).T.reshape(-1)
    gy_rows = np.arange(rows, dtype=np.int64) * rhs_cells
    broadcast, gathered = (gy_rows, taps) if columns else (taps, gy_rows)
    blocking = direct_kernel.Blocking(len(gathered), itemsize)
    R = blocking.R
    if tap_major:   # blocks of rows within one tap: a dead tap is whole blocks, a block's row window exact
        R = blocking.R = next((r for r in range(R, MIN_TAP_BLOCK - 1, -1) if K % r == 0), R)
    koff = np.zeros(-(-len(broadcast) // R) * R, np.int64)
    koff[:len(broadcast)] = broadcast
    if tap_major:
        run_kind, masks = _live_kinds(run_bases, outer, qk, live)
        kind_ptr, span_lo, span_hi = [0], [], []
        for mask in masks:
            alive = np.zeros(len(koff), bool)
            alive[:len(broadcast)] = np.repeat(mask, K)   # rows tap * K + c
            blocks = alive.reshape(-1, R).any(axis=1).astype(np.int8)
            edges = np.flatnonzero(np.diff(np.concatenate(([0], blocks, [0]))))
            span_lo += list(edges[0::2] * R)
            span_hi += list(edges[1::2] * R)
            kind_ptr.append(len(span_lo))
        seg_kind = np.repeat(run_kind, len(starts))
    else:
        seg_kind, kind_ptr, span_lo, span_hi = np.zeros(len(seg_base), np.int64), [0, 1], [0], [len(koff)]
    loop = direct_kernel.weight_loop(R, blocking.V, blocking.VW, itemsize, int(not columns))
    win_lo, win_hi = np.zeros(len(koff) // R, np.int64), np.full(len(koff) // R, 1 << 62, np.int64)
    if tap_major and (row_len or (space.merged_axes() == 1 and L <= seg)):   # segments start at a row's start
        _row_windows(win_lo, win_hi, run_bases, ps, steps[-1], qk, K, R, live)
    return _WeightPlan(blocking, sp, koff, gathered, seg_base, seg_row, seg_len, seg_kind,
                       np.array(kind_ptr, np.int64), np.array(span_lo, np.int64), np.array(span_hi, np.int64),
                       tap_major, row_len, keep if row_len else 0, loop, win_lo, win_hi)


def _row_windows(win_lo: np.ndarray, win_hi: np.ndarray, run_bases: np.ndarray, ps: int, dl: int, qk: tuple, K: int,
                 R: int, live: Live) -> None:
    """Fill (win_lo, win_hi) of a tap-major weight plan: the positions of a row (ps cells apart, every
    row starting at one column) whose read with the block's last-axis taps lands in the data; a block
    of R rows (tap * K + channel) that holds several taps sums the union of theirs (the kernel's
    border triangles, as ``edge_kernel`` skips them in the output passes)."""
    first = _first_column(run_bases, live)
    if first is None:
        return
    t = np.arange(qk[-1])
    lo = -((first + t * dl - live.lo[-1]) // ps)     # ceil((lo - first - t * dl) / ps)
    hi = -((first + t * dl - live.hi[-1]) // ps)
    tap_last = (np.arange(K * math.prod(qk)) // K) % qk[-1]   # row tap * K + c: its last-axis tap
    for b in range(-(-len(tap_last) // R)):
        taps = tap_last[b * R:(b + 1) * R]
        win_lo[b], win_hi[b] = max(int(lo[taps].min()), 0), int(hi[taps].max())


def _computed(space: Space, most: int) -> int:
    """Positions an output pass over ``space`` computes on the micro-kernels: each run (the
    coalesced last axis) padded to whole micro-blocks of at most ``most`` positions."""
    sp = space.coalesced()
    L = sp.dims[-1]
    P = direct_kernel.micro_blocks(L, most)
    return math.prod(sp.dims[:-1]) * -(-L // P) * P


@functools.lru_cache(maxsize=64)
def _destinations(space: Space, strides: tuple, limits: tuple, shifts: tuple, P: int, per_run: int,
                  step: int = 1) -> tuple:
    """``direct_kernel.destinations`` for a pass over ``space``, once per layer shape."""
    merged = space.merged_axes()
    return direct_kernel.destinations(space.dims, merged, strides, limits, shifts, P, per_run, step)

