"""The FFT engine's channel sums over frequency-last spectra (fft_conv.py, ``frequency_last``).

With few channels and rows, a batched matmul over the frequencies makes one tiny BLAS call per
frequency (a 4x4 product: ~150 ns for 32 multiply-adds). Each of the three sums here runs as one
compiled loop over the frequencies where it can (frequency_kernel.py: NumPy arrays, Numba, on by
default), else as a loop over the small axis summed over (channels, or rows for the filter
gradient), each term one broadcast product of whole spectra: vector loops over the contiguous
frequencies, ~1 ns a multiply-add. The engine picks this layout for small products only
(``costs.spectra_frequency_last``; larger with the compiled loop).

Measured and not kept (2-core machine, 2x4x4 channels, 36864 frequencies): blocks of frequencies
with all terms per block, to keep the result in cache, ran 1.7-11x slower (NumPy's per-call cost
on 4-D views); the blocks split over two threads no faster (memory-bound); ``einsum`` and a
broadcast product summed over its channel axis 2-2.7x slower.
"""
from __future__ import annotations

import math

from . import frequency_kernel

# The later terms' products go through one temporary this size, block after block of frequencies:
# a temporary as large as the result is fresh memory on every call, and its page faults cost more
# than the multiply-adds (2-3 ms of a 5 ms product at 2x4x4 channels and 36864 frequencies, where
# the sum itself takes ~1 ms in cache). Small blocks cost NumPy's per-call overhead instead.
SPARE_BYTES = 1 << 19


def correlate(xp, X, W):
    """Y^ (rows, g, c_O/g, F) = sum_c X^ (rows, g, C, F) . conj(W^ (c_O/g, g, C, F))."""
    rows, g, C, F = X.shape
    O = W.shape[0]
    if frequency_kernel.available(xp):
        out = xp.empty((rows, g, O, F), dtype=X.dtype)
        return frequency_kernel.sum_products(X, (1, 0, 2), W, (1, 2, 0), out, (1, 0, 2), (g, rows, O, C),
                                             conj_b=True)
    Wc = W.conj().transpose(1, 2, 0, 3)   # (g, C, c_O/g, F), F contiguous
    return sum_of_products(xp, [(X[:, :, c, None], Wc[None, :, c]) for c in range(C)])


def input_grad(xp, G, W):
    """gX^ (rows, g, C, F) = sum_o G^ (rows, g, c_O/g, F) . W^ (c_O/g, g, C, F)."""
    rows, g, O, F = G.shape
    C = W.shape[2]
    if frequency_kernel.available(xp):
        out = xp.empty((rows, g, C, F), dtype=G.dtype)
        return frequency_kernel.sum_products(G, (1, 0, 2), W, (1, 0, 2), out, (1, 0, 2), (g, rows, C, O))
    return sum_of_products(xp, [(G[:, :, o, None], W[o][None]) for o in range(O)])


def weight_grad(xp, G, X):
    """gW^ (g, c_O/g, C, F) = sum over rows of conj(G^ (rows, g, c_O/g, F)) . X^ (rows, g, C, F).

    G is consumed: the NumPy path conjugates it in place (it is not read again), not in a copy."""
    rows, g, O, F = G.shape
    C = X.shape[2]
    if frequency_kernel.available(xp):
        out = xp.empty((g, O, C, F), dtype=G.dtype)
        return frequency_kernel.sum_products(G, (1, 2, 0), X, (1, 0, 2), out, (0, 1, 2), (g, O, C, rows),
                                             conj_a=True)
    Gc = xp.conjugate(G, out=G)
    return sum_of_products(xp, [(Gc[r][:, :, None], X[r][:, None]) for r in range(rows)])


def sum_of_products(xp, terms: list):
    """sum of a * b over the pairs (a, b) of ``terms``, each pair broadcast to the result's shape;
    the last axis (the frequencies) is the same length in every operand."""
    out = xp.multiply(*terms[0])
    if len(terms) == 1:
        return out
    lead, F = math.prod(out.shape[:-1]), out.shape[-1]
    step = max(1, min(F, SPARE_BYTES // (lead * out.itemsize)))
    spare = xp.empty(out.shape[:-1] + (step,), dtype=out.dtype)
    for lo in range(0, F, step):
        s = slice(lo, lo + step)
        block = out[..., s]
        tmp = spare[..., :block.shape[-1]]
        for a, b in terms[1:]:
            xp.multiply(a[..., s], b[..., s], out=tmp)
            block += tmp
    return out
