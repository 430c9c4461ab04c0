"""The FFT engine's channel sums over frequency-last spectra (fft_conv.py, ``frequency_last``).

With few channels and rows, a batched matmul over the frequencies makes one tiny BLAS call per
frequency (a 4x4 product: ~150 ns for 32 multiply-adds). Here each sum is instead a loop over
the small axis summed over (channels, or rows for the filter gradient), each term one broadcast
product of whole spectra: vector loops over the contiguous frequencies, ~1 ns a multiply-add.

Measured and not kept (2-core machine, 2x4x4 channels, 36864 frequencies): blocks of frequencies
with all terms per block, to keep the result in cache, ran 1.7-11x slower (NumPy's per-call cost
on 4-D views); the blocks split over two threads no faster (memory-bound); ``einsum`` and a
broadcast product summed over its channel axis 2-2.7x slower.
"""
from __future__ import annotations

import math

# The later terms' products go through one temporary this size, block after block of frequencies:
# a temporary as large as the result is fresh memory on every call, and its page faults cost more
# than the multiply-adds (2-3 ms of a 5 ms product at 2x4x4 channels and 36864 frequencies, where
# the sum itself takes ~1 ms in cache). Small blocks cost NumPy's per-call overhead instead.
SPARE_BYTES = 1 << 19


def correlate(xp, X, Wc):
    """Y^ (rows, g, c_O/g, F) = sum_c X^ (rows, g, C, F) . conj(W^), given as Wc (g, C, c_O/g, F)."""
    return sum_of_products(xp, [(X[:, :, c, None], Wc[None, :, c]) for c in range(X.shape[2])])


def input_grad(xp, G, W):
    """gX^ (rows, g, C, F) = sum_o G^ (rows, g, c_O/g, F) . W^ (c_O/g, g, C, F)."""
    return sum_of_products(xp, [(G[:, :, o, None], W[o][None]) for o in range(G.shape[2])])


def weight_grad(xp, Gc, X):
    """gW^ (g, c_O/g, C, F) = sum over rows of conj(G^) (rows, g, c_O/g, F) . X^ (rows, g, C, F), given
    the conjugate Gc = conj(G^)."""
    return sum_of_products(xp, [(Gc[r][:, :, None], X[r][:, None]) for r in range(Gc.shape[0])])


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
