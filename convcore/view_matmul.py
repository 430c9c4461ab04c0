"""Batched products of strided views, without copying them first: cuBLAS on a device.

BLAS needs only one unit stride per matrix and a leading dimension, but CuPy's matmul copies
every operand that is not contiguous. The direct engine's tap products on a device read
windows of one long array, ``A[:, :, off:off + P]`` (rows ``ld`` apart, ``ld`` > P), and their
copies were most of a small kernel's time; here such views go to cuBLAS as they are, one
``gemmStridedBatched`` call with their pointers, leading dimensions and batch strides.

cuBLAS is column-major: a row-major (M, N) matrix with rows ``ld`` apart is its (N, M) matrix
with leading dimension ``ld``. So ``out = a @ b`` is asked as ``out^T = b^T @ a^T``.
On the host, and for views BLAS cannot describe (negative or zero strides), it is matmul.
"""
from __future__ import annotations

import numpy as np

from . import backend

_INT_MAX = 2**31 - 1   # cuBLAS's sizes and leading dimensions are C ints
_GEMMS = {"f": "sgemmStridedBatched", "d": "dgemmStridedBatched"}


def matmul_into(xp, a, b, out, accumulate: bool = False) -> None:
    """out[i] = a[i] @ b[i], or out[i] += a[i] @ b[i] when ``accumulate``.

    a (g, M, K), b (g, K, N), out (g, M, N): views of one dtype, any strides; ``out`` must not
    overlap ``a`` or ``b``. On a device with a registered cuBLAS wrapper, views with a unit
    stride in one of their two matrix axes are read in place."""
    g, M, N = out.shape
    if a.shape != (g, M, a.shape[-1]) or b.shape != (g, a.shape[-1], N):
        raise ValueError(f"matmul_into: shapes {a.shape} @ {b.shape} -> {out.shape} do not match")
    if M == 0 or N == 0 or g == 0:
        return
    if a.shape[-1] == 0:   # an empty sum
        if not accumulate:
            out[...] = 0
        return
    if not backend.is_host_module(xp):
        blas = backend.blas_module(xp)
        if blas is not None and _cublas_gemm(xp, blas, a, b, out, accumulate):
            return
    if accumulate:
        out += xp.matmul(a, b)
    else:
        xp.matmul(a, b, out=out)


def _operand(v, item: int):
    """(transposed, leading dimension) that make cuBLAS read the row-major matrices of ``v``
    (g, R, C) as their transposes (C, R) in its column-major terms; None when BLAS cannot.

    Rows with a unit stride: element [r, c] at r * ld + c, which is column-major (C, R) with
    that ld, taken as is. Columns with a unit stride: [r, c] at r + c * ld, column-major (R, C),
    taken transposed."""
    R, C = v.shape[-2:]
    s_r, s_c = v.strides[-2:]
    if s_r % item or s_c % item:
        return None
    s_r, s_c = s_r // item, s_c // item
    if C == 1 or s_c == 1:
        ld = s_r if R > 1 else C
        return (False, ld) if ld >= max(1, C) else None
    if R == 1 or s_r == 1:
        ld = s_c
        return (True, ld) if ld >= max(1, R) else None
    return None


def _span(v, item: int) -> int:
    """Elements from the first to the last of one matrix of ``v`` (cuBLAS's offsets are C ints)."""
    return sum((n - 1) * abs(s) // item for n, s in zip(v.shape[1:], v.strides[1:])) + 1


def _batch_stride(v, item: int):
    """Elements between consecutive matrices of ``v`` (0 for a single one); None if not whole."""
    if v.shape[0] == 1:
        return 0
    return v.strides[0] // item if v.strides[0] % item == 0 and v.strides[0] > 0 else None


def _cublas_gemm(xp, blas, a, b, out, accumulate: bool) -> bool:
    """One gemmStridedBatched call for matmul_into; False (nothing done) when cuBLAS cannot take
    these views or this dtype."""
    name = _GEMMS.get(out.dtype.char)
    if name is None or not (a.dtype == b.dtype == out.dtype):
        return False
    item = out.dtype.itemsize
    g, M, N = out.shape
    K = a.shape[-1]
    op_b, op_a = _operand(b, item), _operand(a, item)   # cuBLAS's A is b^T (N, K), its B is a^T (K, M)
    c = _operand(out, item)
    strides = [_batch_stride(v, item) for v in (b, a, out)]
    if op_b is None or op_a is None or c is None or c[0] or None in strides:
        return False
    if g > 1 and strides[2] < (M - 1) * c[1] + N:   # the output's matrices would overlap each other
        return False
    spans = [_span(v, item) for v in (a, b, out)]
    if max(M, N, K, g, op_b[1], op_a[1], c[1], *spans) > _INT_MAX:
        return False
    alpha, beta = _scalars(out.dtype.char, accumulate)
    handle = xp.cuda.device.get_cublas_handle()
    mode = blas.getPointerMode(handle)
    host = blas.CUBLAS_POINTER_MODE_HOST
    if mode != host:   # alpha and beta are read from host memory before the call returns
        blas.setPointerMode(handle, host)
    try:
        op = (blas.CUBLAS_OP_N, blas.CUBLAS_OP_T)
        getattr(blas, name)(handle, op[op_b[0]], op[op_a[0]], N, M, K, alpha,
                            b.data.ptr, op_b[1], strides[0], a.data.ptr, op_a[1], strides[1],
                            beta, out.data.ptr, c[1], strides[2], g)
    finally:
        if mode != host:
            blas.setPointerMode(handle, mode)
    return True


_SCALARS: dict = {}


def _scalars(char: str, accumulate: bool) -> tuple:
    """Host addresses of (alpha = 1, beta = 1 if accumulate else 0) in this dtype, made once: a small
    layer's step calls cuBLAS nine times or more, and each pair of arrays cost microseconds of its host
    time, which is what such layers are bound by on a GPU."""
    key = (char, accumulate)
    if key not in _SCALARS:
        arrays = (np.ones((), char), np.array(1 if accumulate else 0, char))
        _SCALARS[key] = (arrays, arrays[0].ctypes.data, arrays[1].ctypes.data)   # the arrays keep them valid
    return _SCALARS[key][1:]
