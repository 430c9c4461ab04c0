"""Transforms along an axis where little of it is data (a filter of k taps in an L-point plan, a
filter gradient cut to k of L outputs) as products with a k-column slice of the DFT matrix.

A pruned FFT still transforms each line at its full length: for 64 filters of 9^3 taps in a
32^3 plan, half the FFT engine's transform time in a 3-D forward + backward. The DFT matrix's
slice does k multiply-adds per output instead (a 9-tap axis into 32 points: 9 x 32 per line
against a 32-point FFT), as one BLAS product per thread, which on the host ran at several times the
pruned FFT's rate per line (``pays``). Host (NumPy) arrays only; the matrices are made in float64
and kept per (extent, length, dtype).

Shapes: ``forward_real(a, n, axis)``: a (..., e, ...) real -> (..., n // 2 + 1, ...) complex, as
``rfft(a, n)``; ``forward(a, n, axis)``: complex e -> n, as ``fft(a, n)``; ``inverse(a, n, crop, axis)``:
complex n -> its first ``crop`` outputs of ``ifft(a, n)``; ``inverse_real(a, n, crop, axis)``:
(..., n // 2 + 1, ...) complex -> the first ``crop`` outputs of ``irfft(a, n)`` (real). ``split(count,
task)`` runs ``task(slice)`` over range(count), in parts on threads if it likes (``backend.rfftn``
passes its thread pool's; the default runs it whole here).
"""
from __future__ import annotations

import functools
import math

import numpy as np

from .resources import num_threads

# An axis goes through the DFT matrix where its extent e (data in, or outputs kept) is at most
# this many times log2 of its length n (per line e * n multiply-adds at BLAS's rate against a
# length-n FFT) and its lines make at least DFT_MIN_MADDS multiply-adds in all (below that the
# product's hand-off and copies cost more than they save: a 2-D 7x7 filter in a 30-point plan,
# 13x13 filters in 80 points for 64 channel pairs). Measured on the host, docs/benchmarks.md
# ("Twenty-first round").
DFT_MAX_RATIO = 2.5
DFT_MIN_MADDS = 4_000_000


def pays(extent: int, length: int, lines: int) -> bool:
    """Whether ``lines`` lines of ``extent`` data cells (or kept outputs) in a ``length``-point
    transform run faster as one DFT-matrix product than as FFTs of whole lines."""
    return (extent < length and extent <= DFT_MAX_RATIO * math.log2(max(length, 2))
            and lines * extent * length >= DFT_MIN_MADDS)


@functools.lru_cache(maxsize=64)
def _matrix(rows: int, cols: int, length: int, dtype, inverse: bool) -> np.ndarray:
    """exp(-+2 pi i r c / length) for r < rows, c < cols (rows x cols), 1/length on the inverse."""
    phase = np.outer(np.arange(rows), np.arange(cols)) % length * (2 * np.pi / length)
    m = np.exp(1j * phase) / length if inverse else np.exp(-1j * phase)
    m = m.astype(dtype)
    m.flags.writeable = False
    return m


@functools.lru_cache(maxsize=64)
def _real_forward(extent: int, length: int, dtype) -> np.ndarray:
    """(extent, 2 * (length // 2 + 1)) real: x (..., extent) @ it = rfft(x, length) as interleaved
    (re, im) pairs."""
    m = _matrix(length // 2 + 1, extent, length, np.complex128, False).T
    out = np.empty((extent, 2 * m.shape[1]), dtype)
    out[:, 0::2], out[:, 1::2] = m.real, m.imag
    out.flags.writeable = False
    return out


@functools.lru_cache(maxsize=64)
def _real_inverse(length: int, crop: int, dtype) -> np.ndarray:
    """(2 * (length // 2 + 1), crop) real: the half spectrum's interleaved (re, im) pairs @ it =
    irfft(., length)[:crop] (the conjugate half counted twice; the imaginary parts of the zero and,
    for even lengths, the Nyquist frequency ignored, as irfft does)."""
    half = length // 2 + 1
    weight = np.full(half, 2.0)
    weight[0] = 1.0
    if length % 2 == 0:
        weight[-1] = 1.0
    phase = np.outer(np.arange(half), np.arange(crop)) % length * (2 * np.pi / length)
    out = np.empty((2 * half, crop), dtype)
    out[0::2] = weight[:, None] * np.cos(phase) / length
    out[1::2] = -weight[:, None] * np.sin(phase) / length
    out[1, :] = 0.0
    if length % 2 == 0:
        out[-1, :] = 0.0
    out.flags.writeable = False
    return out


def _serial(total: int, task) -> None:
    task(slice(0, total))


def _last_axis_product(a, mat, out_cols: int, out_dtype, split):
    """a (..., k) @ mat (k, out_cols) into a new (..., out_cols) array of ``out_dtype`` viewed from
    the real product, rows split over the threads by ``split(count, task)``."""
    flat = np.ascontiguousarray(a).reshape(-1, a.shape[-1])
    out = np.empty((flat.shape[0], mat.shape[1]), mat.dtype)

    def task(s):
        np.matmul(flat[s], mat, out=out[s])

    split(flat.shape[0], task)
    return out.view(out_dtype).reshape(a.shape[:-1] + (out_cols,))


def _axis_product(a, mat, axis: int, split):
    """mat (m, e) applied along ``axis`` (of extent e) of complex ``a``: (..., m, ...)."""
    axis %= a.ndim
    lead, e, rest = a.shape[:axis], a.shape[axis], a.shape[axis + 1:]
    L, R = math.prod(lead), math.prod(rest)
    src = np.ascontiguousarray(a).reshape(L, e, R)
    out = np.empty((L, mat.shape[0], R), a.dtype)
    if L >= num_threads():
        split(L, lambda s: np.matmul(mat, src[s], out=out[s]))
    else:
        split(R, lambda s: np.matmul(mat, src[:, :, s], out=out[:, :, s]))
    return out.reshape(lead + (mat.shape[0],) + rest)


def _complex_of(dtype) -> np.dtype:
    return np.result_type(dtype, np.complex64)


def forward_real(a, n: int, axis: int, split=_serial):
    """rfft(a, n, axis) for real ``a`` whose ``axis`` holds fewer than n cells (the rest zeros)."""
    a = np.moveaxis(a, axis, -1)
    ctype = _complex_of(a.dtype)
    real = np.finfo(ctype).dtype
    out = _last_axis_product(a.astype(real, copy=False), _real_forward(a.shape[-1], n, real), n // 2 + 1, ctype, split)
    return np.moveaxis(out, -1, axis)


def forward(a, n: int, axis: int, split=_serial):
    """fft(a, n, axis) for complex ``a`` whose ``axis`` holds fewer than n cells."""
    return _axis_product(a, _matrix(n, a.shape[axis], n, a.dtype, False), axis, split)


def inverse(a, n: int, crop: int, axis: int, split=_serial):
    """ifft(a, n, axis) cut to its first ``crop`` entries along ``axis`` (``a`` holds n there)."""
    return _axis_product(a, _matrix(crop, n, n, a.dtype, True), axis, split)


def inverse_real(a, n: int, crop: int, axis: int, split=_serial):
    """irfft(a, n, axis) cut to its first ``crop`` entries (``a`` holds n // 2 + 1 there)."""
    a = np.moveaxis(a, axis, -1)
    real = a.real.dtype
    pairs = np.ascontiguousarray(a).view(real)
    out = _last_axis_product(pairs, _real_inverse(n, crop, real), crop, real, split)
    return np.moveaxis(out, -1, axis)
