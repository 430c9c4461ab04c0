"""What the FFT algorithm transforms, in which precision, and how it splits work under a budget.

Counting goes through convcore.backend.rfftn (see the ``transform_log`` fixture):
the wrappers observe the real transforms, the math is untouched. An FFT engine
transforms (B, g, C) x spatial arrays (as channels-last views); with n = 2, c_in = 3 and c_out = 5 below,
x's arrays lead with (2, 1, 3*S), W's with (5, 1, 3*S) and gy's with (2, 1, 5),
S = prod(stride), so each transform can be told apart by its leading dims.
"""
from __future__ import annotations

import functools

import numpy as np
import pytest
from conv_checks import check_case
from conv_oracles import ConvCase, jax_reference

import convcore

CASES = {
    "stride1": ConvCase((2, 3, 9, 8), (5, 3, 4, 3), padding=1, seed=50),
    "strided": ConvCase((2, 3, 10, 9), (5, 3, 3, 3), stride=2, dilation=(1, 2), padding=[(1, 0), (2, 1)], seed=51),
    "3d": ConvCase((2, 3, 6, 5, 7), (5, 3, 3, 2, 3), padding="same", seed=52),
}


def kinds(log, case: ConvCase) -> list:
    """Name each rfftn call 'x', 'W' or 'gy' from the (B, g, C) leading dims it transformed.

    B is n for x and gy (or n times a number of overlap-save tiles, always even
    here) and c_out = 5 for W; C is c_in * S for x and W, c_out for gy.
    """
    S = int(np.prod(case.per_dim(case.stride)))
    n, c_in = case.x_shape[:2]
    c_out = case.W_shape[0]
    assert n % 2 == 0 and c_out % 2 == 1 and c_out != c_in * S, "transforms must be distinguishable"
    out = []
    for B, g, C in log.leading():
        if C == c_out and B % n == 0:
            out.append("gy")
        elif C == c_in * S:
            out.append("W" if B == c_out else "x")
        else:
            out.append(f"unknown{(B, g, C)}")
    return out


def arrays(backend, case: ConvCase, dtype):
    x, W, b, rng = case.inputs()
    return tuple(backend.asarray(a.astype(dtype)) for a in (x, W, b)) + (rng,)


@pytest.mark.parametrize("name", CASES)
def test_layer_transforms_x_W_gy_once_each(backend, transform_log, name):
    case = CASES[name]
    x, W, b, rng = arrays(backend, case, np.float64)
    op = convcore.Convolution(algorithm="fft", **case.params)
    y = op.forward(x, W, b)
    assert sorted(kinds(transform_log, case)) == ["W", "x"]
    gy = backend.asarray(rng.standard_normal(y.shape))
    transform_log.clear()
    op.backward(gy)
    assert kinds(transform_log, case) == ["gy"], "backward transformed x or W again"
    transform_log.clear()
    op.backward(gy * 2.0)   # a second backward still reuses forward's spectra
    assert kinds(transform_log, case) == ["gy"]


@pytest.mark.parametrize("name", CASES)
def test_conv_backward_transforms_only_what_the_asked_gradients_need(backend, transform_log, name):
    case = CASES[name]
    x, W, b, rng = arrays(backend, case, np.float64)
    gy = backend.asarray(rng.standard_normal(convcore.make_geometry(x.shape, W.shape, **case.params).out_shape))
    expected = {("x",): ["W", "gy"], ("W",): ["x", "gy"], ("b",): [], ("x", "W", "b"): ["W", "x", "gy"]}
    for need, transforms in expected.items():
        transform_log.clear()
        grads = convcore.conv_backward(gy, x, W, algorithm="fft", need=need, **case.params)
        assert sorted(kinds(transform_log, case)) == sorted(transforms), f"need={need}"
        assert [g is not None for g in grads] == [v in need for v in ("x", "W", "b")], f"need={need}"


@pytest.mark.parametrize("name", CASES)
def test_auto_layer_backward_does_not_transform_forward_inputs(backend, transform_log, name):
    """Whatever "auto" picks, backward after forward transforms gy at most (direct: nothing)."""
    case = CASES[name]
    x, W, b, rng = arrays(backend, case, np.float64)
    op = convcore.Convolution(algorithm="auto", **case.params)
    y = op.forward(x, W, b)
    transform_log.clear()
    op.backward(backend.asarray(rng.standard_normal(y.shape)))
    assert kinds(transform_log, case) == (["gy"] if op.algorithm_used == "fft" else [])


@pytest.mark.parametrize("algorithm", ["fft", "direct", "auto"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
def test_output_dtype_is_input_dtype(backend, transform_log, dtype, algorithm):
    case = CASES["strided"]
    x, W, b, rng = arrays(backend, case, dtype)
    op = convcore.Convolution(algorithm=algorithm, **case.params)
    y = op.forward(x, W, b)
    grads = op.backward(backend.asarray(rng.standard_normal(y.shape).astype(dtype)))
    assert [a.dtype for a in (y,) + tuple(grads)] == [np.dtype(dtype)] * 4
    # float32 runs its FFTs in complex64, float64 in complex128, both ways.
    spectrum = np.dtype(np.complex64 if dtype == np.float32 else np.complex128)
    if op.algorithm_used == "fft":
        assert transform_log.forward and transform_log.inverse
    assert all(a_dtype == np.dtype(dtype) and s == spectrum for _, a_dtype, s, _ in transform_log.forward)
    assert all(s == spectrum and out == np.dtype(dtype) for s, out in transform_log.inverse)


# ---- memory budget -------------------------------------------------------------
BUDGET_CASES = [
    ConvCase((5, 2, 12, 11), (3, 2, 3, 4), padding=1, seed=60),
    ConvCase((3, 2, 9, 8, 7), (4, 2, 3, 3, 2), stride=(1, 2, 1), padding="full", seed=61),
    ConvCase((4, 2, 40), (2, 1, 9), groups=2, dilation=2, padding=[(3, 5)], seed=62),
]


@functools.lru_cache(maxsize=None)
def budget_reference(index):
    return jax_reference(BUDGET_CASES[index])


@pytest.mark.parametrize("budget", [1, 20_000], ids=["1B", "20kB"])
@pytest.mark.parametrize("algorithm", ["fft", "direct", "auto"])
@pytest.mark.parametrize("index", range(len(BUDGET_CASES)))
def test_small_memory_budget_splits_work_and_still_matches_jax(backend, index, algorithm, budget):
    case = BUDGET_CASES[index]
    check_case(backend, case, budget_reference(index), np.float64, algorithm, layer=True,
               memory_budget=budget)


@pytest.mark.parametrize("index", range(len(BUDGET_CASES)))
def test_small_memory_budget_makes_fft_transform_x_in_pieces(backend, transform_log, index):
    """With the whole batch in one piece x is transformed once; a 1-byte budget must split it."""
    case = BUDGET_CASES[index]
    x, W, b, _ = arrays(backend, case, np.float64)
    convcore.Convolution(algorithm="fft", **case.params).forward(x, W, b)
    whole = len(transform_log.forward)
    transform_log.clear()
    convcore.Convolution(algorithm="fft", memory_budget=1, **case.params).forward(x, W, b)
    assert whole == 2   # x and W
    assert len(transform_log.forward) > whole, "memory_budget=1 did not split the FFT work"


def test_untimed_auto_depends_on_shapes_only(monkeypatch):
    """autotune=False never times (so the choice cannot vary with machine load), and its
    cached choice is kept apart from a timed one for the same geometry."""
    from convcore import autoselect

    x = np.ones((2, 3, 12, 12))
    W = np.ones((4, 3, 3, 3))
    autoselect.clear_cache()
    timed = []
    monkeypatch.setattr(autoselect, "_time_engines", lambda *a, **k: timed.append(1) or ("direct", None))
    monkeypatch.setattr(autoselect, "AMBIGUOUS", float("inf"))   # every call is a close call
    op = convcore.Convolution(algorithm="auto", autotune=False)
    op.forward(x, W)
    assert timed == [] and op.algorithm_used == min(
        autoselect.estimate_seconds(op.geometry, 8, op.memory_budget).items(), key=lambda kv: kv[1])[0]
    convcore.Convolution(algorithm="auto", autotune=True).forward(x, W)
    assert timed == [1]
    autoselect.clear_cache()
