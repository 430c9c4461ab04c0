"""The FFT engine's plan on zero-padded layers: shorter than the padded window (costs.fft_shape).

A circular correlation of length L wraps the reads past L onto the start of the padded input,
which is zero padding too: L >= q - min(lo, hi) zeros is exact for y and gW, and for gx on x's
own cells. Each case checks that the plan is shorter than next_fast_len(q) on some axis (so it
exercises the rule) and compares y, gx and gW with JAX (lax.conv_general_dilated + jax.vjp).
"""
from __future__ import annotations

import numpy as np
import pytest
from conv_oracles import ConvCase, assert_close, cast, jax_reference

import convcore
from convcore import backend
from convcore.reduction import Reduction

CASES = [
    ConvCase((4, 3, 64), (5, 3, 13), padding=6, seed=1),                       # 1-D "same": 76 -> 70
    ConvCase((2, 3, 30, 28), (4, 3, 13, 13), padding=6, seed=2),                # 2-D "same"
    ConvCase((2, 2, 36, 27), (3, 2, 9, 7), padding=[(7, 3), (2, 6)], seed=3),   # asymmetric: the smaller end counts
    ConvCase((1, 2, 20, 21), (2, 2, 5, 5), padding=7, seed=4),                  # padding wider than the kernel
    ConvCase((2, 4, 26, 25), (4, 2, 5, 5), padding="same", dilation=3, groups=2, seed=5),
    ConvCase((1, 2, 15, 14, 13), (3, 2, 7, 7, 5), padding=(3, 3, 2), seed=6),    # 3-D
    ConvCase((1, 2, 20, 18), (2, 2, 7, 7), padding="full", seed=7),              # outputs as long as the plan
    ConvCase((1, 3, 11, 23, 9), (2, 3, 3, 9, 3), padding=[(1, 1), (0, 8), (1, 1)], seed=8),   # one axis with one zero end
]


def _plan(case: ConvCase, dtype=np.float64):
    op = convcore.Convolution(algorithm="fft", **case.params)
    x = np.zeros(case.x_shape, dtype)
    op.prepare(x, np.zeros(case.W_shape, dtype))
    return op._engine


@pytest.mark.parametrize("case", CASES, ids=str)
def test_the_plan_is_shorter_than_the_padded_window(case):
    engine = _plan(case)
    assert not engine.tiled
    red = Reduction(np, engine.geom, keep_dilation=False)
    full = tuple(backend.next_fast_len(q) for q in red.qx)
    assert any(L < f for L, f in zip(engine.fft_shape, full)), (engine.fft_shape, full)
    for L, q, k, (lo, hi) in zip(engine.fft_shape, red.qx, red.qk, red.zero_margins()):
        assert q - min(lo, hi) <= L and q - k + 1 <= L and k <= L


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("case", CASES, ids=str)
def test_shorter_plans_match_jax(case, dtype):
    ref = jax_reference(case)
    x, W, b, gy = cast(ref, dtype)
    op = convcore.Convolution(algorithm="fft", **case.params)
    y = op.forward(x, W, b)
    gx, gW, gb = op.backward(gy)
    assert op.algorithm_used == "fft"
    assert_close("y", y, ref.y, dtype, case, ref.magnitudes.get("y"))
    assert_close("gx", gx, ref.gx, dtype, case, ref.magnitudes.get("gx"))
    assert_close("gW", gW, ref.gW, dtype, case, ref.magnitudes.get("gW"))
    # gx alone (no filter gradient), through the functions rather than the layer
    only_gx = convcore.conv_backward(gy, x, W, need=("x",), algorithm="fft", **case.params)
    assert only_gx.gW is None
    assert_close("gx", only_gx.gx, ref.gx, dtype, case, ref.magnitudes.get("gx"))


def test_strided_and_non_zero_padding_keep_the_whole_window():
    """The rule needs zeros at both ends of a stride-1 axis: reflect padding and the polyphase
    split (stride 2) keep next_fast_len of the window."""
    for case in (ConvCase((1, 2, 30, 30), (2, 2, 13, 13), padding=6, padding_mode="reflect"),
                 ConvCase((1, 2, 30, 30), (2, 2, 13, 13), padding=6, stride=2)):
        engine = _plan(case)
        red = Reduction(np, engine.geom, keep_dilation=False)
        assert engine.fft_shape == tuple(backend.next_fast_len(w) for w in engine.window), case
        assert red.zero_margins() == ((0, 0), (0, 0))
