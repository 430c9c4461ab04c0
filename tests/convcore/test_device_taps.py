"""A device's direct passes: gathered columns of the trailing kernel axes and one cuBLAS product per
remaining tap, reading its window in place (direct_conv._run_taps, view_matmul.matmul_into).

Every way of splitting the taps (none gathered ... all axes but the first) is checked against JAX,
and the products of strided views against NumPy's matmul, under the strict CuPy stand-in (whose
cuBLAS maps each pointer back to its allocation and refuses reads outside it, leading dimensions
below a matrix's rows, and outputs overlapping inputs) and under CuPy on a GPU when there is one.
"""
from __future__ import annotations

import functools

import numpy as np
import pytest
from conv_checks import check_case
from conv_oracles import ConvCase, jax_reference
from support import cupy_standin

from convcore import costs, view_matmul

CASES = [
    ConvCase((3, 2, 13), (4, 2, 3), padding=1, seed=70),
    ConvCase((2, 3, 9, 7), (4, 3, 3, 3), padding=(1, 2), dilation=(2, 1), seed=71),
    ConvCase((2, 4, 5, 6, 4), (4, 2, 3, 2, 3), groups=2, stride=(1, 2, 1), padding=1, seed=72),
    ConvCase((1, 2, 4, 5, 4, 3), (3, 2, 2, 3, 2, 2), padding="same", padding_mode="circular", seed=73),
    ConvCase((2, 3, 11, 9), (4, 3, 3, 2), stride=(2, 3), dilation=(2, 1), padding=(2, 1), seed=74),
]


@functools.lru_cache(maxsize=None)
def reference(index):
    return jax_reference(CASES[index])


SPLITS = [(index, m) for index, case in enumerate(CASES) for m in range(case.ndim)]   # m < N: all the rule allows


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("index, gathered", SPLITS, ids=[f"N{CASES[i].ndim}-{i}-gather{m}" for i, m in SPLITS])
def test_every_split_of_the_taps_matches_jax(gpu_backend, monkeypatch, index, gathered, dtype):
    monkeypatch.setattr(costs, "device_grouped_axes", lambda qk, K, tap_bytes, budget: gathered)
    check_case(gpu_backend, CASES[index], reference(index), dtype, "direct")


def test_products_are_one_call_per_outer_tap_and_pass(monkeypatch):
    """The split the rule picks is the split that runs: a 3x2x3 kernel with its last axis gathered
    makes 3 * 2 = 6 products per pass (forward, weight gradient, input gradient), with both
    trailing axes 3; with none, 18 each."""
    import convcore
    from convcore import backend

    xp = cupy_standin
    rng = np.random.default_rng(5)
    x = xp.asarray(rng.standard_normal((2, 3, 6, 5, 7)))
    W = xp.asarray(rng.standard_normal((4, 3, 3, 2, 3)))
    gy = xp.asarray(rng.standard_normal((2, 4, 6, 6, 7)))
    for forced, per_pass in ((0, 18), (1, 6), (2, 3)):
        monkeypatch.setattr(costs, "device_grouped_axes", lambda qk, K, tap_bytes, budget, m=forced: m)
        cupy_standin.counters.reset()
        op = convcore.Convolution(padding=1, algorithm="direct")
        op.forward(x, W)
        op.backward(gy)
        assert cupy_standin.counters.gemm_calls == 3 * per_pass, (forced, cupy_standin.counters.gemm_calls)
    assert backend.blas_module(xp) is cupy_standin.cublas


def test_the_rule_gathers_while_the_inner_size_is_modest():
    """Inner size K * gathered taps up to DEVICE_GROUP_INNER, never the first axis, and never a
    column matrix over a quarter of the budget."""
    big = 2**40
    assert costs.device_grouped_axes((3, 3), 64, 1, big) == 1            # 192
    assert costs.device_grouped_axes((3, 3), 256, 1, big) == 0           # 768: products read in place
    assert costs.device_grouped_axes((3, 3, 3), 32, 1, big) == 2         # 96, 288
    assert costs.device_grouped_axes((3, 3, 3), 64, 1, big) == 1         # 192; 576 is too many
    assert costs.device_grouped_axes((7,), 8, 1, big) == 0               # 1-D: nothing to gather
    assert costs.device_grouped_axes((3, 3, 3), 8, 100, 4 * 300) == 1    # 9 gathered taps would need 900 bytes
    assert costs.device_grouped_axes((3, 3, 3), 8, 100, 4 * 299) == 0


# ---- view_matmul.matmul_into: products of strided views ------------------------------------------


def _views(xp, rng, dtype, case):
    """(a, b, out, a_host, b_host) for one layout case: windows of longer rows, transposed views,
    single rows or columns, batches with gaps."""
    g, M, K, N = case["dims"]
    big_a = rng.standard_normal((g, M, K + 7)).astype(dtype)
    a_host = big_a[:, :, 3:3 + K]                                        # rows K + 7 apart
    if case.get("a_transposed"):
        big_a = rng.standard_normal((g, K, M + 2)).astype(dtype)
        a_host = big_a[:, :, 1:1 + M].swapaxes(1, 2)                     # unit stride down the columns
    big_b = rng.standard_normal((g, K, N + 5)).astype(dtype)
    b_host = big_b[:, :, 5:]
    if case.get("b_transposed"):
        big_b = rng.standard_normal((g, N, K + 3)).astype(dtype)
        b_host = big_b[:, :, :K].swapaxes(1, 2)
    a = xp.asarray(big_a)
    a = a[:, :, 3:3 + K] if not case.get("a_transposed") else a[:, :, 1:1 + M].swapaxes(1, 2)
    b = xp.asarray(big_b)
    b = b[:, :, 5:] if not case.get("b_transposed") else b[:, :, :K].swapaxes(1, 2)
    out_big = xp.asarray(rng.standard_normal((g, M, N + 4)).astype(dtype))
    return a, b, out_big[:, :, 2:2 + N], a_host, b_host, out_big


LAYOUTS = [
    {"dims": (1, 4, 6, 9)},
    {"dims": (3, 5, 4, 11)},
    {"dims": (2, 3, 7, 5), "a_transposed": True},
    {"dims": (2, 6, 9, 4), "b_transposed": True},
    {"dims": (3, 4, 5, 6), "a_transposed": True, "b_transposed": True},
    {"dims": (2, 1, 5, 7)},       # a single row
    {"dims": (2, 4, 1, 3)},       # inner size 1
    {"dims": (2, 4, 3, 1)},       # a single column
]


@pytest.mark.parametrize("accumulate", [False, True], ids=["assign", "accumulate"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("case", LAYOUTS, ids=lambda c: "-".join(map(str, c["dims"])) + (
    "-aT" if c.get("a_transposed") else "") + ("-bT" if c.get("b_transposed") else ""))
def test_matmul_into_strided_views_matches_numpy(gpu_backend, case, dtype, accumulate):
    xp = gpu_backend.xp
    rng = np.random.default_rng(len(case["dims"]) + case["dims"][1])
    a, b, out, a_host, b_host, out_big = _views(xp, rng, dtype, case)
    before = gpu_backend.to_numpy(out_big).copy()
    expected = np.matmul(a_host, b_host) + (before[:, :, 2:2 + out.shape[-1]] if accumulate else 0)
    if xp is cupy_standin:
        cupy_standin.counters.reset()
    view_matmul.matmul_into(xp, a, b, out, accumulate=accumulate)
    got = gpu_backend.to_numpy(out_big)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(got[:, :, 2:2 + out.shape[-1]], expected, rtol=tol, atol=tol)
    # the cells beside the output view are untouched
    np.testing.assert_array_equal(got[:, :, :2], before[:, :, :2])
    np.testing.assert_array_equal(got[:, :, 2 + out.shape[-1]:], before[:, :, 2 + out.shape[-1]:])
    if xp is cupy_standin:
        assert cupy_standin.counters.gemm_calls == 1   # read in place: one cuBLAS call, no copies first


def _overlapping(xp, host, shape, strides):
    """(device view, host view) with the given element strides over the same values: rows or
    columns that overlap, which BLAS cannot describe with a leading dimension."""
    item = host.itemsize
    as_strided = np.lib.stride_tricks.as_strided
    device = xp.lib.stride_tricks.as_strided(xp.asarray(host), shape, tuple(s * item for s in strides))
    return device, as_strided(host, shape, tuple(s * item for s in strides))


# Views BLAS cannot read in place, each a 2 x 5 x 4 @ 2 x 4 x 6 -> 2 x 5 x 6 product: it must still be
# right (matmul on the module's own terms), and no cuBLAS call is made.
def _plain(xp, host):
    return xp.asarray(host), host


FALLBACKS = {   # name -> (a, b) builders: host values -> (device view, the same view on the host)
    "reversed rows": (lambda xp, h: (xp.asarray(h)[:, ::-1], h[:, ::-1]), _plain),
    "overlapping rows": (lambda xp, h: _overlapping(xp, h, (2, 5, 4), (20, 2, 1)), _plain),
    "overlapping columns": (_plain, lambda xp, h: _overlapping(xp, h, (2, 4, 6), (24, 1, 3))),
    "broadcast batch": (lambda xp, h: (xp.broadcast_to(xp.asarray(h[:1]), h.shape), np.broadcast_to(h[:1], h.shape)),
                        _plain),
    "reversed batch": (lambda xp, h: (xp.asarray(h)[::-1], h[::-1]), _plain),
}


@pytest.mark.parametrize("layout", FALLBACKS)
def test_matmul_into_falls_back_to_matmul_for_views_blas_cannot_read(gpu_backend, layout):
    xp = gpu_backend.xp
    rng = np.random.default_rng(3)
    make_a, make_b = FALLBACKS[layout]
    a, a_host = make_a(xp, rng.standard_normal((2, 5, 4)))
    b, b_host = make_b(xp, rng.standard_normal((2, 4, 6)))
    out = xp.zeros((2, 5, 6))
    if xp is cupy_standin:
        cupy_standin.counters.reset()
    view_matmul.matmul_into(xp, a, b, out)
    np.testing.assert_allclose(gpu_backend.to_numpy(out), np.matmul(a_host, b_host), rtol=1e-12)
    if xp is cupy_standin:
        assert cupy_standin.counters.gemm_calls == 0


@pytest.mark.parametrize("out_layout", ["transposed", "overlapping batches"])
def test_matmul_into_falls_back_for_outputs_blas_cannot_write(gpu_backend, out_layout):
    """A transposed output (unit stride down its columns) and one whose batches overlap are not
    cuBLAS outputs; the product is written by matmul instead."""
    xp = gpu_backend.xp
    rng = np.random.default_rng(6)
    a_host, b_host = rng.standard_normal((2, 3, 4)), rng.standard_normal((2, 4, 5))
    if xp is cupy_standin:
        cupy_standin.counters.reset()
    if out_layout == "transposed":
        out = xp.zeros((2, 5, 3)).swapaxes(1, 2)
        view_matmul.matmul_into(xp, xp.asarray(a_host), xp.asarray(b_host), out)
        np.testing.assert_allclose(gpu_backend.to_numpy(out), np.matmul(a_host, b_host), rtol=1e-12)
    else:   # both batches write the same 3 x 5 cells: only the batch count of 1 is meaningful
        store = xp.zeros((3, 5))
        out = xp.lib.stride_tricks.as_strided(store, (2, 3, 5), (0, 5 * 8, 8))
        view_matmul.matmul_into(xp, xp.asarray(a_host[:1].repeat(2, 0)), xp.asarray(b_host[:1].repeat(2, 0)), out)
        np.testing.assert_allclose(gpu_backend.to_numpy(store), a_host[0] @ b_host[0], rtol=1e-12)
    if xp is cupy_standin:
        assert cupy_standin.counters.gemm_calls == 0


def test_matmul_into_on_the_host_is_matmul():
    rng = np.random.default_rng(4)
    a, b = rng.standard_normal((3, 4, 5)), rng.standard_normal((3, 5, 2))
    out = np.ones((3, 4, 2))
    view_matmul.matmul_into(np, a, b, out, accumulate=True)
    np.testing.assert_allclose(out, a @ b + 1, rtol=1e-12)
    with pytest.raises(ValueError, match="do not match"):
        view_matmul.matmul_into(np, a, b[:, :4], out)


@pytest.mark.parametrize("before", ["host", "device"])
def test_products_leave_cublas_pointer_mode_as_they_found_it(before, monkeypatch):
    """alpha and beta are host pointers: a handle left in DEVICE mode (by another library) is switched
    for the call and switched back; in HOST mode, as CuPy leaves it, the mode is not touched at all."""
    xp, blas = cupy_standin, cupy_standin.cublas
    handle = xp.cuda.device.get_cublas_handle()
    mode = {"host": blas.CUBLAS_POINTER_MODE_HOST, "device": blas.CUBLAS_POINTER_MODE_DEVICE}[before]
    sets = []
    real_set = blas.setPointerMode
    monkeypatch.setattr(blas, "setPointerMode", lambda h, m: sets.append(m) or real_set(h, m))
    real_set(handle, mode)
    try:
        rng = np.random.default_rng(9)
        a_host, b_host = rng.standard_normal((2, 3, 4)), rng.standard_normal((2, 4, 5))
        for accumulate in (False, True, False):
            out = xp.asarray(np.ones((2, 3, 5)))
            view_matmul.matmul_into(xp, xp.asarray(a_host), xp.asarray(b_host), out, accumulate=accumulate)
            np.testing.assert_allclose(xp.asnumpy(out), np.matmul(a_host, b_host) + accumulate, rtol=1e-12)
        assert blas.getPointerMode(handle) == mode
        assert sets == ([] if before == "host" else [blas.CUBLAS_POINTER_MODE_HOST, mode] * 3)
    finally:
        real_set(handle, blas.CUBLAS_POINTER_MODE_HOST)
