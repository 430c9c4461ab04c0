"""convcore.backend.matmul, every path (broadcast, one call, batch split, row split) against np.matmul."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import threadpoolctl

from convcore import backend


def _blas_threads():
    return [info["num_threads"] for info in threadpoolctl.threadpool_info() if info["user_api"] == "blas"]


@pytest.mark.parametrize("a_shape, b_shape", [
    ((7, 3, 5, 1), (7, 3, 1, 4)),        # inner size 1: broadcast multiply-add
    ((7, 3, 5, 2), (7, 3, 2, 4)),        # inner size 2: broadcast multiply-add
    ((9, 2, 6, 8), (9, 2, 8, 5)),        # small: one call
    ((600, 1, 40, 48), (600, 1, 48, 40)),  # long batch: split over the batch axis
    ((1, 3000, 120), (1, 120, 100)),     # short batch, many rows: split over rows
])
@pytest.mark.parametrize("dtype", [np.float32, np.complex64, np.float64])
def test_matmul_matches_numpy(a_shape, b_shape, dtype):
    rng = np.random.default_rng(0)
    a = rng.standard_normal(a_shape).astype(dtype)
    b = rng.standard_normal(b_shape).astype(dtype)
    if np.iscomplexobj(a):
        a = a + 1j * rng.standard_normal(a_shape).astype(np.float32)
        b = b + 1j * rng.standard_normal(b_shape).astype(np.float32)
    out = backend.matmul(np, a, b)
    ref = np.matmul(a, b)
    assert out.shape == ref.shape and out.dtype == ref.dtype
    tol = 1e-4 if np.dtype(dtype).itemsize <= 8 else 1e-10
    np.testing.assert_allclose(out, ref, rtol=tol, atol=tol * np.abs(ref).max())


@pytest.mark.parametrize("a_shape, b_shape", [
    ((4, 64, 48), (600, 4, 48, 40)),        # a without the split axis (the tiled transpose's filters)
    ((1, 4, 64, 48), (600, 4, 48, 40)),     # a with it of size 1
    ((600, 4, 64, 48), (4, 48, 40)),        # b without it
    ((600, 600, 8, 6), (600, 6, 5)),        # a's second axis as long as the split one: not sliced by mistake
])
def test_batch_split_with_a_broadcast_operand_matches_numpy(a_shape, b_shape, monkeypatch):
    """The batch-axis split slices only operands that have that axis: a broadcast operand is shared by
    every slice (once it was sliced along its own first axis, a ValueError or a wrong product)."""
    monkeypatch.setenv("CONVCORE_NUM_THREADS", "2")
    monkeypatch.setattr(backend, "SPLIT_WORK", 1)
    assert backend.num_threads() == 2
    rng = np.random.default_rng(0)
    a = rng.standard_normal(a_shape).astype(np.float32)
    b = rng.standard_normal(b_shape).astype(np.float32)
    out, ref = backend.matmul(np, a, b), np.matmul(a, b)
    assert out.shape == ref.shape
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())


def test_concurrent_products_leave_the_blas_thread_count_as_it_was():
    before = _blas_threads()
    a = np.random.default_rng(1).standard_normal((800, 300)).astype(np.float32)
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: backend.matmul(np, a, a.T), range(24)))
    assert _blas_threads() == before
    np.testing.assert_allclose(results[-1], a @ a.T, rtol=1e-4, atol=1e-3)
