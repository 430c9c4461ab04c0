"""The frequency-last channel sums as a register-blocked vector micro-kernel (LLVM vector IR).

The same sums as frequency_kernel.py, out[p, i, j, f] = sum_k a[p, i, k, f] * b[p, k, j, f] with
a or b conjugated, over complex operands stored (re, im) interleaved with the frequencies last.
frequency_kernel's loop, vectorised by LLVM over f, keeps its accumulators in memory (a load and a
store per multiply-add, and the interleaved values split and merged around each); this kernel keeps
an IB x JB block of outputs in registers for the whole sum over k, as the direct engine's
micro-kernels do (direct_kernel.py), on vectors of VW reals = VW / 2 frequencies:

    per k: load IB vectors x_i of a and JB vectors y_j of b; y_j's real parts duplicated into
    both lanes of each frequency (yr) and its imaginary parts likewise (yi); then
    A_ij += x_i * yr_j and B_ij += x_i * yi_j   (2 IB JB fused multiply-adds, no other work)

so A_ij holds (sum xr yr, sum xi yr) and B_ij (sum xr yi, sum xi yi) per frequency, and once at the
end the product (or either conjugate) is A_ij +/- B_ij with B's lanes swapped, one store per output.
One thread, 8 x 16 x 16 channels over 2049 frequencies (the forward of a 1-D layer, float32): 0.64
ms against frequency_kernel's 1.1 (50 against 30 G FLOP/s; such sums stream their operands from
memory, which bounds both); in the FFT engine's layers, 0.55-0.85x its time (``CHUNK_BYTES``).
Frequencies past the last whole vector are left to frequency_kernel.
"""
from __future__ import annotations

import functools
import logging
import marshal
import threading
import zlib

import numpy as np

from . import direct_kernel, numba_cache

log = logging.getLogger(__name__)

_build_lock = threading.Lock()


def _cmac_block_typer(typingctx, IB, JB, VW, isz, mode, a, a_is, a_ks, b, b_ks, b_js, K, out, o_is, o_js):
    """out[i * o_is + j * o_js + lane] for the IB x JB block, one vector of VW reals (VW / 2
    frequencies) = sum_{k < K} a[i * a_is + k * a_ks] * b[k * b_ks + j * b_js] as complex numbers,
    conj(b) for mode 1, conj(a) for mode 2 (addresses as integers, strides in reals; IB .. mode literal)."""
    from llvmlite import ir
    from numba import types
    sizes = direct_kernel._literals(IB, JB, VW, isz, mode)
    if sizes is None:
        return None
    IB_, JB_, VW_, itemsize, mode_ = sizes
    i64, i32 = ir.IntType(64), ir.IntType(32)
    sig = types.void(IB, JB, VW, isz, mode, *([types.intp] * 10))

    def codegen(context, builder, signature, args):
        a_a, a_is_, a_ks_, b_a, b_ks_, b_js_, count, o_a, o_is_, o_js_ = args[5:]
        vt, fma, sp, vp = direct_kernel._vector_ops(builder, ir, itemsize, VW_)
        a_p, b_p, o_p = (builder.inttoptr(v, sp) for v in (a_a, b_a, o_a))
        undef = ir.Constant(vt, ir.Undefined)

        def lanes(order):
            return ir.Constant(ir.VectorType(i32, VW_), order)
        real_parts = lanes([n - n % 2 for n in range(VW_)])       # (re, re) of each frequency
        imag_parts = lanes([n - n % 2 + 1 for n in range(VW_)])   # (im, im)
        swapped = lanes([n ^ 1 for n in range(VW_)])
        rows = [builder.gep(a_p, [builder.mul(ir.Constant(i64, i), a_is_)]) for i in range(IB_)]
        cols = [builder.gep(b_p, [builder.mul(ir.Constant(i64, j), b_js_)]) for j in range(JB_)]

        def load(base, offset):
            return builder.load(builder.bitcast(builder.gep(base, [offset]), vp), align=itemsize)

        def step(k, acc):
            xs = [load(r, builder.mul(k, a_ks_)) for r in rows]
            new = list(acc)
            for j in range(JB_):
                y = load(cols[j], builder.mul(k, b_ks_))
                yr = builder.shuffle_vector(y, undef, real_parts)
                yi = builder.shuffle_vector(y, undef, imag_parts)
                for i in range(IB_):
                    n = 2 * (i * JB_ + j)
                    new[n] = builder.call(fma, [xs[i], yr, acc[n]])
                    new[n + 1] = builder.call(fma, [xs[i], yi, acc[n + 1]])
            return new

        final = direct_kernel._counted_loop(builder, ir, count, [ir.Constant(vt, [0.0] * VW_)] * (2 * IB_ * JB_), step)
        # x y = (A.re - Bs.re, A.im + Bs.im); x conj(y) = (A.re + Bs.re, A.im - Bs.im);
        # conj(x) y = (Bs.re + A.re, Bs.im - A.im), Bs = B with each frequency's two lanes swapped
        sign = ir.Constant(vt, [(-1.0 if n % 2 == 0 else 1.0) if mode_ == 0 else (1.0 if n % 2 == 0 else -1.0)
                                for n in range(VW_)])
        for i in range(IB_):
            for j in range(JB_):
                A, B = final[2 * (i * JB_ + j)], final[2 * (i * JB_ + j) + 1]
                Bs = builder.shuffle_vector(B, undef, swapped)
                first, second = (Bs, A) if mode_ == 2 else (A, Bs)
                at = builder.add(builder.mul(ir.Constant(i64, i), o_is_), builder.mul(ir.Constant(i64, j), o_js_))
                builder.store(builder.call(fma, [second, sign, first]),
                              builder.bitcast(builder.gep(o_p, [at]), vp), align=itemsize)
        return context.get_dummy_value()

    return sig, codegen


literally = _cmac_block = None   # bound by _build (Numba resolves a compiled function's globals then)


def _blocks_loop(a, a_s, b, b_s, out, o_s, counts, chunk, f0, f1, IB, JB, VW, isz, mode, stamp):   # pragma: no cover - compiled
    """The sums over frequencies f0 .. fv - 1, fv the end of the last whole vector of VW / 2 from
    f0 (returned: the caller sums fv .. f1 - 1 elsewhere). a, b, out: 1-D real views; a_s (p, i, k),
    b_s (p, k, j), o_s (p, i, j) strides in complex elements; counts (p, i, j, k). Blocks of IB x JB
    outputs, an odd last row or column in blocks of 1; ``chunk`` frequencies (whole vectors) at a
    time through every block, so that the operands' lines are read again from cache (``chunk_of``).
    ``stamp``: unused, a literal that keys the compiled loop on direct_kernel's helpers."""
    literally(IB)
    literally(JB)
    literally(VW)
    literally(isz)
    literally(mode)
    literally(stamp)   # only a key: see _helpers_stamp
    P, I, J, K = counts[0], counts[1], counts[2], counts[3]
    CW = VW // 2
    fv = f0 + (f1 - f0) // CW * CW
    a0, b0, o0 = a.ctypes.data, b.ctypes.data, out.ctypes.data
    ai, ak, bk, bj, oi, oj = 2 * a_s[1], 2 * a_s[2], 2 * b_s[1], 2 * b_s[2], 2 * o_s[1], 2 * o_s[2]
    I2, J2 = I - I % IB, J - J % JB
    for p in range(P):
        for fb in range(f0, fv, chunk):
            fe = min(fb + chunk, fv)
            for i0 in range(0, I, IB):
                for j0 in range(0, J, JB):
                    for f in range(fb, fe, CW):
                        pa = a0 + 2 * (p * a_s[0] + i0 * a_s[1] + f) * isz
                        pb = b0 + 2 * (p * b_s[0] + j0 * b_s[2] + f) * isz
                        po = o0 + 2 * (p * o_s[0] + i0 * o_s[1] + j0 * o_s[2] + f) * isz
                        if i0 < I2 and j0 < J2:
                            _cmac_block(IB, JB, VW, isz, mode, pa, ai, ak, pb, bk, bj, K, po, oi, oj)
                        elif i0 < I2:   # the last columns, one at a time
                            for j in range(J - j0):
                                _cmac_block(IB, 1, VW, isz, mode, pa, ai, ak, pb + j * bj * isz, bk, bj, K,
                                            po + j * oj * isz, oi, oj)
                        elif j0 < J2:   # the last rows, one at a time
                            for i in range(I - i0):
                                _cmac_block(1, JB, VW, isz, mode, pa + i * ai * isz, ai, ak, pb, bk, bj, K,
                                            po + i * oi * isz, oi, oj)
                        else:
                            for i in range(I - i0):
                                for j in range(J - j0):
                                    _cmac_block(1, 1, VW, isz, mode, pa + i * ai * isz, ai, ak, pb + j * bj * isz,
                                                bk, bj, K, po + i * oi * isz + j * oj * isz, oi, oj)
    return fv


@functools.cache
def _build():
    """``_blocks_loop`` as a Numba dispatcher (cached on disk where Numba can), or None."""
    if direct_kernel._numba() is None:
        return None
    loops = numba_cache.compiled_with_intrinsics(globals(), {"_cmac_block": _cmac_block_typer}, (_blocks_loop,),
                                                 "the channel sums run in frequency_kernel's loop", nogil=True)
    return loops[0] if loops else None


def blocking(itemsize: int) -> tuple:
    """(IB, JB, VW): outputs per block and reals per vector on this CPU. 2 x 4 blocks take 16
    accumulators, 2 + 3 more registers for the operands (32 registers, AVX-512); 2 x 2 take 8 + 5 (16)."""
    vector_bytes, registers = direct_kernel.machine()
    return (2, 4 if registers >= 32 else 2, vector_bytes // itemsize)


# Frequencies per pass through the blocks: long runs of each row. The operands' and outputs' rows are
# F frequencies apart (often a multiple of 4 KiB), so short runs make many streams of a line or two
# that the prefetchers do not follow. Per product in the FFT engine (2 threads, 8 layers of the
# benchmark's table, medians of 15): runs of at most 16-32 frequencies (64 KiB a pass) left the
# weight gradient's sums (K = the rows, 2-8) up to 1.6x slower than frequency_kernel's loop; passes of
# 1 MiB and up to 1024 frequencies made all three sums 0.55-0.85x its time.
CHUNK_BYTES = 1 << 20
MAX_CHUNK = 1024


def chunk_of(counts: tuple, itemsize: int) -> int:
    """Frequencies per pass through the blocks: as many as keep one pass's operands and outputs
    (I K + K J + I J complex rows) within CHUNK_BYTES, whole vectors, one vector to MAX_CHUNK."""
    _, I, J, K = counts
    lanes = blocking(itemsize)[2] // 2
    fit = CHUNK_BYTES // (2 * itemsize * (I * K + K * J + I * J))
    return max(lanes, min(MAX_CHUNK, fit) // lanes * lanes)


def loop(itemsize: int, mode: int):
    """loop(a, a_s, b, b_s, out, o_s, counts, chunk, f0, f1) -> fv (``_blocks_loop``) for this dtype and
    conjugation (0: none, 1: b, 2: a) on this CPU's vectors, or None where it does not compile
    (frequency_kernel's loop then sums every frequency)."""
    if itemsize not in (4, 8) or mode not in (0, 1, 2):
        raise ValueError(f"the vector loop sums float32 or float64 lanes in modes 0-2, not {itemsize} bytes, mode {mode}")
    return _compiled(*blocking(itemsize), itemsize, mode)


def code_stamp(functions) -> int:
    """A number that changes when any of ``functions``' code does (their compiled code objects)."""
    return zlib.crc32(b"".join(marshal.dumps(f.__code__) for f in functions))


@functools.cache
def _helpers_stamp() -> int:
    """The stamp of direct_kernel's IR helpers that this kernel's code is built from. Numba's disk
    cache only watches the file of the function it compiles (this one): the loop takes the stamp as
    a literal argument, so a change to those helpers compiles a new loop instead of loading a stale one."""
    return code_stamp((direct_kernel._vector_ops, direct_kernel._counted_loop, direct_kernel._literals))


@functools.lru_cache(maxsize=None)
def _compiled(IB: int, JB: int, VW: int, itemsize: int, mode: int):
    dispatcher = _build()
    if dispatcher is None:
        return None
    dtype = np.float32 if itemsize == 4 else np.float64
    one = np.zeros(2 * VW, dtype)
    args = (one, (1, 1, 1), one, (1, 1, 1), one.copy(), (1, 1, 1), (1, 1, 1, 1), VW // 2, 0, 0)
    try:
        with _build_lock:
            return direct_kernel._specialised(dispatcher, args, (IB, JB, VW, itemsize, mode, _helpers_stamp()))
    except Exception as exc:  # noqa: BLE001 - LLVM or Numba failing on this CPU: the plain loop instead
        log.warning("the channel sums' vector loop does not compile (%s): frequency_kernel's loop runs", exc)
        return None
