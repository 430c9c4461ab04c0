"""convcore.estimate_memory against the real peak (tracemalloc of a NumPy run), and absurd parameters.

NumPy reports its array buffers to tracemalloc, so the traced peak of a call plus the
caller's arrays is what the call really held at once. The estimate must never be
below it (a service refuses by it), and must stay within a small factor above it.
"""
from __future__ import annotations

import re
import tracemalloc

import numpy as np
import pytest

import convcore
from convcore import autoselect
from convcore.engines import unsupported_reason

CASES = [
    ((2, 3, 16, 16), (4, 3, 3, 3), dict(padding=1)),
    ((2, 3, 16, 16), (4, 3, 3, 3), dict(stride=2, padding=2)),
    ((1, 2, 40), (3, 2, 17), dict(padding=8, padding_mode="reflect")),
    ((2, 4, 9, 10, 8), (4, 2, 3, 3, 2), dict(groups=2, dilation=2, padding="same")),
    ((1, 1, 48, 48), (2, 1, 11, 11), dict(padding=5, padding_mode="circular")),
    ((2, 2, 10, 10, 10), (3, 2, 3, 3, 3), dict(stride=(2, 1, 3), padding=[(1, 0), (2, 2), (0, 3)])),
    ((2, 64, 4, 4), (64, 64, 3, 3), dict(padding=1)),     # filters far larger than the image
    ((4, 1, 32, 32), (64, 1, 3, 3), dict(padding=1)),     # a first layer: gy's rows outweigh the columns
    ((1, 48, 3, 4, 3), (48, 24, 2, 3, 2), dict(groups=2, padding=1)),
    ((6, 2, 30, 30), (2, 2, 5, 5), dict(padding=2, memory_budget=100_000)),   # FFT in tiles and chunks
    ((3, 16, 24, 24), (32, 16, 1, 1), {}),                # pointwise: per-image weight-gradient products
    ((4, 256, 8, 8), (256, 256, 1, 1), {}),               # pointwise, many channels: one transposed product
    ((8, 128, 2, 2), (256, 128, 1, 1), dict(stride=2)),   # ... strided, one cell per image
    ((2, 64, 16, 16), (64, 1, 1, 1), dict(groups=64)),    # pointwise depthwise: broadcast products
]
NEEDS = [("y",), ("x", "W", "b")]


def measured_peak(x_shape, W_shape, dtype, algorithm, need, params, xp=np) -> int:
    """Bytes held at the call's peak: the caller's arrays plus everything the call allocated (with
    ``xp`` the CuPy stand-in, the device path's: its arrays are NumPy buffers, which tracemalloc
    traces), after one untimed call for the first-call caches."""
    params = dict(params)
    budget = params.pop("memory_budget", None)
    rng = np.random.default_rng(0)
    x = xp.asarray(rng.standard_normal(x_shape).astype(dtype))
    W = xp.asarray(rng.standard_normal(W_shape).astype(dtype))
    b = xp.zeros(W_shape[0], dtype)
    gy = xp.asarray(rng.standard_normal(convcore.make_geometry(x_shape, W_shape, **params).out_shape).astype(dtype))
    held = int(x.nbytes + W.nbytes + b.nbytes + (gy.nbytes if need != ("y",) else 0))
    # one untimed call first: the stand-in's first-call caches, and on the host the compiled direct
    # passes' kernels for this layer's block shape (Numba's compiler objects are not the call's)
    first = convcore.Convolution(algorithm=algorithm, memory_budget=budget, **params)
    first.forward(x, W, b)
    first.backward(gy)
    autoselect.clear_cache()   # a close call is timed again: the worst case
    tracemalloc.start()
    try:
        start = tracemalloc.get_traced_memory()[0]
        op = convcore.Convolution(algorithm=algorithm, memory_budget=budget, autotune=True, **params)
        if need == ("y",):
            op.forward(x, W, b)
        else:
            op.backward(gy, x, W, need=need)
        peak = tracemalloc.get_traced_memory()[1] - start
    finally:
        tracemalloc.stop()
    return held + peak


@pytest.fixture(scope="module", autouse=True)
def warm_up():
    """First calls import modules and build caches; those bytes are not the call's."""
    for algorithm in ("fft", "direct"):
        measured_peak((1, 2, 9, 9), (2, 2, 3, 3), np.float64, algorithm, ("x", "W", "b"), {})


def refuses(x_shape, W_shape, params, algorithm, device=None) -> bool:
    """Whether engine ``algorithm`` cannot run this layer (on ``device``): then estimate_memory says why."""
    if algorithm == "auto":
        return False
    geom = convcore.make_geometry(x_shape, W_shape, **{k: v for k, v in params.items() if k != "memory_budget"})
    why = unsupported_reason(algorithm, geom, "cpu" if device is None else "gpu")
    if why is None:
        return False
    with pytest.raises(ValueError, match=re.escape(why)):
        convcore.estimate_memory(x_shape, W_shape, np.float32, algorithm=algorithm, device=device, **params)
    return True


@pytest.mark.parametrize("need", NEEDS, ids=["forward", "backward"])
@pytest.mark.parametrize("algorithm", ["auto", *convcore.engine_names()])
@pytest.mark.parametrize("index", range(len(CASES)))
def test_estimate_bounds_the_real_peak(index, algorithm, need):
    x_shape, W_shape, params = CASES[index]
    if refuses(x_shape, W_shape, params, algorithm):
        return
    dtype = (np.float64, np.float32)[index % 2]
    real = measured_peak(x_shape, W_shape, dtype, algorithm, need, params)
    est = convcore.estimate_memory(x_shape, W_shape, dtype, algorithm=algorithm, need=need, autotune=True,
                                   **params)
    assert est["peak_bytes"] >= real, f"estimate {est['peak_bytes']} below the real peak {real}: {est}"
    if real > 256 * 2**10:   # tiny calls are dominated by the estimate's fixed allowance
        assert est["peak_bytes"] <= 4 * real, f"estimate {est['peak_bytes']} over 4x the real peak {real}"


@pytest.mark.parametrize("need", NEEDS, ids=["forward", "backward"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_direct_folded_along_a_stride_is_bounded(dtype, need):
    """The direct engine folding taps along a stride read in place: output rows of 2 positions, each
    widened by its taps' reach (15 positions), so the column buffers are 8x a block's outputs (an
    estimate that counted grid rows of 31 positions was 0.40-0.94 of the real peak). Direct only:
    ``auto`` also holds the FFT engine's far larger estimate here."""
    x_shape, W_shape, params = (1, 2, 400, 63), (32, 2, 8, 7), dict(stride=(1, 2), dilation=(1, 10))
    real = measured_peak(x_shape, W_shape, dtype, "direct", need, params)
    est = convcore.estimate_memory(x_shape, W_shape, dtype, algorithm="direct", need=need, autotune=True, **params)
    assert real <= est["peak_bytes"] <= 4 * real, (est["peak_bytes"], real)


def test_dtype_sizes_are_counted():
    """float32 arrays cost half of float64's (not 8 bytes per value whatever the dtype)."""
    args = ((4, 8, 32, 32), (8, 8, 5, 5))
    e32 = convcore.estimate_memory(*args, "float32", padding=2, need=("y", "x", "W"))
    e64 = convcore.estimate_memory(*args, "float64", padding=2, need=("y", "x", "W"))
    assert e32["inputs"]["x"] == 4 * 8 * 32 * 32 * 4
    assert {k: 2 * v for k, v in e32["inputs"].items()} == e64["inputs"]
    for name in ("gx", "gW", "padded_input"):
        assert 2 * e32["allocations"][name] == e64["allocations"][name], name
    for algorithm in ("direct", "fft"):   # auto's candidates may differ by dtype (their rates do)
        kw = dict(padding=2, need=("y", "x", "W"), algorithm=algorithm)
        assert convcore.estimate_memory(*args, "float32", **kw)["peak_bytes"] < \
            convcore.estimate_memory(*args, "float64", **kw)["peak_bytes"], algorithm


def test_estimates_are_not_allocations():
    """padding=10**12 is a number to refuse, not 8 TB to allocate: the estimate itself allocates nothing."""
    tracemalloc.start()
    try:
        est = convcore.estimate_memory((1, 1, 4), (1, 1, 2), "float32", padding=10**12)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert est["peak_bytes"] >= 4 * 2 * 10**12 and est["parameter"] == "padding"
    assert peak < 2**20


def test_huge_stride_costs_nothing_and_is_right():
    """stride 10**12 on 4 cells: one output, read from the first k cells (hand-computed reference)."""
    x = np.array([[[1.0, 2.0, 3.0, 4.0]]], np.float32)
    W = np.array([[[0.5, -1.0]]], np.float32)
    est = convcore.estimate_memory(x.shape, W.shape, "float32", stride=10**12, need=("y", "x", "W"))
    assert est["peak_bytes"] < 16 * 2**20   # (it was 8 GB of polyphase input for stride 10**9)
    tracemalloc.start()
    try:
        op = convcore.Convolution(stride=10**12)
        y = op.forward(x, W)
        gx, gW, gb = op.backward(np.array([[[2.0]]], np.float32))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2**20
    np.testing.assert_array_equal(y, [[[0.5 * 1 - 2.0]]])
    np.testing.assert_array_equal(gx, [[[1.0, -2.0, 0.0, 0.0]]])
    np.testing.assert_array_equal(gW, [[[2.0, 4.0]]])
    np.testing.assert_array_equal(gb, [2.0])


@pytest.mark.parametrize("params, name", [
    (dict(padding=10**15), "padding"),
    (dict(stride=10**30), "stride"),
    (dict(dilation=10**9), "dilation"),
    (dict(dilation=10**60), "dilation"),
    (dict(padding=[(0, 10**20)]), "padding"),
    (dict(padding=[(2**47, 2**47)] * 3), "padding"),   # each side fits, the 3-D output cannot exist
])
def test_meaningless_parameters_are_refused_by_name(params, name):
    ndim = len(params.get("padding", [0])) if isinstance(params.get("padding"), list) else 1
    x_shape, W_shape = (1, 1) + (4,) * ndim, (1, 1) + (2,) * ndim
    with pytest.raises(ValueError, match=name):
        convcore.estimate_memory(x_shape, W_shape, "float32", **params)
    with pytest.raises(ValueError, match=name):
        convcore.make_geometry(x_shape, W_shape, **params)


def test_the_parameter_that_sizes_the_peak_is_named():
    assert convcore.estimate_memory((1, 1, 64), (1, 1, 3), padding=10**9)["parameter"] == "padding"
    assert convcore.estimate_memory((2, 3, 64, 64), (4, 3, 3, 3), padding=1)["parameter"] == "x"


@pytest.mark.parametrize("kwargs, message", [
    (dict(need=("y", "gx")), "need must name"),
    (dict(need=()), "need must name"),
    (dict(algorithm="im2col"), "algorithm must be one of"),
    (dict(dtype="int32"), "dtype must be float32 or float64"),
])
def test_bad_arguments_are_named(kwargs, message):
    with pytest.raises((ValueError, TypeError), match=message):
        convcore.estimate_memory((1, 1, 8), (1, 1, 3), **kwargs)


@pytest.mark.parametrize("need", NEEDS, ids=["forward", "backward"])
@pytest.mark.parametrize("algorithm", ["auto", *convcore.engine_names()])
@pytest.mark.parametrize("index", range(len(CASES)))
def test_device_estimate_bounds_the_device_paths_peak(index, algorithm, need):
    """With the device's rates and budget (a GPU's engines gather columns, skip the CPU's blocks and
    choose other tiles), the estimate still bounds what the device path holds at once."""
    from support import cupy_standin

    x_shape, W_shape, params = CASES[index]
    if refuses(x_shape, W_shape, params, algorithm, device=cupy_standin):
        return
    dtype = (np.float64, np.float32)[index % 2]
    real = measured_peak(x_shape, W_shape, dtype, algorithm, need, params, xp=cupy_standin)
    est = convcore.estimate_memory(x_shape, W_shape, dtype, algorithm=algorithm, need=need, autotune=True,
                                   device=cupy_standin, **params)
    assert est["peak_bytes"] >= real, f"estimate {est['peak_bytes']} below the device path's peak {real}: {est}"
