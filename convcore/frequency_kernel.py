"""The frequency-last channel sums as one compiled loop (Numba), on the host.

Each of the FFT engine's three products is, per group p and frequency f, a small complex matrix
product: out[p, i, j, f] = sum_k a[p, i, k, f] * b[p, k, j, f] (either operand conjugated). NumPy
runs it either as one BLAS call per frequency (~150 ns a call: a 2x8x8 product runs at 3-5
GFLOP/s) or as broadcast products of whole spectra (frequency_last.py: a pass over memory per
term). This loop keeps a block of frequencies of four outputs (two rows by two columns) in
accumulators and sums every term into them, vectorised over the contiguous frequencies: each
operand block it reads serves two outputs (one output at a time, as an odd last row or column
still runs: 16-18 GFLOP/s on one core here; two by two: 22-37). The FFT engine's layers took
0.80-0.95x the time they took with the one-output loop (docs/benchmarks.md, "Fifteenth round").
Whole vectors of frequencies now go through frequency_vector.py's micro-kernel, which keeps its
outputs in registers (the products 0.55-0.85x this loop's time); this loop sums the rest, and all
of them where that kernel does not compile or both operands are conjugated.
BLAS's per-frequency products reach more only from ~16k multiply-adds a frequency
(``costs.FREQUENCY_LAST_MAX_MADDS_COMPILED``).

Operands are C-contiguous complex arrays, read through real views with element strides, so one
compiled function (per real dtype) serves every product, layout and conjugation.
frequency_last.py is the NumPy path beside it (and what runs where Numba is missing or
``CONVCORE_COMPILED=0``). The split over threads gives each frequency to one thread, and the sum
over k runs in the same order in any split: results do not depend on the thread count.
"""
from __future__ import annotations

import functools
import logging

import numpy as np

from . import backend, frequency_vector, numba_cache, resources

_log = logging.getLogger(__name__)

BLOCK = 128          # frequencies per accumulator: eight float arrays that stay in L1
SPLIT_MADDS = 1 << 21   # complex multiply-adds below which a second thread costs more than it saves
VECTOR = True        # whole vectors of frequencies through frequency_vector's micro-kernel (this loop: the rest)


def _sum_products(a, a_s, sa, b, b_s, sb, out, o_s, counts, f0, f1):   # pragma: no cover - compiled
    """out[p, i, j, f0:f1] = sum_k a[p, i, k, f0:f1] * b[p, k, j, f0:f1], in blocks of frequencies.

    a, b, out: 1-D real views (re, im interleaved). a_s (p, i, k), b_s (p, k, j), o_s (p, i, j):
    strides in complex elements; sa, sb: +1, or -1 to conjugate. counts: (p, i, j, k)."""
    acc = np.empty((8, BLOCK), dtype=out.dtype)
    I, J, K = counts[1], counts[2], counts[3]
    I2, J2 = I - I % 2, J - J % 2   # rows and columns in pairs; an odd last one on its own below
    single = (I % 2) * J + (J % 2) * I2   # outputs outside the pairs: the last row, the last column
    for p in range(counts[0]):
        for fb in range(f0, f1, BLOCK):
            n = min(BLOCK, f1 - fb)
            for i0 in range(0, I2, 2):
                i1 = i0 + 1
                for j0 in range(0, J2, 2):
                    j1 = j0 + 1
                    acc[:, :n] = 0
                    r00, m00, r01, m01 = acc[0], acc[1], acc[2], acc[3]
                    r10, m10, r11, m11 = acc[4], acc[5], acc[6], acc[7]
                    for k in range(K):
                        # Slices first: indices from 0 let LLVM drop the negative-index check and
                        # vectorise the loop over f (indexing at an offset ran ~4x slower).
                        ao0 = 2 * (p * a_s[0] + i0 * a_s[1] + k * a_s[2] + fb)
                        ao1 = 2 * (p * a_s[0] + i1 * a_s[1] + k * a_s[2] + fb)
                        bo0 = 2 * (p * b_s[0] + k * b_s[1] + j0 * b_s[2] + fb)
                        bo1 = 2 * (p * b_s[0] + k * b_s[1] + j1 * b_s[2] + fb)
                        x0 = a[ao0:ao0 + 2 * n]
                        x1 = a[ao1:ao1 + 2 * n]
                        y0 = b[bo0:bo0 + 2 * n]
                        y1 = b[bo1:bo1 + 2 * n]
                        for f in range(n):
                            xr0 = x0[2 * f]
                            xi0 = sa * x0[2 * f + 1]
                            xr1 = x1[2 * f]
                            xi1 = sa * x1[2 * f + 1]
                            yr0 = y0[2 * f]
                            yi0 = sb * y0[2 * f + 1]
                            yr1 = y1[2 * f]
                            yi1 = sb * y1[2 * f + 1]
                            r00[f] += xr0 * yr0 - xi0 * yi0
                            m00[f] += xr0 * yi0 + xi0 * yr0
                            r01[f] += xr0 * yr1 - xi0 * yi1
                            m01[f] += xr0 * yi1 + xi0 * yr1
                            r10[f] += xr1 * yr0 - xi1 * yi0
                            m10[f] += xr1 * yi0 + xi1 * yr0
                            r11[f] += xr1 * yr1 - xi1 * yi1
                            m11[f] += xr1 * yi1 + xi1 * yr1
                    for di in range(2):
                        for dj in range(2):
                            oo = 2 * (p * o_s[0] + (i0 + di) * o_s[1] + (j0 + dj) * o_s[2] + fb)
                            ov = out[oo:oo + 2 * n]
                            re = acc[4 * di + 2 * dj]
                            im = acc[4 * di + 2 * dj + 1]
                            for f in range(n):
                                ov[2 * f] = re[f]
                                ov[2 * f + 1] = im[f]
            for s in range(single):   # one output at a time (2 x 2 with a row repeated: 4/3-4x the work)
                i, j = (I - 1, s) if s < (I % 2) * J else (s - (I % 2) * J, J - 1)
                accr, acci = acc[0], acc[1]
                accr[:n] = 0
                acci[:n] = 0
                for k in range(K):
                    ao = 2 * (p * a_s[0] + i * a_s[1] + k * a_s[2] + fb)
                    bo = 2 * (p * b_s[0] + k * b_s[1] + j * b_s[2] + fb)
                    av = a[ao:ao + 2 * n]
                    bv = b[bo:bo + 2 * n]
                    for f in range(n):
                        ar = av[2 * f]
                        ai = sa * av[2 * f + 1]
                        br = bv[2 * f]
                        bi = sb * bv[2 * f + 1]
                        accr[f] += ar * br - ai * bi
                        acci[f] += ar * bi + ai * br
                oo = 2 * (p * o_s[0] + i * o_s[1] + j * o_s[2] + fb)
                ov = out[oo:oo + 2 * n]
                for f in range(n):
                    ov[2 * f] = accr[f]
                    ov[2 * f + 1] = acci[f]


# Compiled ahead for both real dtypes, so that a first call never compiles (or fails to write the
# disk cache) in the middle of a convolution or of ``auto``'s timing.
_SIGNATURES = [f"void({t}[::1], UniTuple(int64, 3), {t}, {t}[::1], UniTuple(int64, 3), {t}, {t}[::1], "
               f"UniTuple(int64, 3), UniTuple(int64, 4), int64, int64)" for t in ("float32", "float64")]


@functools.cache
def _kernel():
    """``_sum_products`` compiled for float32 and float64 (on first use: about a second; then read
    from Numba's disk cache, ~0.3 s), or None where Numba does not import or compile: then the
    NumPy sums run, and the reason is logged once (a warning: those layers run 1.3-2x slower).

    Only FMA contraction of the fast-math flags: the loop vectorises without the others, and
    NaN and inf keep NumPy's semantics."""
    try:
        import numba
    except ImportError:
        return None   # not installed: the NumPy sums, as documented
    except Exception as exc:  # noqa: BLE001 - a Numba build that does not load with this NumPy raises anything
        _log.warning("Numba does not load (%s): the FFT engine's channel sums run in NumPy", exc)
        return None
    options = {"nogil": True, "fastmath": {"contract"}}
    try:
        # compiled (or loaded) signature by signature only after its saves take the cache's lock
        kernel = numba_cache.lock_saves(numba.njit(cache=True, **options)(_sum_products))
        from numba.core.sigutils import normalize_signature
        for signature in _SIGNATURES:
            kernel.compile(signature)
            if tuple(normalize_signature(signature)[0]) not in kernel.overloads:   # another's code came back
                raise RuntimeError(f"the cache's index sends {signature} to another signature's code")
        kernel.disable_compile()   # as numba.njit(signatures) leaves it: no other types
        return kernel
    except Exception as exc:  # noqa: BLE001 - the cache's folder, files or index: compile without it
        _log.info("Numba's disk cache is not usable (%s): the channel sums compile in each process", exc)
    try:
        return numba.njit(_SIGNATURES, **options)(_sum_products)
    except Exception as exc:  # noqa: BLE001 - LLVM or Numba failing on this CPU: NumPy instead
        _log.warning("Numba cannot compile the channel sums (%s): they run in NumPy", exc)
        return None


def warm(itemsize: int | None = None) -> None:
    """Compile (or load from Numba's disk cache) the loops for float32 and float64 (or the real
    ``itemsize`` given) and every conjugation now (``convcore.warm_up``; ``auto`` before it times the
    engines): where nothing is cached, each vector loop compiles for about a second on first use."""
    _kernel()
    for size in (4, 8) if itemsize is None else {itemsize} & {4, 8}:
        for mode in (0, 1, 2):
            frequency_vector.loop(size, mode)


def available(xp) -> bool:
    """Whether the compiled sums run for ``xp``: NumPy arrays, Numba importable, not switched off."""
    return xp is np and resources.compiled_enabled() and _kernel() is not None


def _strides(arr, axes) -> tuple:
    """Element strides of ``arr`` (C-contiguous complex) along ``axes``."""
    return tuple(arr.strides[ax] // arr.itemsize for ax in axes)


def sum_products(a, a_axes, b, b_axes, out, out_axes, counts, conj_a=False, conj_b=False):
    """out[p, i, j, :] = sum_k a[p, i, k, :] * b[p, k, j, :], conjugating a or b if asked.

    a, b, out: complex arrays of one dtype whose last axis is the frequencies (the same length in
    all three); out C-contiguous, a and b copied if they are not (the engine's spectra are).
    ``a_axes`` names a's axes for (p, i, k), ``b_axes`` b's for (p, k, j), ``out_axes`` out's for
    (p, i, j); counts: the sizes of (p, i, j, k), checked against the shapes (the loop itself reads
    without bounds checks). Work over SPLIT_MADDS is split over the frequencies between convcore's
    threads, whole blocks each, where there are at least as many blocks as threads."""
    a, b = np.ascontiguousarray(a), np.ascontiguousarray(b)
    if not out.flags.c_contiguous or not a.dtype == b.dtype == out.dtype or out.dtype.kind != "c":
        raise ValueError("sum_products takes complex arrays of one dtype and a C-contiguous out")
    if any(sorted(axes) != [0, 1, 2] for axes in (a_axes, b_axes, out_axes)):
        raise ValueError(f"each operand's axes must name its three leading axes once: {a_axes, b_axes, out_axes}")
    P, I, J, K = (int(c) for c in counts)
    F = out.shape[-1]
    for name, arr, axes, sizes in (("a", a, a_axes, (P, I, K)), ("b", b, b_axes, (P, K, J)),
                                   ("out", out, out_axes, (P, I, J))):
        if tuple(arr.shape[ax] for ax in axes) != sizes or arr.shape[-1] != F or arr.ndim != 4:
            raise ValueError(f"{name} {arr.shape} along axes {axes} is not {sizes} x {F} frequencies")
    real = out.real.dtype.type   # the signs in the operands' dtype: float32 stays float32
    args = (a.reshape(-1).view(real), _strides(a, a_axes), real(-1 if conj_a else 1),
            b.reshape(-1).view(real), _strides(b, b_axes), real(-1 if conj_b else 1),
            out.reshape(-1).view(real), _strides(out, out_axes), (P, I, J, K))
    kernel = _kernel()
    vector = frequency_vector.loop(out.itemsize // 2, 2 if conj_a else 1 if conj_b else 0) if (
        VECTOR and not (conj_a and conj_b)) else None
    vector_args = args[:2] + args[3:5] + args[6:] + (frequency_vector.chunk_of((P, I, J, K), out.itemsize // 2),)

    def frequencies(lo, hi):
        if vector is not None:
            lo = vector(*vector_args, lo, hi)   # whole vectors of frequencies; the rest below (signs: its mode)
        if lo < hi:
            kernel(*args, lo, hi)

    threads = resources.num_threads()   # the pool's size: convcore's one pool is kept per thread count
    if threads == 1 or P * I * J * K * F < SPLIT_MADDS or F < threads * BLOCK:
        frequencies(0, F)
        return out
    bounds = [F * t // threads // BLOCK * BLOCK for t in range(threads)] + [F]   # whole blocks each
    backend.run_split(threads, threads, lambda s: frequencies(bounds[s.start], bounds[s.stop]))
    return out
