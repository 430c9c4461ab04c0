"""The direct engine's CPU passes as register-blocked micro-kernels: vectors of output channels
times broadcast inputs, written in LLVM vector IR through Numba (oneDNN's arrangement of the work).

A pass of the direct engine (direct_conv.py) is, per group, with k = (c, tap) over K = C * taps,

    out[p, o] = sum_k src[koff[k] + base(p)] * w[k, o]        (outputs: y, and gx on gy's grid)
    gw[k, o]  = sum_p src[koff[k] + base(p)] * rhs[p, o]       (the weight gradient)

with koff[k] = c * plane + off(tap). The output-pass micro-kernel keeps a P x V block of vector
accumulators (P positions at cells base, base + ps, ..., by V vectors of VW output channels) in
registers for the whole sum over k: per k it loads V vectors of w's row k and broadcasts P scalars
of src, P * V fused multiply-adds, and writes each accumulator once at the end. The weight-gradient
micro-kernel is the same arrangement with the roles turned: R rows k of gw by V vectors, summed
over a run of positions, each step loading V vectors of rhs's row p and broadcasting R scalars.

Why not NumPy and BLAS: im2col + GEMM copies prod(k) columns per position and runs BLAS on
matrices with 8-64 rows, about half its peak; a loop that Numba vectorises by itself keeps its
accumulators in memory (one load and store per multiply-add: 61-73 GFLOP/s on one thread here,
docs/benchmarks.md). These kernels are written as LLVM vectors (``numba.extending.intrinsic``):
3x3 32 -> 32 channels on 64^2, one thread, ran at 164 GFLOP/s, PyTorch's oneDNN at 150-165.

Layouts: src flat per group (channels-first planes, the engine's grid), w packed (output blocks,
K, V * VW), out channels-last (positions, O padded to whole vectors), which ``_scatter_loop``
writes into y or gx block by block; rhs (gy) channels-first as the engine holds it, copied
channels-last a segment at a time. Outputs are computed for whole micro-blocks of P positions: a
run of the pass's positions is padded to a multiple of P (its extra outputs are dropped), so src
needs ``tail_cells`` readable cells past the grid. Each shape of block compiles on first use (0.1-0.5 s:
the sizes are literal arguments) and is kept in Numba's disk cache. ``llvm.fmuladd`` lets LLVM
fuse each multiply-add where the CPU has FMA and keep a multiply and an add where it has not.
"""
from __future__ import annotations

import functools
import logging
import math
import threading
from typing import NamedTuple

import numpy as np

from . import numba_cache, resources

log = logging.getLogger(__name__)

MIN_ROWS = 4          # fewer output rows than this (e.g. the input gradient of a 1-3 channel layer): BLAS
MAX_K_BLOCK = 12      # rows of gw per weight-gradient call (their pointers live in general registers)
SEGMENT = 256         # positions per weight-gradient call: a segment of rhs stays in L1 across the k blocks

_build_lock = threading.Lock()


@functools.cache
def machine() -> tuple:
    """(vector bytes, vector registers) of this CPU, from LLVM's view of its features."""
    try:
        import llvmlite.binding as llvm
        features = llvm.get_host_cpu_features()
        name = llvm.get_host_cpu_name()
    except Exception:  # noqa: BLE001 - llvmlite missing or not answering: the narrowest vectors
        return 16, 16
    if features.get("avx512f"):
        return 64, 32
    if features.get("avx2") or features.get("avx"):
        return 32, 16
    if "aarch64" in name or features.get("neon"):
        return 16, 32
    return 16, 16


def available(xp, dtype) -> bool:
    """Whether the compiled passes run: NumPy arrays of float32/64, Numba importable, not switched
    off (``CONVCORE_COMPILED=0``)."""
    dtype = np.dtype(dtype)
    return xp is np and dtype.kind == "f" and compiled_for(dtype.itemsize)


@functools.cache
def _numba():
    try:
        import numba
        from numba.extending import intrinsic  # noqa: F401 - the kernels need it
        return numba
    except ImportError:
        return None
    except Exception as exc:  # noqa: BLE001 - a Numba build that does not load with this NumPy
        log.warning("Numba does not load (%s): the direct engine runs on BLAS", exc)
        return None


class Blocking:
    """How a pass with ``rows`` output channels is blocked: VW lanes per vector (narrower vectors
    where rows would leave most lanes empty), V vectors per block of channels, ``nob`` such blocks
    (rows padded to ``padded`` = nob * V * VW), P positions per output micro-block and R rows of gw
    per weight-gradient call."""

    def __init__(self, rows: int, itemsize: int):
        vector_bytes, registers = machine()
        lanes = vector_bytes // itemsize
        while lanes > 4 and rows <= lanes // 2:
            lanes //= 2
        wide = registers   # (narrower vectors on AVX-512 still have 32 registers: AVX-512VL)
        vectors = -(-rows // lanes)
        most = 3 if wide >= 32 else 2   # 64 channels: 2 vectors x 14 positions ran 186 G FLOP/s, 4 x 6: 168
        self.VW = lanes
        self.V = next(v for v in range(min(most, vectors), 0, -1) if vectors % v == 0)
        self.nob = vectors // self.V
        self.padded = self.nob * self.V * lanes
        self.P = min(28, (wide - self.V - 2) // self.V)             # accumulators + V rows of w + a broadcast
        self.R = min(MAX_K_BLOCK, (wide - self.V - 2) // self.V)


def micro_blocks(run_len: int, most: int) -> int:
    """Positions per output micro-block for runs of ``run_len``: at most ``most`` (the registers'
    limit) and at least half of it, as few padded positions per run as possible, then the largest
    blocks (a run of 32 in blocks of 14 pads 10 positions; in blocks of 8, none)."""
    if run_len <= most:
        return max(1, run_len)
    # A block of P reads each row of filters once for P positions, so smaller blocks load more per
    # multiply-add; down to half the registers' blocks that cost less than the padding they save. At
    # 3/4 (before), rows of 16 with 32 channels (most 14) ran in blocks of 11, 22 positions a row: a
    # 3-D 3^3 32-channel layer on 8 x 16^3 took 0.89x the time with blocks of 8, a 2-D 9x9 stride-2
    # layer's forward (rows of 32, most 28: 21 -> 16) 0.83x; 64-wide rows (22 -> 16) the same.
    return min(range(max(1, -(-most // 2)), most + 1), key=lambda p: (-(-run_len // p) * p, -p))


# ---- the micro-kernels (LLVM IR) ----------------------------------------------------------------------
# Intrinsics whose block sizes are literal arguments (Numba compiles one loop per combination and
# keeps each in its disk cache); ``_build`` turns the typing functions below into intrinsics.

def _splat(builder, ir, value, vt):
    lanes = vt.count
    one = builder.insert_element(ir.Constant(vt, ir.Undefined), value, ir.Constant(ir.IntType(32), 0))
    return builder.shuffle_vector(one, ir.Constant(vt, ir.Undefined),
                                  ir.Constant(ir.VectorType(ir.IntType(32), lanes), [0] * lanes))


def _literals(*args):
    """The values of literal integer types, or None if any is not one (Numba then asks again)."""
    from numba import types
    if not all(isinstance(a, types.IntegerLiteral) for a in args):
        return None
    return tuple(a.literal_value for a in args)


def _vector_ops(builder, ir, itemsize, lanes):
    """(vector type, fma function, scalar pointer type, vector pointer type)."""
    scalar = ir.FloatType() if itemsize == 4 else ir.DoubleType()
    vt = ir.VectorType(scalar, lanes)
    fma = builder.module.declare_intrinsic(f"llvm.fmuladd.v{lanes}f{8 * itemsize}", (), ir.FunctionType(vt, [vt, vt, vt]))
    return vt, fma, scalar.as_pointer(), vt.as_pointer()


def _counted_loop(builder, ir, count, start: list, step) -> list:
    """Emit ``for k in range(count): acc = step(k, acc)`` with the accumulators as SSA values (so LLVM
    keeps them in registers): ``start`` their values before the loop, ``step(k, acc)`` builds one
    iteration's new values; returns their values after it (``start`` when count <= 0)."""
    i64 = ir.IntType(64)
    entry = builder.block
    loop, done = builder.append_basic_block("loop"), builder.append_basic_block("done")
    builder.cbranch(builder.icmp_signed(">", count, ir.Constant(i64, 0)), loop, done)
    builder.position_at_end(loop)
    k = builder.phi(i64)
    acc = [builder.phi(value.type) for value in start]
    k.add_incoming(ir.Constant(i64, 0), entry)
    for a, value in zip(acc, start):
        a.add_incoming(value, entry)
    new = step(k, acc)
    body_end = builder.block
    k_next = builder.add(k, ir.Constant(i64, 1))
    k.add_incoming(k_next, body_end)
    for a, n in zip(acc, new):
        a.add_incoming(n, body_end)
    builder.cbranch(builder.icmp_signed("<", k_next, count), loop, done)
    builder.position_at_end(done)
    final = []
    for value, n in zip(start, new):   # every phi of a block first
        f = builder.phi(value.type)
        f.add_incoming(value, entry)
        f.add_incoming(n, body_end)
        final.append(f)
    return final


def _output_block_typer(typingctx, P, V, VW, ps, isz, src, w, koff, starts, lens, nchunks, out, out_stride):
    """out[j * out_stride + v * VW + lane] = sum_k src[koff[k] + j * ps] * w[k * V * VW + v * VW + lane]
    for the P x V block, k over the chunks starts[i] .. starts[i] + lens[i] - 1, i < nchunks (the
    (channel, tap) rows that read data: a block near a zero-padded border skips the taps that read
    only padding, as oneDNN does); addresses as integers, P .. isz literal."""
    from llvmlite import ir
    from numba import types
    sizes = _literals(P, V, VW, ps, isz)
    if sizes is None:
        return None
    P_, V_, VW_, ps_, itemsize = sizes
    i64 = ir.IntType(64)
    sig = types.void(P, V, VW, ps, isz, *([types.intp] * 8))

    def codegen(context, builder, signature, args):
        src_a, w_a, koff_a, starts_a, lens_a, nchunks, out_a, stride = args[5:]
        vt, fma, sp, vp = _vector_ops(builder, ir, itemsize, VW_)
        src_p, w_p = builder.inttoptr(src_a, sp), builder.inttoptr(w_a, sp)
        koff_p, out_p = builder.inttoptr(koff_a, i64.as_pointer()), builder.inttoptr(out_a, sp)
        starts_p, lens_p = builder.inttoptr(starts_a, i64.as_pointer()), builder.inttoptr(lens_a, i64.as_pointer())
        zero = ir.Constant(vt, [0.0] * VW_)

        def step(k, acc):
            cell = builder.gep(src_p, [builder.load(builder.gep(koff_p, [k]))])
            row = builder.gep(w_p, [builder.mul(k, ir.Constant(i64, V_ * VW_))])
            w_vec = [builder.load(builder.bitcast(builder.gep(row, [ir.Constant(i64, v * VW_)]), vp), align=itemsize)
                     for v in range(V_)]
            new = []
            for j in range(P_):
                s = _splat(builder, ir, builder.load(builder.gep(cell, [ir.Constant(i64, j * ps_)])), vt)
                new += [builder.call(fma, [s, w_vec[v], acc[j * V_ + v]]) for v in range(V_)]
            return new

        def chunk(i, acc):   # the accumulators stay in registers from one chunk to the next
            first = builder.load(builder.gep(starts_p, [i]))
            count = builder.load(builder.gep(lens_p, [i]))
            return _counted_loop(builder, ir, count, acc, lambda k, a: step(builder.add(first, k), a))

        final = _counted_loop(builder, ir, nchunks, [zero] * (P_ * V_), chunk)
        for j in range(P_):
            for v in range(V_):
                at = builder.add(builder.mul(ir.Constant(i64, j), stride), ir.Constant(i64, v * VW_))
                builder.store(final[j * V_ + v], builder.bitcast(builder.gep(out_p, [at]), vp), align=itemsize)
        return context.get_dummy_value()

    return sig, codegen


def _weight_block_typer(typingctx, R, V, VW, isz, src, koff, ps, rows, row_len, keep, rhs, rhs_stride, acc,
                       acc_stride):
    """acc[r * acc_stride + v * VW + lane] += sum_i src[koff[r] + i * ps] * rhs[i * rhs_stride + v * VW + lane]
    over the positions i = j * row_len + c, j < rows, c < keep (a row's first ``keep`` of ``row_len``: its
    ring left out), for the R x V block (addresses as integers, R .. isz literal)."""
    from llvmlite import ir
    from numba import types
    sizes = _literals(R, V, VW, isz)
    if sizes is None:
        return None
    R_, V_, VW_, itemsize = sizes
    i64 = ir.IntType(64)
    sig = types.void(R, V, VW, isz, *([types.intp] * 10))

    def codegen(context, builder, signature, args):
        src_a, koff_a, step_cells, rows, row_len, keep, rhs_a, rstride, acc_a, astride = args[4:]
        vt, fma, sp, vp = _vector_ops(builder, ir, itemsize, VW_)
        src_p, rhs_p, acc_p = builder.inttoptr(src_a, sp), builder.inttoptr(rhs_a, sp), builder.inttoptr(acc_a, sp)
        koff_p = builder.inttoptr(koff_a, i64.as_pointer())
        cells = [builder.gep(src_p, [builder.load(builder.gep(koff_p, [ir.Constant(i64, r)]))]) for r in range(R_)]
        slots = [builder.bitcast(builder.gep(acc_p, [builder.add(builder.mul(ir.Constant(i64, r), astride),
                                                                ir.Constant(i64, v * VW_))]), vp)
                 for r in range(R_) for v in range(V_)]
        start = [builder.load(s, align=itemsize) for s in slots]

        def step(i, acc):
            row = builder.gep(rhs_p, [builder.mul(i, rstride)])
            r_vec = [builder.load(builder.bitcast(builder.gep(row, [ir.Constant(i64, v * VW_)]), vp), align=itemsize)
                     for v in range(V_)]
            at = builder.mul(i, step_cells)
            new = []
            for r in range(R_):
                s = _splat(builder, ir, builder.load(builder.gep(cells[r], [at])), vt)
                new += [builder.call(fma, [s, r_vec[v], acc[r * V_ + v]]) for v in range(V_)]
            return new

        def row(j, acc):
            first = builder.mul(j, row_len)
            return _counted_loop(builder, ir, keep, acc, lambda c, a: step(builder.add(first, c), a))

        final = _counted_loop(builder, ir, rows, start, row)
        for f, s in zip(final, slots):
            builder.store(f, s, align=itemsize)
        return context.get_dummy_value()

    return sig, codegen


def _transposed(builder, ir, v: list) -> list:
    """The T x T tile held as T vectors of T lanes (v[j][c]), transposed: vector c holds v[.][c].
    log2(T) rounds of interleaving pairs (vector i with i + T/2): each round's shuffles are of two
    vectors, which x86 does in one instruction."""
    T = len(v)
    h = T // 2
    i32 = ir.IntType(32)
    low = ir.Constant(ir.VectorType(i32, T), [x for i in range(h) for x in (i, T + i)])
    high = ir.Constant(ir.VectorType(i32, T), [x for i in range(h, T) for x in (i, T + i)])
    for _ in range(T.bit_length() - 1):
        v = [half for i in range(h) for half in (builder.shuffle_vector(v[i], v[i + h], low),
                                                 builder.shuffle_vector(v[i], v[i + h], high))]
    return v


def _tile_typer(typingctx, T, isz, src, src_stride, dst, dst_stride, count, bias):
    """dst[c * dst_stride + j] = src[j * src_stride + c] + bias[c] for j < T and c < count (<= T): a T x T
    tile of a channels-last result written channels-first (addresses as integers, T and isz literal).
    T vectors loaded, transposed in registers, stored as T vectors: no strided scalar reads (those
    ran at 1.1 ns a cell, 5-7x slower)."""
    from llvmlite import ir
    from numba import types
    sizes = _literals(T, isz)
    if sizes is None:
        return None
    T_, itemsize = sizes
    i64 = ir.IntType(64)
    sig = types.void(T, isz, *([types.intp] * 6))

    def codegen(context, builder, signature, args):
        src_a, sstride, dst_a, dstride, count, bias_a = args[2:]
        vt, _fma, sp, vp = _vector_ops(builder, ir, itemsize, T_)
        src_p, dst_p, bias_p = (builder.inttoptr(a, sp) for a in (src_a, dst_a, bias_a))
        v = _transposed(builder, ir, [
            builder.load(builder.bitcast(builder.gep(src_p, [builder.mul(ir.Constant(i64, j), sstride)]), vp),
                         align=itemsize) for j in range(T_)])
        for c in range(T_):
            cc = ir.Constant(i64, c)
            with builder.if_then(builder.icmp_signed("<", cc, count), likely=True):
                b = _splat(builder, ir, builder.load(builder.gep(bias_p, [cc])), vt)
                builder.store(builder.fadd(v[c], b), builder.bitcast(builder.gep(dst_p, [builder.mul(cc, dstride)]), vp),
                              align=itemsize)
        return context.get_dummy_value()

    return sig, codegen


def _gather_tile_typer(typingctx, T, isz, src, offs, dst, dst_stride):
    """dst[j * dst_stride + c] = src[offs[c] + j] for j, c < T: T runs of T cells (rows of gy,
    channels-first) written as T channels-last rows (the weight pass's buffer); the other direction
    of ``_tile_typer``."""
    from llvmlite import ir
    from numba import types
    sizes = _literals(T, isz)
    if sizes is None:
        return None
    T_, itemsize = sizes
    i64 = ir.IntType(64)
    sig = types.void(T, isz, *([types.intp] * 4))

    def codegen(context, builder, signature, args):
        src_a, offs_a, dst_a, dstride = args[2:]
        vt, _fma, sp, vp = _vector_ops(builder, ir, itemsize, T_)
        src_p, dst_p = builder.inttoptr(src_a, sp), builder.inttoptr(dst_a, sp)
        offs_p = builder.inttoptr(offs_a, i64.as_pointer())
        v = _transposed(builder, ir, [
            builder.load(builder.bitcast(builder.gep(src_p, [builder.load(builder.gep(offs_p, [ir.Constant(i64, c)]))]),
                                         vp), align=itemsize) for c in range(T_)])
        for j in range(T_):
            builder.store(v[j], builder.bitcast(builder.gep(dst_p, [builder.mul(ir.Constant(i64, j), dstride)]), vp),
                          align=itemsize)
        return context.get_dummy_value()

    return sig, codegen


# ---- the loops over blocks (Numba) --------------------------------------------------------------------
# Names the loops call, bound by ``_build`` (Numba resolves a compiled function's globals when it
# compiles it): numba.literally and the four intrinsics.
literally = _output_block = _weight_block = _tile = _gather_tile = None


def _output_loop(src, w, koff, out, bases, first, last, kind, chunk_ptr, chunk_start, chunk_len, P, V, VW, ps,
                 isz):   # pragma: no cover - compiled
    """The output micro-blocks first..last-1: block m at src cell bases[m], written to out rows
    m * P .. m * P + P - 1, every block of channels, summing the rows k of the chunks
    chunk_ptr[kind[m]] .. chunk_ptr[kind[m] + 1] - 1 (chunk i: chunk_len[i] rows from chunk_start[i]).
    src 1-D, w (nob, K, V * VW), koff (K,) int64, out (blocks * P, nob * V * VW), all C-contiguous.
    Blocks of channels outermost: each block streams its K rows of w once for all the micro-blocks
    (block by block, a layer with K * V * VW past L2 read w from L3 for every P positions: 3-D 3^3
    128 -> 128 channels on 8^3, 1.3x slower)."""
    literally(P)
    literally(V)
    literally(VW)
    literally(ps)
    literally(isz)
    nob, K = w.shape[0], w.shape[1]
    width = out.shape[1]
    block = V * VW
    src_a, w_a, koff_a, out_a = src.ctypes.data, w.ctypes.data, koff.ctypes.data, out.ctypes.data
    starts_a, lens_a = chunk_start.ctypes.data, chunk_len.ctypes.data
    for ob in range(nob):
        for m in range(first, last):
            c0, c1 = chunk_ptr[kind[m]], chunk_ptr[kind[m] + 1]
            _output_block(P, V, VW, ps, isz, src_a + bases[m] * isz, w_a + ob * K * block * isz, koff_a,
                          starts_a + c0 * 8, lens_a + c0 * 8, c1 - c0, out_a + (m * P * width + ob * block) * isz, width)


def _weight_loop(src, koff, step, rhs, roff, rhs_step, acc, src_start, rhs_start, seg_len, seg_kind, kind_ptr,
                 span_lo, span_hi, row_len, keep, win_lo, win_hi, first, last, R, V, VW, isz,
                 by_column):   # pragma: no cover - compiled
    """acc (K, width) += the segments first..last-1: segment s broadcasts R rows of src at a time, those of
    its kind's spans q = kind_ptr[seg_kind[s]] .. kind_ptr[seg_kind[s] + 1] - 1 (rows span_lo[q] ..
    span_hi[q] - 1, multiples of R: where its cells of src hold data; one span of all rows without), over
    its positions in rows of ``row_len`` of which the first ``keep`` are summed (the rest, a whole-axis
    space's ring, hold zeros of gy; row_len 0: every position, one row), and of those, for the block of R
    rows from k0, only positions win_lo[k0 // R] .. win_hi[k0 // R] - 1 of each row (where its rows' taps
    read data along the row; 0 .. a large number: all),
    row r from cell koff[r] + src_start[s] on (step ``step``), against the vectors of a buffer of
    SEGMENT positions that stays in L1: column c of position i gathered from rhs (flat) at roff[c] +
    rhs_start[s] + i * rhs_step. Rows first (the usual way): src is the grid, koff its (channel, tap)
    offsets, rhs gy channels-first (roff: its rows); columns first (``columns_first``): src is gy,
    koff its rows, rhs the grid and roff the (channel, tap) offsets. K is a multiple of R: the caller
    pads koff (with offset 0, a readable cell) and acc, and drops the padded rows' sums. ``by_column``:
    the gather reads one gathered column at a time (gy's rows: long runs of one row), else one
    position at a time (the grid's columns, whose cells the next positions read again; column by
    column a 3-D layer's 54 columns ran 1.5x slower)."""
    literally(R)
    literally(V)
    literally(VW)
    literally(isz)
    literally(by_column)
    width = acc.shape[1]
    ncols = roff.shape[0]
    block = V * VW
    nob = width // block
    buf = np.zeros((SEGMENT, width), acc.dtype)   # columns past the gathered ones' last tile stay zero
    src_a, koff_a, buf_a, acc_a = src.ctypes.data, koff.ctypes.data, buf.ctypes.data, acc.ctypes.data
    # gy's rows a tile of VW at a time (``_gather_tile``): the row offsets padded to whole tiles with a
    # readable row (its copies land in padded columns, whose sums are dropped)
    tiles = -(-ncols // VW) * VW
    rows_at = np.empty(tiles, np.int64)
    for c in range(tiles):
        rows_at[c] = roff[min(c, ncols - 1)]
    rows_a, rhs_a = rows_at.ctypes.data, rhs.ctypes.data
    for s in range(first, last):
        base, n, start = src_start[s], seg_len[s], rhs_start[s]
        if by_column and rhs_step == 1 and n >= VW:
            for c0 in range(0, tiles, VW):
                i = 0
                while True:
                    at = min(i, n - VW)   # the last tile ends at the segment's end (rewriting some rows)
                    _gather_tile(VW, isz, rhs_a + (start + at) * isz, rows_a + c0 * 8,
                                 buf_a + (at * width + c0) * isz, width)
                    if at == n - VW:
                        break
                    i += VW
        elif by_column:
            for c in range(ncols):
                at = roff[c] + start
                for i in range(n):
                    buf[i, c] = rhs[at + i * rhs_step]
        else:
            for i in range(n):
                at = start + i * rhs_step
                for c in range(ncols):
                    buf[i, c] = rhs[roff[c] + at]
        kd = seg_kind[s]
        rows, run, kept = (n // row_len, row_len, keep) if row_len > 0 else (1, n, n)
        for q in range(kind_ptr[kd], kind_ptr[kd + 1]):
            for k0 in range(span_lo[q], span_hi[q], R):
                c0 = max(win_lo[k0 // R], 0)
                c1 = min(win_hi[k0 // R], kept)
                if c1 <= c0:
                    continue
                for ob in range(nob):
                    _weight_block(R, V, VW, isz, src_a + (base + c0 * step) * isz, koff_a + k0 * 8, step, rows, run,
                                  c1 - c0, buf_a + (c0 * width + ob * block) * isz, width,
                                  acc_a + (k0 * width + ob * block) * isz, width)


def _scatter_loop(out, dst, dest_run, seg_j, seg_len, seg_dst, rows, ch_stride, offset, run_len, first_row, last_row,
                  bias, step, T, isz):   # pragma: no cover - compiled
    """Rows first_row..last_row-1 of an output pass's channels-last result ``out`` (positions, padded
    channels) into the caller's layout ``dst`` (flat): row i is position i % run_len of run r = i //
    run_len. The run's positions that land in dst are the segments s: seg_len[s] positions from
    seg_j[s] on, channel o of which go to cells ``step`` apart (1: consecutive; a stride's phase of x:
    the stride) from offset + dest_run[r] + seg_dst[s] + o * ch_stride (the ring of a last axis and the
    blocks' padding are in no segment), plus bias[o] (a forward pass's bias, added as it is written;
    zeros otherwise). Run by the thread that computed
    those rows, while they are in its cache: one pass instead of NumPy's transposed copy after the
    whole pass (1 ms a copy on a 4 MB output, on one thread). Tiles of T positions by T channels,
    transposed in registers (``_tile``); a segment's last tile ends at its end, rewriting some of the
    tile before it (same thread, same values); a piece shorter than T, or cells ``step`` > 1 apart, is
    copied cell by cell."""
    literally(T)
    literally(isz)
    width = out.shape[1]
    out_a, dst_a, bias_a = out.ctypes.data, dst.ctypes.data, bias.ctypes.data
    for r in range(first_row // run_len, (last_row - 1) // run_len + 1):
        lo = max(first_row - r * run_len, 0)
        hi = min(last_row - r * run_len, run_len)
        base = offset + dest_run[r]
        for s in range(seg_j.shape[0]):
            a = max(seg_j[s], lo)
            e = min(seg_j[s] + seg_len[s], hi)
            n = e - a
            if n <= 0:
                continue
            row = r * run_len + a
            start = base + seg_dst[s] + (a - seg_j[s]) * step
            if n < T or step != 1:
                for o in range(rows):
                    d0 = start + o * ch_stride
                    b = bias[o]
                    for j in range(n):
                        dst[d0 + j * step] = out[row + j, o] + b
                continue
            j = 0
            while True:
                at = min(j, n - T)
                for o0 in range(0, rows, T):
                    _tile(T, isz, out_a + ((row + at) * width + o0) * isz, width,
                          dst_a + (start + at + o0 * ch_stride) * isz, ch_stride, min(T, rows - o0), bias_a + o0 * isz)
                if at == n - T:
                    break
                j += T


def _phase_scatter_loop(out, dst, qx, pos_step, first_q, stop_q, phase_off, plane, batch_stride, last_step, rows,
                        offset, P, first, last, count):   # pragma: no cover - compiled
    """Micro-blocks first..last-1 of an input-gradient pass over the whole polyphase grid (one run of
    ``count`` positions (b, q_1..q_N), row-major) from its channels-last result ``out`` straight into
    gx (``dst``, flat), folding the phases back as ``layout.depth_to_space_window`` does: channel o is
    phase o % nph of input channel o // nph, position (b, q) of phase ph lands at offset + b *
    batch_stride + sum_d q_d * pos_step[d] + (o // nph) * plane + phase_off[ph] when first_q[ph, d] <=
    q_d < stop_q[ph, d] on every axis (else that phase never reads x there), consecutive q_N
    last_step cells apart. Tables of a few numbers per phase: the positions are decoded as the loop
    walks the rows of the grid."""
    N = qx.shape[0]
    nph = first_q.shape[0]
    per_image = 1
    for d in range(N):
        per_image *= qx[d]
    qn = qx[N - 1]
    coords = np.empty(N, np.int64)
    p = first * P
    end = min(last * P, count)
    while p < end:
        b = p // per_image
        rem = p - b * per_image
        for d in range(N - 1, -1, -1):
            coords[d] = rem % qx[d]
            rem //= qx[d]
        base = offset + b * batch_stride
        for d in range(N - 1):
            base += coords[d] * pos_step[d]
        q0 = coords[N - 1]
        n_here = min(qn - q0, end - p)
        for ph in range(nph):
            inside = True
            for d in range(N - 1):
                if coords[d] < first_q[ph, d] or coords[d] >= stop_q[ph, d]:
                    inside = False
            j0 = max(q0, first_q[ph, N - 1])
            j1 = min(q0 + n_here, stop_q[ph, N - 1])
            if not inside or j1 <= j0:
                continue
            row = p + j0 - q0
            start = base + j0 * last_step
            for o in range(ph, rows, nph):
                d0 = start + (o // nph) * plane + phase_off[ph]
                for j in range(j1 - j0):
                    dst[d0 + j * last_step] = out[row + j, o]
        p += n_here


@functools.cache
def _build():
    """The loops as Numba dispatchers (cached on disk where Numba can, saved under
    ``numba_cache``'s lock), or None. A list: a loop whose cached code proves to be another
    signature's is swapped for one compiled without the cache (``_typed_call``)."""
    numba = _numba()
    if numba is None:
        return None
    from numba.extending import intrinsic
    glob = globals()
    glob["literally"] = numba.literally
    glob["_output_block"] = intrinsic(_output_block_typer)
    glob["_weight_block"] = intrinsic(_weight_block_typer)
    glob["_tile"] = intrinsic(_tile_typer)
    glob["_gather_tile"] = intrinsic(_gather_tile_typer)
    purpose = "the direct engine runs on BLAS"
    loops = numba_cache.compiled((_output_loop, _weight_loop), purpose, nogil=True)
    scatters = numba_cache.compiled((_scatter_loop, _phase_scatter_loop), purpose, nogil=True, boundscheck=False)
    if loops is None or scatters is None:   # NUMBA_DISABLE_JIT=1
        log.info("Numba does not compile here: %s", purpose)
        return None
    return list(loops + scatters)


def _specialised(dispatcher, args: tuple, literals: tuple):
    """The compiled loop for these literal sizes as a plain callable: calling the dispatcher with
    them would take its literal-forcing path on every call (milliseconds); one call compiles (or
    loads) it, then the overload's own entry point is called directly."""
    numba = _numba()
    want = tuple(numba.typeof(a) for a in args) + tuple(numba.types.literal(v) for v in literals)
    kinds = [(i, a.dtype, a.ndim) for i, a in enumerate(args) if isinstance(a, np.ndarray)]
    try:
        dispatcher(*args, *literals)
        entry = _entry_point(dispatcher, want)
    except TypeError:   # the disk cache gave another signature's code for this one ("can't unbox array")
        entry = None
    if entry is None and numba_cache.lock_path(dispatcher) is not None:
        dispatcher = numba_cache.uncached(dispatcher)
        dispatcher(*args, *literals)
        entry = _entry_point(dispatcher, want)
    if entry is None:   # pragma: no cover - Numba changed how it keys overloads
        raise RuntimeError(f"no compiled loop for {want}")

    def call(*a):
        # the entry point reads its arrays as the types it was compiled for, unchecked
        for i, dtype, ndim in kinds:
            if not (a[i].flags.c_contiguous and a[i].dtype == dtype and a[i].ndim == ndim):
                raise TypeError(f"argument {i} must be a C-contiguous {ndim}-D {dtype} array")
        return entry(*a, *literals)
    return call


def _entry_point(dispatcher, want: tuple):
    """The compiled overload of ``dispatcher`` for the argument types ``want``, or None."""
    for sig, result in dispatcher.overloads.items():
        if tuple(sig) == want:
            return result.entry_point
    return None


@functools.lru_cache(maxsize=None)
def output_loop(P: int, V: int, VW: int, ps: int, itemsize: int):
    """loop(src, w, koff, out, bases, first, last, kind, chunk_ptr, chunk_start, chunk_len) for these block
    sizes (``_output_loop``)."""
    with _build_lock:
        dtype = np.float32 if itemsize == 4 else np.float64
        i1 = np.zeros(1, np.int64)
        args = (np.zeros(1, dtype), np.zeros((1, 1, V * VW), dtype), i1, np.zeros((P, V * VW), dtype), i1, 0, 0,
                i1, np.zeros(2, np.int64), i1, i1)
        return _specialised(_build()[0], args, (P, V, VW, ps, itemsize))


@functools.lru_cache(maxsize=None)
def weight_loop(R: int, V: int, VW: int, itemsize: int, by_column: int):
    """loop(src, koff, step, rhs, roff, rhs_step, acc, src_start, rhs_start, seg_len, seg_kind, kind_ptr, span_lo,
    span_hi, row_len, keep, win_lo, win_hi, first, last) for these block sizes and gather order (``_weight_loop``)."""
    with _build_lock:
        dtype = np.float32 if itemsize == 4 else np.float64
        i1 = np.zeros(1, np.int64)
        args = (np.zeros(1, dtype), np.zeros(R, np.int64), 1, np.zeros(1, dtype), i1, 1,
                np.zeros((R, V * VW), dtype), i1, i1, i1, i1, np.zeros(2, np.int64), i1, i1, 0, 0, i1, i1, 0, 0)
        return _specialised(_build()[1], args, (R, V, VW, itemsize, by_column))


@functools.lru_cache(maxsize=None)
def scatter_loop(T: int, itemsize: int):
    """loop(out, dst, dest_run, seg_j, seg_len, seg_dst, rows, ch_stride, offset, run_len, first_row,
    last_row, bias, step) for tiles of T x T (``_scatter_loop``)."""
    with _build_lock:
        dtype = np.float32 if itemsize == 4 else np.float64
        i1 = np.zeros(1, np.int64)
        args = (np.zeros((1, T), dtype), np.zeros(1, dtype), i1, i1, i1, i1, 1, 1, 0, 1, 0, 0, np.zeros(1, dtype), 1)
        return _specialised(_build()[2], args, (T, itemsize))


def phase_scatter(*args) -> None:
    """``_phase_scatter_loop`` compiled."""
    _typed_call(3, args)


def _typed_call(index: int, args: tuple) -> None:
    """Call loop ``index`` of ``_build``; where its disk-cached code turns out to be another
    signature's (TypeError), that loop is compiled anew without the cache for the rest of the process."""
    loops = _build()
    loop = loops[index]
    try:
        loop(*args)
    except TypeError:
        if numba_cache.lock_path(loop) is None:
            raise
        with _build_lock:   # another thread may have swapped it already (both parts of a pass fail)
            if loops[index] is loop:
                loops[index] = numba_cache.uncached(loop)
        loops[index](*args)


class PhaseFold(NamedTuple):
    """``_phase_scatter_loop``'s tables for an input gradient over a polyphase grid (``phase_fold``)."""
    qx: np.ndarray
    pos_step: np.ndarray
    first_q: np.ndarray
    stop_q: np.ndarray
    phase_off: np.ndarray
    plane: int
    batch_stride: int
    last_step: int
    covers: bool   # every cell of x gets a value (else gx starts as zeros)


@functools.lru_cache(maxsize=64)
def phase_fold(s: tuple, read: tuple, lows: tuple, spatial: tuple, qx: tuple, batch_stride: int) -> PhaseFold:
    """Where the input gradient over a polyphase grid (phases of stride ``s``, grid ``qx``, cells
    below ``read`` of the padded input read) lands in gx (b, channels, spatial...): phase r's cell m of
    axis d is x's cell m * s_d + r_d - lows[d], for the m that ``layout.phase_windows`` gives it (those
    inside x and below ``read``). Per phase, not per channel: a few numbers each, all phases at once."""
    N = len(s)
    r = np.stack(np.unravel_index(np.arange(math.prod(s)), s), axis=1).astype(np.int64)   # (nph, N)
    s_, lo, read_, size = (np.array(v, np.int64) for v in (s, lows, read, spatial))
    first_q = np.maximum(0, -((r - lo) // s_))                 # ceil((lo - r) / s), at least 0
    stop_q = -((r - np.minimum(read_, lo + size)) // s_)      # ceil((min(read, lo + size) - r) / s)
    empty = (stop_q <= first_q).any(axis=1)
    first_q[empty], stop_q[empty] = 0, 0                        # a phase with no cell of x: written nowhere
    covered = int(np.prod(stop_q - first_q, axis=1).sum())
    xst = np.array([math.prod(spatial[d + 1:]) for d in range(N)], np.int64)
    return PhaseFold(np.array(qx, np.int64), s_ * xst, first_q, stop_q, (r - lo) @ xst, math.prod(spatial),
                     batch_stride, int(s[-1]), covered == math.prod(spatial))


def destinations(dims: tuple, merged: int, strides: tuple, limits: tuple, shifts: tuple, P: int, per_run: int,
                 step: int = 1):
    """(dest_run, seg_j, seg_len, seg_dst) for ``scatter_loop``: a pass over space ``dims`` (row-major)
    whose last ``merged`` axes are one run, computed in ``per_run`` micro-blocks of P positions;
    coordinate c of axis d goes to offset (c - shifts[d]) * strides[d] where 0 <= c - shifts[d] <
    limits[d], else nowhere (only the merged axes may be cut). The segments are a run's, the same
    for every run: runs of positions whose cells are ``step`` apart."""
    outer, inner = dims[:len(dims) - merged], dims[len(dims) - merged:]
    dest_run = np.zeros((), np.int64)
    for d, st in zip(outer, strides[:len(outer)]):
        dest_run = dest_run[..., None] + np.arange(d, dtype=np.int64) * st
    pos = np.zeros((), np.int64)
    valid = np.ones((), bool)
    for d, st, lim, sh in zip(inner, strides[len(outer):], limits[len(outer):], shifts[len(outer):]):
        c = np.arange(d, dtype=np.int64) - sh
        pos = pos[..., None] + c * st
        valid = valid[..., None] & (c >= 0) & (c < lim)
    dest_pos = np.full(per_run * P, -1, np.int64)
    dest_pos[:pos.size] = np.where(valid, pos, -1).reshape(-1)
    return (dest_run.reshape(-1),) + _segments(dest_pos, step)


def _segments(dest_pos: np.ndarray, step: int = 1) -> tuple:
    """(seg_j, seg_len, seg_dst): the runs of cells ``step`` apart (dest_pos[j + 1] == dest_pos[j] + step,
    none < 0) in dest_pos."""
    valid = dest_pos >= 0
    follows = valid[:-1] & valid[1:] & (dest_pos[1:] == dest_pos[:-1] + step)
    starts = valid.copy()
    starts[1:] &= ~follows
    ends = valid.copy()
    ends[:-1] &= ~follows
    j, j_end = np.nonzero(starts)[0], np.nonzero(ends)[0]   # the i-th end closes the i-th start
    return j.astype(np.int64), (j_end - j + 1).astype(np.int64), dest_pos[j].astype(np.int64)


def warm(dtype=np.float32) -> None:
    """Compile the commonest block shapes and the scatters now (a service worker's warm-up)."""
    itemsize = np.dtype(dtype).itemsize
    for rows in (16, 32):
        b = Blocking(rows, itemsize)
        output_loop(b.P, b.V, b.VW, 1, itemsize)
        weight_loop(b.R, b.V, b.VW, itemsize, 1)
        scatter_loop(b.VW, itemsize)
    out, dst = np.zeros((1, 1), dtype), np.zeros(1, dtype)
    fold = phase_fold((2,), (2,), (0,), (2,), (1,), 2)
    phase_scatter(out, dst, *fold[:-1], 1, 0, 1, 0, 0, 1)


def runs_of(dims: tuple, strides: tuple, origin: int) -> np.ndarray:
    """The grid cell where each run (row of the last axis) of a coalesced space starts, row-major."""
    bases = np.full((), origin, np.int64)
    for d, st in zip(dims[:-1], strides[:-1]):
        bases = (bases[..., None] + np.arange(d, dtype=np.int64) * st)
    return bases.reshape(-1)


def columns_first(columns: int, rows: int) -> bool:
    """Whether a weight-gradient pass with ``columns`` filter columns (c, tap) and ``rows`` output
    channels runs columns first (``_weight_loop`` with the roles turned): where the columns are at most half the
    rows (a position's copy at least halved: 3 x 3^2 -> 64 channels 1.9x faster), or with 64 rows
    and more where they are at most twice the rows (a copy of 64 rows of gy, channels-first, reads
    64 streams at once: 8 x 3^2 -> 64 1.28x, 24 x 3^2 -> 128 1.11x; 32 x 3^2 -> 64 0.86x, 16 x 5^2 -> 48
    0.97x). Measured in docs/benchmarks.md, "Twentieth round"."""
    return 2 * columns <= rows or (rows >= 64 and columns <= 2 * rows)


def tail_cells(run_len: int, P: int, ps: int) -> int:
    """Cells an output pass may read past the last position of a run (its padding to whole blocks)."""
    return (-(-run_len // P) * P - run_len) * ps



# ---- what the cost model needs (costs.direct_estimate) -------------------------------------------------

def compiled_for(itemsize: int) -> bool:
    """Whether host arrays of this itemsize run the compiled passes (``available`` without arrays)."""
    return itemsize in (4, 8) and resources.compiled_enabled() and _build() is not None


def output_pass(rows: int, count: int, run: int, itemsize: int) -> tuple:
    """(multiply-adds per inner term, positions computed) of a compiled output pass over ``count``
    positions in runs of ``run``: rows padded to whole vectors, runs to whole micro-blocks; the
    multiply-adds are counted in full-width vector lanes (half-width vectors do half the work per
    instruction)."""
    b = Blocking(rows, itemsize)
    P = micro_blocks(run, b.P)
    positions = -(-count // run) * (-(-run // P) * P)
    return b.padded * _width_cost(b, itemsize), positions


def weight_pass(rows: int, inner: int, itemsize: int) -> tuple:
    """(multiply-adds per position, per-thread accumulator rows) of a compiled weight pass with
    ``inner`` = C * taps rows of gw (padded to whole blocks of R)."""
    b = Blocking(rows, itemsize)
    padded_inner = -(-inner // b.R) * b.R
    return padded_inner * b.padded * _width_cost(b, itemsize), padded_inner


def padded_rows(rows: int, itemsize: int) -> int:
    return Blocking(rows, itemsize).padded


def _width_cost(b: Blocking, itemsize: int) -> float:
    """Cost per multiply-add of a half-width (quarter-width) vector against a full one: measured 1.4x
    (3x3 32 -> 32: 154-172 G multiply-adds/s in 16 lanes, 103-122 in 8), not 2x: narrow vectors
    issue on more ports."""
    return math.sqrt((machine()[0] // itemsize) / b.VW)
