"""Border micro-blocks of the last axis (edge_kernel.py): each position sums only the last-axis taps
whose read lands in the data, checked three ways: the windows against a brute-force count, every
edge plan's (position, tap) pairs against the grid's data as ``Live`` describes it, and the values
against JAX (forward and input gradient, float32 and float64, this CPU's blocking and narrower ones).
"""
from __future__ import annotations

import math

import numpy as np
import pytest
from conv_checks import NUMPY, check_case
from conv_oracles import ConvCase, jax_reference

from convcore import direct_conv, direct_kernel, edge_kernel

if not direct_kernel.available(np, np.float32):   # pragma: no cover - CI installs Numba
    pytest.skip("Numba does not import here: the compiled passes cannot run", allow_module_level=True)


@pytest.mark.parametrize("P,ps,kw,dl", [(16, 1, 7, 1), (12, 1, 5, 1), (5, 2, 7, 1), (8, 1, 3, 2), (3, 3, 4, 2)])
def test_windows_leave_out_exactly_the_pairs_outside_the_data(P, ps, kw, dl):
    """For runs starting anywhere against data [lo, hi): a block is an edge block exactly when some
    (position, tap) reads outside, its window keeps exactly the pairs inside, and ``live_pairs``
    counts them."""
    for first_col in range(-12, 14):
        for lo, hi in ((3, 40), (0, 9), (5, 6), (-4, 100), (20, 21)):
            per_run = 3
            found = {i: (a, b) for i, a, b in edge_kernel.windows(first_col, per_run, P, ps, kw, dl, lo, hi)}
            for i in range(per_run):
                inside = np.array([[lo <= first_col + (i * P + j) * ps + t * dl < hi for t in range(kw)]
                                   for j in range(P)])
                if inside.all():
                    assert i not in found
                    continue
                a, b = found[i]
                offsets = np.arange(P)[:, None] * ps + np.arange(kw)[None, :] * dl
                assert np.array_equal((offsets >= a) & (offsets < b), inside)
                assert edge_kernel.live_pairs(P, ps, kw, dl, a, b) == int(inside.sum())


EDGE_CASES = [
    ConvCase((2, 16, 9, 28), (16, 16, 3, 7), padding=3, seed=130),                      # 'same', 2-D
    ConvCase((1, 8, 7, 6, 12), (16, 8, 3, 3, 5), padding=2, seed=131),                  # 3-D
    ConvCase((2, 12, 40), (8, 12, 9), padding=4, dilation=2, seed=132),                 # 1-D, dilated taps
    ConvCase((2, 8, 9, 33), (16, 8, 3, 7), padding=((1, 1), (5, 1)), seed=133),         # asymmetric, past the kernel
    ConvCase((1, 16, 8, 11, 13), (8, 16, 3, 5, 7), seed=134),                            # valid: gx's rows cross gy
    ConvCase((2, 16, 11, 30), (32, 8, 3, 5), padding=2, groups=2, seed=135),            # groups
    ConvCase((2, 8, 13, 31), (16, 8, 3, 7), stride=2, padding=3, seed=136),             # the stride read in place (ps 2)
    ConvCase((1, 8, 5, 5, 6, 14), (8, 8, 3, 3, 3, 5), padding=2, seed=137),             # 4-D
]


_CACHED = (direct_conv._output_plan, direct_conv._live_plan)   # the cached functions, whatever a test patches


@pytest.fixture
def every_edge(monkeypatch, request):
    """Border blocks on every pass that has one, however small or little they save; plans made anew
    before and after (the thresholds are not in their keys)."""
    monkeypatch.setattr(direct_conv, "EDGE_MIN_MADDS", 0)
    monkeypatch.setattr(direct_conv, "EDGE_MIN_SAVING", 0.0)

    def clear():
        for cached in _CACHED:
            cached.cache_clear()
        direct_conv.clear_shape_memo()

    clear()
    request.addfinalizer(clear)


def _check_pairs(plan, args) -> int:
    """Each micro-block's (position, tap) pairs along the last axis, as its loop sums them (an edge
    block its window, the others every tap), against where ``Live`` says the data lies; the edge
    blocks' count."""
    space, steps, qk, live = args[0], args[1], args[2], args[8]
    sp = space.coalesced()
    ps, kw, dl = sp.strides[-1], qk[-1], steps[-1]
    N = len(live.qx)
    shape = (int(plan.bases.max()) // math.prod(live.qx) + 1,) + tuple(live.qx)
    window = {int(m) for _, blocks in plan.edges for m in blocks}
    windows = {i: (a, b) for i, a, b in edge_kernel.windows(
        int(np.unravel_index(int(plan.bases[0]), shape)[-1]) - live.shift[N - 1], plan.per_run, plan.P, ps, kw, dl,
        live.lo[N - 1], live.hi[N - 1])}
    edges = 0
    for m, base in enumerate(plan.bases):
        col = np.unravel_index(int(base), shape)[-1]
        inside = np.array([[live.lo[N - 1] <= col + j * ps + t * dl - live.shift[N - 1] < live.hi[N - 1]
                            for t in range(kw)] for j in range(plan.P)])
        if m in window:
            edges += 1
            a, b = windows[m % plan.per_run]
            offsets = np.arange(plan.P)[:, None] * ps + np.arange(kw)[None, :] * dl
            assert np.array_equal((offsets >= a) & (offsets < b), inside)
            assert plan.kind[m] == len(plan.chunk_ptr) - 2   # the main loop sums no rows there
        else:
            assert inside.all()
    return edges


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", EDGE_CASES, ids=[f"edge{i}" for i in range(len(EDGE_CASES))])
def test_border_blocks_sum_only_the_taps_that_read_data(case, dtype, every_edge, monkeypatch):
    made = []
    real = direct_conv._output_plan.__wrapped__

    def spy(*args):
        plan = real(*args)
        made.append((plan, args))
        return plan

    monkeypatch.setattr(direct_conv, "_output_plan", spy)
    check_case(NUMPY, case, jax_reference(case), dtype, "direct", layer=True)
    edged = [(plan, args) for plan, args in made if plan.edges]
    assert edged, "no pass ran border blocks"
    for plan, args in edged:
        assert _check_pairs(plan, args) > 0


@pytest.mark.parametrize("machine", [(32, 16), (16, 16)], ids=["avx2", "sse"])
def test_border_blocks_on_narrower_machines(machine, every_edge, monkeypatch):
    """Other lanes and registers: other micro-block sizes P, other windows."""
    monkeypatch.setattr(direct_kernel, "machine", lambda: machine)
    for case in EDGE_CASES[:4]:
        check_case(NUMPY, case, jax_reference(case), np.float32, "direct", layer=True)


def test_border_blocks_split_between_threads(every_edge, monkeypatch):
    """Each thread sums the edge blocks among its own micro-blocks (the parts cut runs anywhere)."""
    from convcore import backend
    monkeypatch.setattr(backend, "SPLIT_WORK", 0)
    monkeypatch.setenv("CONVCORE_NUM_THREADS", "3")
    for case in EDGE_CASES[:2]:
        check_case(NUMPY, case, jax_reference(case), np.float32, "direct", layer=True)


def test_non_finite_filters_skip_nothing(every_edge, monkeypatch):
    """An inf in W: no tap is skipped (0 * inf is NaN), so no border blocks either; NaN where JAX has it."""
    case = EDGE_CASES[0]
    made = []
    real = direct_conv._output_plan.__wrapped__
    monkeypatch.setattr(direct_conv, "_output_plan", lambda *a: made.append(r := real(*a)) or r)
    import convcore
    rng = np.random.default_rng(3)
    x = rng.standard_normal(case.x_shape).astype(np.float32)
    W = rng.standard_normal(case.W_shape).astype(np.float32)
    W[0, 0, 0, 0] = np.inf
    y = convcore.Convolution(algorithm="direct", **case.params).forward(x, W)
    assert made and not any(plan.edges for plan in made)
    assert np.isnan(y).any()


def test_the_rule_leaves_small_savings_to_the_plain_blocks():
    """A 3x3 'same' layer's border blocks save 2-3 % of its pairs, under EDGE_MIN_SAVING: no edge
    loops; a 7x7 layer's save 6 %: edge loops (the pass large enough for both)."""
    import convcore
    for k, want in ((3, False), (7, True)):
        x = np.zeros((8, 64, 32, 32), np.float32)
        W = np.ones((64, 64, k, k), np.float32)
        engine = convcore.Convolution(algorithm="direct", padding=k // 2).prepare(x, W)._engine
        space = engine._forward_space()
        grid = engine.fw_grid
        _, plan = direct_conv._live_plan(space, grid.steps, grid.red.qk, engine.grid_input().shape[-1], 64, 64, 4,
                                         grid.max_off, engine._input_live())
        assert bool(plan.edges) == want


def test_wide_kernels_get_no_border_blocks(every_edge, monkeypatch):
    """An edge block unrolls its taps: past EDGE_MAX_TAPS along the last axis (a 1-D 257-tap layer's loop
    took minutes to compile) the plan keeps the plain blocks, and the values stay JAX's."""
    case = ConvCase((1, 8, 60), (8, 8, direct_conv.EDGE_MAX_TAPS + 2), padding=4, seed=138)
    made = []
    real = direct_conv._output_plan.__wrapped__

    def spy(*args):
        made.append(plan := real(*args))
        return plan

    monkeypatch.setattr(direct_conv, "_output_plan", spy)
    check_case(NUMPY, case, jax_reference(case), np.float32, "direct", layer=True)
    assert made and not any(plan.edges for plan in made)
