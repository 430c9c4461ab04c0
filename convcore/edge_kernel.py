"""Output micro-blocks at a zero-padded border of the last axis: each position sums only the taps
that read data (oneDNN's left and right edge kernels).

An output pass (direct_kernel) runs along rows of the last axis in micro-blocks of P positions, and
skips the taps that read only zeros per run, on the axes outside it (``direct_conv._live_chunks``).
Along the row itself every position of a block sums every tap: near a border, tap t of position j
reads padding where j * ps + t * dl falls outside the data. That is a triangle of wasted
multiply-adds at each end of a row: 6 % of a 7x7 'same' layer's on 28^2, 10 % of a 5^3 layer's on
12^3, 37 % of a valid 7^3 layer's input gradient on 16^3 (gy on its grid: zeros in front and behind).

An edge block is compiled for its window [a, b) of offsets that read data (literals): the rows of
each (channel, outer taps) group are its kw last-axis taps, unrolled, and position j's multiply-add
with tap t is emitted only where a <= j * ps + t * dl < b. The pass's loop computes those blocks as
empty (zeros, no rows) and ``edge_loop`` writes them after, with their kind's chunks of rows (the
outer axes' skipped taps) as the main loop would have summed them.
"""
from __future__ import annotations

import functools
import threading

import numpy as np

from . import direct_kernel, numba_cache

_build_lock = threading.Lock()


def _edge_block_typer(typingctx, P, V, VW, ps, isz, kw, dl, a, b, src, w, koff, starts, lens, nchunks, out,
                      out_stride):
    """``direct_kernel._output_block_typer`` for an edge block: rows k in groups of kw (k0 = a chunk's
    start + g * kw, a chunk's length a multiple of kw), row k0 + t being last-axis tap t at koff[k0] + t *
    dl cells; position j (cells j * ps on) sums it only where a <= j * ps + t * dl < b."""
    from llvmlite import ir
    from numba import types
    sizes = direct_kernel._literals(P, V, VW, ps, isz, kw, dl, a, b)
    if sizes is None:
        return None
    P_, V_, VW_, ps_, itemsize, kw_, dl_, a_, b_ = sizes
    i64 = ir.IntType(64)
    sig = types.void(P, V, VW, ps, isz, kw, dl, a, b, *([types.intp] * 8))

    def codegen(context, builder, signature, args):
        src_a, w_a, koff_a, starts_a, lens_a, nchunks, out_a, stride = args[9:]
        vt, fma, sp, vp = direct_kernel._vector_ops(builder, ir, itemsize, VW_)
        src_p, w_p = builder.inttoptr(src_a, sp), builder.inttoptr(w_a, sp)
        koff_p, out_p = builder.inttoptr(koff_a, i64.as_pointer()), builder.inttoptr(out_a, sp)
        starts_p, lens_p = builder.inttoptr(starts_a, i64.as_pointer()), builder.inttoptr(lens_a, i64.as_pointer())
        zero = ir.Constant(vt, [0.0] * VW_)

        def group(k0, acc):
            new = list(acc)
            for t in range(kw_):
                live = [j for j in range(P_) if a_ <= j * ps_ + t * dl_ < b_]
                if not live:
                    continue
                k = builder.add(k0, ir.Constant(i64, t))
                # each tap's cell from koff, not koff[k0] + t * dl: with the addresses known equal, LLVM
                # would load each cell once for all the taps that read it and keep them all in registers
                # (spilling the accumulators: 1.13x slower than the plain blocks)
                cell = builder.gep(src_p, [builder.load(builder.gep(koff_p, [k]))])
                row = builder.gep(w_p, [builder.mul(k, ir.Constant(i64, V_ * VW_))])
                w_vec = [builder.load(builder.bitcast(builder.gep(row, [ir.Constant(i64, v * VW_)]), vp),
                                      align=itemsize) for v in range(V_)]
                for j in live:
                    s = direct_kernel._splat(builder, ir, builder.load(
                        builder.gep(cell, [ir.Constant(i64, j * ps_)])), vt)
                    for v in range(V_):
                        new[j * V_ + v] = builder.call(fma, [s, w_vec[v], new[j * V_ + v]])
            return new

        def chunk(i, acc):
            first = builder.load(builder.gep(starts_p, [i]))
            width = ir.Constant(i64, kw_)
            groups = builder.sdiv(builder.load(builder.gep(lens_p, [i])), width)
            return direct_kernel._counted_loop(
                builder, ir, groups, acc, lambda g, s: group(builder.add(first, builder.mul(g, width)), s))

        final = direct_kernel._counted_loop(builder, ir, nchunks, [zero] * (P_ * V_), chunk)
        for j in range(P_):
            for v in range(V_):
                at = builder.add(builder.mul(ir.Constant(i64, j), stride), ir.Constant(i64, v * VW_))
                builder.store(final[j * V_ + v], builder.bitcast(builder.gep(out_p, [at]), vp), align=itemsize)
        return context.get_dummy_value()

    return sig, codegen


# Bound by ``_build`` (Numba resolves a compiled function's globals when it compiles it).
literally = _edge_block = None


def _edge_loop(src, w, koff, out, bases, blocks, first, last, kind, chunk_ptr, chunk_start, chunk_len, P, V, VW, ps,
               isz, kw, dl, a, b):   # pragma: no cover - compiled
    """``direct_kernel._output_loop`` for the micro-blocks listed in ``blocks`` that lie in first..last-1,
    each an edge block of window [a, b)."""
    literally(P)
    literally(V)
    literally(VW)
    literally(ps)
    literally(isz)
    literally(kw)
    literally(dl)
    literally(a)
    literally(b)
    nob, K = w.shape[0], w.shape[1]
    width = out.shape[1]
    block = V * VW
    src_a, w_a, koff_a, out_a = src.ctypes.data, w.ctypes.data, koff.ctypes.data, out.ctypes.data
    starts_a, lens_a = chunk_start.ctypes.data, chunk_len.ctypes.data
    for ob in range(nob):
        for i in range(blocks.shape[0]):
            m = blocks[i]
            if m < first or m >= last:
                continue
            c0, c1 = chunk_ptr[kind[m]], chunk_ptr[kind[m] + 1]
            _edge_block(P, V, VW, ps, isz, kw, dl, a, b, src_a + bases[m] * isz, w_a + ob * K * block * isz, koff_a,
                        starts_a + c0 * 8, lens_a + c0 * 8, c1 - c0, out_a + (m * P * width + ob * block) * isz, width)


@functools.cache
def _build():
    """The loop as a Numba dispatcher (cached on disk where Numba can), or None."""
    if direct_kernel._numba() is None:
        return None
    loops = numba_cache.compiled_with_intrinsics(globals(), {"_edge_block": _edge_block_typer}, (_edge_loop,),
                                                 "border blocks sum every tap", nogil=True)
    return loops[0] if loops else None


def available() -> bool:
    return _build() is not None


@functools.lru_cache(maxsize=None)
def edge_loop(P: int, V: int, VW: int, ps: int, itemsize: int, kw: int, dl: int, a: int, b: int):
    """loop(src, w, koff, out, bases, blocks, first, last, kind, chunk_ptr, chunk_start, chunk_len) for an
    edge block of these sizes and window (``_edge_loop``)."""
    with _build_lock:
        dtype = np.float32 if itemsize == 4 else np.float64
        i1 = np.zeros(1, np.int64)
        args = (np.zeros(1, dtype), np.zeros((1, 1, V * VW), dtype), i1, np.zeros((P, V * VW), dtype), i1,
                np.zeros(0, np.int64), 0, 0, i1, np.zeros(2, np.int64), i1, i1)
        return direct_kernel._specialised(_build(), args, (P, V, VW, ps, itemsize, kw, dl, a, b))


def windows(first_col: int, per_run: int, P: int, ps: int, kw: int, dl: int, lo: int, hi: int) -> list:
    """[(i, a, b)]: the micro-blocks i of a run (P positions ps columns apart, the run's first at column
    ``first_col`` of the grid; tap t of a position read dl * t columns on) whose window of offsets that
    read data, [a, b) (columns lo .. hi - 1 of the grid hold data), leaves out some (position, tap); a and
    b clipped to the block's offsets, so that equal windows compile once."""
    span = (P - 1) * ps + (kw - 1) * dl + 1
    out = []
    for i in range(per_run):
        start = first_col + i * P * ps
        a, b = min(max(lo - start, 0), span), max(min(hi - start, span), 0)
        if a > 0 or b < span:
            out.append((i, a, max(a, b)))
    return out


def live_pairs(P: int, ps: int, kw: int, dl: int, a: int, b: int) -> int:
    """(position, tap) pairs an edge block of window [a, b) sums, of P * kw."""
    offsets = np.arange(P)[:, None] * ps + np.arange(kw)[None, :] * dl
    return int(((offsets >= a) & (offsets < b)).sum())
