"""The direct engine's folded passes (taps of the last kernel axes as GEMM rows) against JAX.

``direct_conv._run_folded`` is taken by most CPU direct calls of two or more dims with few
channels, so the JAX table and hypothesis runs already go through it; these cases pin the branches
those tables do not reach: two folded axes (3^5 kernels), blocks cut from one long run, the weight gradient read from the output space's own layout
(strided on an axis before the last), dilation on the folded axis, groups, padding modes other than
zeros, a stride read in place along the last axis (the folded taps split by phase), and the limits
of ``costs.folded_tap_axes``. Each case asserts which fold it ran, so a change
of the rule cannot silently leave a branch untested.
"""
from __future__ import annotations

import numpy as np
import pytest
from conv_checks import NUMPY, check_case
from conv_oracles import ConvCase, jax_reference

from convcore import costs, direct_conv, positions

CASES = [
    # (case, folded axes expected in each pass that folds)
    (ConvCase((1, 2, 4, 4, 4, 4, 5), (3, 2, 3, 3, 3, 3, 3), padding=1, seed=50), {2}),           # 3^5: two axes
    (ConvCase((1, 6, 3, 2600), (3, 6, 3, 5), padding=(1, 2), seed=51), {1}),                    # one run, cut into blocks
    (ConvCase((2, 6, 9, 8), (4, 6, 3, 3), stride=(2, 1), padding=1, seed=52), {1}),             # gW in the output space's layout
    (ConvCase((2, 8, 6, 11), (3, 8, 2, 3), dilation=(1, 3), padding="same", seed=53), {1}),     # dilation on the folded axis
    (ConvCase((2, 6, 5, 6, 7), (6, 3, 3, 2, 3), groups=2, padding=1, seed=54), {1}),
    (ConvCase((2, 6, 7, 8), (3, 6, 3, 3), padding=1, padding_mode="reflect", seed=55), {1}),
    (ConvCase((1, 2, 5, 5, 5, 6), (2, 2, 3, 3, 3, 3), padding="full", seed=56), {1}),
    # a stride read in place along the last axis: the folded taps split by phase
    (ConvCase((2, 6, 9, 17), (4, 6, 3, 5), stride=2, padding=2, seed=57), {1}),
    (ConvCase((1, 4, 6, 7, 29), (3, 4, 2, 3, 6), stride=(1, 2, 3), padding=1, seed=58), {1}),        # three phases
    (ConvCase((2, 8, 7, 20), (3, 8, 3, 4), stride=(1, 2), dilation=(1, 2), padding=2, seed=59), {1}),   # one phase
]


@pytest.fixture(autouse=True)
def blas_passes(monkeypatch):
    """These tests pin the BLAS passes, which run where Numba does not and for passes of fewer than
    ``direct_kernel.MIN_ROWS`` rows; the compiled passes have their own (test_direct_kernel.py)."""
    monkeypatch.setattr(direct_conv.DirectConv, "_compiled", lambda self, rows: False)


@pytest.fixture
def folds(monkeypatch):
    """(folded axes, last-axis grid stride) of each folded pass run (an observation: the real method
    still runs)."""
    seen = []
    real = direct_conv.DirectConv._run_folded

    def observed(self, grid, src, mats, space, K, out, acc_rhs, rhs_on_grid, rhs_front, m):
        seen.append((m, space.strides[-1]))   # folded axes, grid cells between positions on the last axis
        return real(self, grid, src, mats, space, K, out, acc_rhs, rhs_on_grid, rhs_front, m)

    monkeypatch.setattr(direct_conv.DirectConv, "_run_folded", observed)
    return seen


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("layer", [False, True])
@pytest.mark.parametrize("case,expected", CASES, ids=[f"case{i}" for i in range(len(CASES))])
def test_folded_direct_matches_jax(case, expected, layer, dtype, folds):
    check_case(NUMPY, case, jax_reference(case), dtype, "direct", layer=layer)
    assert {m for m, _ in folds} == expected, f"folded passes ran with {folds}, expected {expected}"
    if isinstance(case.stride, int) and case.stride > 1 or isinstance(case.stride, tuple) and case.stride[-1] > 1:
        assert any(u > 1 for _, u in folds), f"no folded pass read the stride in place: {folds}"


def test_coalesced_space_merges_contiguous_trailing_axes():
    """Trailing axes that are one run of the grid merge (same positions, same order); a gap stops it."""
    space = positions.Space((2, 3, 4, 18), (1000, 72, 18, 1), origin=5)
    assert space.coalesced() == positions.Space((2, 216), (1000, 1), 5)
    ringed = positions.Space((2, 3, 4, 18), (1000, 90, 18, 1))     # rows of 90 cells: a ring skipped
    assert ringed.coalesced() == positions.Space((2, 3, 72), (1000, 90, 1))
    strided = positions.Space((2, 5, 9), (400, 40, 2))
    assert strided.coalesced() == strided


def test_run_choices_cut_a_contiguous_box_into_shorter_runs():
    """A box whose axes are all one run of the grid may run as planes or rows instead (``run_axes``):
    the same positions, the longest runs first; a coalesced limited space merges nothing more."""
    box = positions.Space((2, 3, 4, 18), (216, 72, 18, 1), origin=5)
    choices = box.run_choices()
    assert [c.coalesced().dims for c in choices] == [(432,), (2, 216), (2, 3, 72), (2, 3, 4, 18)]
    assert all(c.count == box.count and c.dims == box.dims for c in choices)
    rows = choices[-1].coalesced()
    assert rows.coalesced() == rows and rows.strides == (216, 72, 18, 1)
    ringed = positions.Space((2, 3, 4, 18), (1000, 90, 18, 1))   # only the last two axes are one run
    assert [c.coalesced().dims for c in ringed.run_choices()] == [(2, 3, 72), (2, 3, 4, 18)]


def test_unfolded_where_the_rule_says_so(folds):
    """1-D, an inner size under 16 and many rows keep the plain column matrix; still correct."""
    for case in (ConvCase((2, 8, 30), (8, 8, 3), padding=1, seed=60),
                 ConvCase((1, 1, 8, 9), (3, 1, 3, 3), padding=1, seed=61),
                 ConvCase((1, 2, 6, 6), (costs.FOLD_ROWS + 1, 2, 3, 3), padding=1, seed=62)):
        before = len(folds)
        check_case(NUMPY, case, jax_reference(case), np.float64, "direct")
        if case.ndim == 1:
            assert len(folds) == before
    assert costs.folded_tap_axes((3, 3), 16, costs.FOLD_ROWS + 1, 1) == 0
    assert costs.folded_tap_axes((3, 3, 5), 8, 8, 2) == 1         # a strided last axis: one axis
    assert costs.folded_tap_axes((3, 3, 3, 3, 4), 8, 8, 2) == 1
    assert costs.folded_tap_axes((3, 3, 3), 8, 8, 2) == 0         # fewer than two taps per phase
    assert costs.folded_tap_axes((3, 1), 16, 8, 1) == 0          # nothing to fold on the last axis
    assert costs.folded_tap_axes((3, 3), 1, 16, 1) == 0          # a first layer: an inner size of 3 left
    assert costs.folded_tap_axes((3, 3, 3), 8, 8, 1) == 1
    assert costs.folded_tap_axes((3, 3, 3, 3, 3), 2, 8, 1) == 2
