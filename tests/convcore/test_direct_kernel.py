"""The direct engine's compiled passes (direct_kernel.py: register-blocked micro-kernels in LLVM vector
IR) against JAX, on the shapes their blocking has branches for.

Every case asserts that the compiled passes ran (and how many of them), so a change of the rule that
sends a pass to BLAS cannot leave these branches untested. The vector width is the CPU's; the
``narrow_machine`` cases recompile the kernels for 256- and 128-bit vectors with 16 registers (what
an AVX2 or SSE machine gets), which this machine runs too.
"""
from __future__ import annotations

import math
import os
import subprocess
import sys
import tracemalloc

import numpy as np
import pytest
import torch
from conv_checks import NUMPY, check_case
from conv_oracles import ConvCase, jax_reference

import convcore
from convcore import backend as convcore_backend
from convcore import direct_conv, direct_kernel

if not direct_kernel.available(np, np.float32):   # pragma: no cover - CI installs Numba
    pytest.skip("Numba does not import here: the compiled passes cannot run", allow_module_level=True)

CASES = [
    # (case, compiled output passes, compiled weight passes) per forward + backward
    (ConvCase((2, 16, 12, 11), (32, 16, 3, 3), padding=1, seed=70), 2, 1),             # two vectors of channels (V = 2)
    (ConvCase((2, 8, 9, 10, 7), (8, 8, 3, 3, 3), padding=1, seed=71), 2, 1),            # narrow vectors (8 rows)
    (ConvCase((3, 6, 40), (5, 6, 5), padding=2, seed=72), 2, 1),                        # 5 and 6 rows: padded lanes
    (ConvCase((2, 20, 13, 13), (48, 20, 3, 3), padding=1, seed=73), 2, 1),              # 3 vectors (V = 3), 20 rows padded
    (ConvCase((2, 8, 17, 19), (16, 8, 3, 3), stride=2, padding=1, seed=74), 2, 1),      # stride read in place (ps = 2)
    (ConvCase((1, 8, 23, 25), (8, 8, 5, 5), stride=3, padding=2, seed=75), 2, 1),       # ps = 3, rows shorter than a block
    (ConvCase((2, 16, 14, 15), (16, 4, 3, 3), groups=4, padding=2, dilation=2, seed=76), 2, 1),   # groups, dilation
    (ConvCase((1, 8, 6, 5, 6, 5), (8, 8, 3, 3, 3, 3), padding=1, seed=77), 2, 1),       # N = 4
    (ConvCase((2, 12, 300), (12, 12, 7), padding=3, seed=78), 2, 1),                    # runs cut into segments (> 256)
    (ConvCase((2, 8, 9, 9), (8, 8, 3, 3), padding=1, padding_mode="reflect", seed=79), 2, 1),   # gx over the whole grid
    (ConvCase((2, 8, 6, 7), (8, 8, 3, 2), padding=((2, 0), (1, 3)), seed=84), 2, 1),   # gx cropped from an asymmetric ring
    # gx over a polyphase grid, folded into x by the threads (direct_kernel.phase_fold):
    (ConvCase((2, 8, 11, 10), (8, 4, 3, 3), stride=(2, 1), padding=1, groups=2, seed=85), 2, 1),   # groups x phases
    (ConvCase((2, 4, 9, 8, 7), (8, 4, 3, 3, 3), stride=2, padding=((1, 0), (0, 2), (1, 1)), seed=86), 2, 1),   # 3-D
    (ConvCase((2, 4, 30), (6, 4, 5), stride=4, seed=87), 2, 1),                          # x's last cell never read: 0
    (ConvCase((1, 6, 13, 12), (8, 6, 3, 3), stride=2, padding=2, dilation=2, seed=88), 2, 1),   # dilation
    # weight gradient columns first (direct_kernel.columns_first: few columns (c, tap), many filters):
    (ConvCase((2, 3, 12, 13), (64, 3, 3, 3), padding=1, seed=99), 1, 1),                # 27 columns, 64 rows; gx: BLAS
    (ConvCase((2, 2, 11, 10), (48, 1, 3, 3), groups=2, padding=1, seed=100), 1, 1),     # 9 columns, 24 rows a group
    (ConvCase((2, 3, 17, 15), (64, 3, 3, 3), stride=2, padding=1, seed=101), 2, 1),     # gy in the space's own layout
    (ConvCase((2, 3, 300), (64, 3, 9), seed=102), 1, 1),                                 # segments of 256 positions
    (ConvCase((2, 8, 10, 9), (64, 8, 3, 3), padding=1, seed=103), 2, 1),                # 72 columns, 64 rows
    # runs of 16 positions and more: y and gx written, gy's rows gathered, in tiles of a vector's lanes
    (ConvCase((2, 8, 20, 21), (32, 8, 3, 3), padding=1, seed=104), 2, 1),               # two tiles of channels
    (ConvCase((2, 8, 6, 40), (20, 8, 3, 3), padding=1, seed=105), 2, 1),                # 20 = a tile and 4 channels
    (ConvCase((2, 3, 12, 12), (16, 3, 3, 3), padding=1, seed=80), 1, 1),                # gx has 3 rows: BLAS
    (ConvCase((2, 16, 10, 10), (2, 16, 3, 3), padding=1, seed=81), 1, 0),               # y and gW have 2 rows: BLAS
]


@pytest.fixture
def passes(monkeypatch):
    """Counts of compiled (output, weight) passes run, and of input gradients folded from a polyphase
    grid into x (an observation: the real methods run)."""
    seen = {"out": 0, "w": 0, "fold": 0}
    real_out, real_w = direct_conv.DirectConv._compiled_outputs, direct_conv.DirectConv._compiled_weights
    real_fold = direct_conv.DirectConv._compiled_phase_grad

    def fold(self, *args, **kwargs):
        seen["fold"] += 1
        return real_fold(self, *args, **kwargs)

    def outputs(self, *args, **kwargs):
        seen["out"] += 1
        return real_out(self, *args, **kwargs)

    def weights(self, *args, **kwargs):
        seen["w"] += 1
        return real_w(self, *args, **kwargs)

    monkeypatch.setattr(direct_conv.DirectConv, "_compiled_outputs", outputs)
    monkeypatch.setattr(direct_conv.DirectConv, "_compiled_weights", weights)
    monkeypatch.setattr(direct_conv.DirectConv, "_compiled_phase_grad", fold)
    return seen


_PLANS = (direct_conv._output_plan, direct_conv._live_plan, direct_conv._weight_plan)   # the cached functions,
# whatever a test patches


def _clear_plans():
    for plan in _PLANS:
        plan.cache_clear()
    direct_conv.clear_shape_memo()


def _forget_plans(request):
    """Plans made anew in this test (a rule it patches is not in their keys) and after it."""
    _clear_plans()
    request.addfinalizer(_clear_plans)


@pytest.fixture(params=["cpu", "avx2", "sse"])
def machine(request, monkeypatch):
    """This CPU's vectors, or (bytes, registers) of narrower machines: kernels compiled anew, and
    plans made anew (they are cached on the shapes alone, so a plan made for this CPU's blocking
    would otherwise run on the narrower machine), before and after."""
    _clear_plans()
    request.addfinalizer(_clear_plans)
    if request.param == "avx2":
        monkeypatch.setattr(direct_kernel, "machine", lambda: (32, 16))
    elif request.param == "sse":
        monkeypatch.setattr(direct_kernel, "machine", lambda: (16, 16))
    return request.param


def test_narrow_machines_make_their_own_plans(machine, passes, monkeypatch):
    """The weight pass of a columns-first layer and its output passes run loops blocked for the machine
    of the case (the lanes a plan's blocking uses are the machine's), not plans left by an earlier case."""
    seen = []
    real_w = direct_conv._weight_plan
    monkeypatch.setattr(direct_conv, "_weight_plan", lambda *a: seen.append(r := real_w(*a)) or r)
    case = ConvCase((2, 3, 12, 13), (64, 3, 3, 3), padding=1, seed=105)
    check_case(NUMPY, case, jax_reference(case), np.float32, "direct", layer=True)
    lanes = direct_kernel.machine()[0] // 4
    assert seen and all(plan.blocking.VW <= lanes for plan in seen)
    assert seen[0].blocking.VW == min(lanes, 16)   # 27 columns: whole vectors of this machine


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case,outputs,weights", CASES, ids=[f"case{i}" for i in range(len(CASES))])
def test_compiled_direct_matches_jax(case, outputs, weights, dtype, passes, machine):
    check_case(NUMPY, case, jax_reference(case), dtype, "direct", layer=True)
    assert (passes["out"], passes["w"]) == (outputs, weights)
    # a strided layer with zero padding whose input gradient runs compiled folds it straight into x
    strided = any(v > 1 for v in np.broadcast_to(case.stride, (case.ndim,)))
    assert passes["fold"] == int(strided and case.padding_mode == "zeros" and outputs == 2)


@pytest.mark.parametrize("lead", [0.0, 1.0])
@pytest.mark.parametrize("threads", [2, 3])
def test_compiled_passes_split_between_threads_match_jax(threads, lead, passes, monkeypatch):
    """Every pass handed to the pool however small: the output blocks cut across groups, the weight
    gradient's per-thread sums added; evenly, and with the calling thread's part as long as its lead
    may make it (``LEAD_S`` of a second: capped at half the next part)."""
    monkeypatch.setattr(convcore_backend, "SPLIT_WORK", 0)
    monkeypatch.setattr(direct_conv, "LEAD_S", lead)
    monkeypatch.setenv("CONVCORE_NUM_THREADS", str(threads))
    for case in (ConvCase((2, 16, 9, 11), (16, 4, 3, 3), groups=4, padding=1, seed=82),
                 ConvCase((3, 8, 7, 6, 5), (24, 8, 3, 3, 3), padding=1, seed=83)):
        check_case(NUMPY, case, jax_reference(case), np.float32, "direct", layer=True)
    assert passes["out"] == 4 and passes["w"] == 2


@pytest.mark.parametrize("threads", [2, 3, 5])
def test_weight_and_input_gradients_side_by_side_match_jax(threads, passes, monkeypatch):
    """The two backward passes run side by side (``costs.pass_split``), each on its share of the
    threads, their parts handed out at once: over the input space, over a polyphase grid (strided),
    with groups."""
    from convcore import costs
    monkeypatch.setattr(costs, "SIDE_BY_SIDE_MIN", 0)
    monkeypatch.setattr(costs, "SIDE_BY_SIDE_SLACK", 100.0)
    monkeypatch.setenv("CONVCORE_NUM_THREADS", str(threads))
    sides = []
    real = direct_conv.DirectConv._both_gradients
    monkeypatch.setattr(direct_conv.DirectConv, "_both_gradients",
                        lambda self, split, *args: sides.append(split) or real(self, split, *args))
    cases = (ConvCase((2, 16, 9, 11), (16, 4, 3, 3), groups=4, padding=1, seed=89),
             ConvCase((2, 8, 13, 12), (12, 8, 3, 3), stride=2, padding=1, seed=90),
             ConvCase((3, 8, 7, 6, 5), (24, 8, 3, 3, 3), padding=1, seed=91))
    for case in cases:
        check_case(NUMPY, case, jax_reference(case), np.float32, "direct", layer=True)
    assert len(sides) == len(cases) and all(sum(split) == threads and min(split) >= 1 for split in sides)
    assert passes["out"] == 2 * len(cases) and passes["w"] == len(cases)


CUT_CASES = [
    # (case, passes whose last axis is cut to the cells they write: forward, input gradient)
    (ConvCase((2, 12, 9, 10, 8), (16, 12, 5, 5, 5), seed=92), (True, False)),           # valid: 4 of 8 outputs per row
    (ConvCase((2, 8, 6, 7), (16, 8, 5, 5), padding=2, seed=93), (True, True)),          # "same" on a small input
    (ConvCase((1, 8, 5, 6, 7), (8, 8, 5, 3, 5), padding=((2, 2), (1, 1), (4, 0)), seed=94), (True, True)),   # x starts 4 cells in
    (ConvCase((2, 16, 7, 9), (16, 4, 3, 3), padding=3, dilation=3, groups=4, seed=95), (True, True)),
    (ConvCase((2, 8, 9), (8, 8, 7), padding=3, seed=96), (True, True)),                # 1-D: one run per image
    (ConvCase((1, 8, 3, 30), (8, 8, 3, 21), padding=((0, 0), (20, 0)), seed=98), (True, True)),   # runs padded past the grid
    (ConvCase((2, 8, 12, 44), (8, 8, 3, 3), padding=1, seed=97), (True, True)),        # a thin ring, still fewer cells
    (ConvCase((2, 8, 12, 58), (8, 8, 3, 3), padding=1, seed=99), (False, False)),      # cut rows pad as much as the ring: whole
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case,cut", CUT_CASES, ids=[f"cut{i}" for i in range(len(CUT_CASES))])
def test_passes_over_the_written_cells_alone_match_jax(case, cut, dtype, passes, monkeypatch):
    """Where a ring of the last axis is a large part of it, the forward and the input gradient run
    over the cells they write only (``DirectConv._cut_last``): every run its own micro-blocks, the
    scatter's shift taken up by the space's origin, the grids' tails still long enough."""
    taken = []
    real = direct_conv.DirectConv._cut_last

    def spy(self, space, length, start, rows):
        out = real(self, space, length, start, rows)
        taken.append(out[0] != space)
        return out

    monkeypatch.setattr(direct_conv.DirectConv, "_cut_last", spy)
    check_case(NUMPY, case, jax_reference(case), dtype, "direct", layer=True)
    assert passes["out"] == 2 and passes["w"] == 1
    # the forward's space is asked for first (its grid's tail), the input gradient's last (the
    # answers are memoised per layer shape: the later asks of the forward reuse the first's)
    assert taken[0] == cut[0] and taken[-1] == cut[1]


LIVE_CASES = [
    # padding past the kernel's reach: the outer rows read only padding (blocks that sum nothing)
    ConvCase((1, 8, 6, 20), (8, 8, 3, 3), padding=((4, 3), (1, 1)), seed=110),
    ConvCase((2, 8, 6, 5, 20), (16, 8, 5, 3, 3), padding=2, dilation=(2, 1, 1), seed=111),   # 3-D, dilated
    ConvCase((1, 8, 5, 5, 4, 18), (8, 8, 3, 3, 3, 3), padding=1, seed=112),                 # 4-D
    ConvCase((2, 16, 7, 9, 17), (16, 4, 3, 5, 3), padding=((2, 0), (1, 3), (1, 1)), groups=4, seed=113),
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", LIVE_CASES, ids=[f"live{i}" for i in range(len(LIVE_CASES))])
def test_output_passes_skip_the_taps_that_read_only_padding(case, dtype, passes, monkeypatch):
    """The forward and the input gradient sum, per run, only the (channel, tap) rows whose reads on
    the axes outside the run land in x (in gy): as many multiply-adds as a brute-force count of the
    taps inside the data, which JAX's values then confirm."""
    plans = []
    real = direct_conv._output_plan.__wrapped__
    monkeypatch.setattr(direct_conv, "_output_plan", lambda *a: plans.append(a) or real(*a))
    monkeypatch.setattr(direct_conv, "_live_plan", direct_conv._live_plan.__wrapped__)   # each call asks again
    check_case(NUMPY, case, jax_reference(case), dtype, "direct", layer=True)
    plans = list(dict.fromkeys(plans))   # (pass_split's estimate asks for the input gradient's plan too)
    assert passes["out"] == 2 and len(plans) == 2
    geom = convcore.geometry.make_geometry(case.x_shape, case.W_shape, stride=case.stride, padding=case.padding,
                                           dilation=case.dilation, groups=case.groups)
    k = case.W_shape[2:]
    dil = geom.dilation
    for forward, args, (lo, size, _) in zip((True, False), plans, (
            ([p for p, _ in geom.pads], geom.spatial, geom.out_spatial),                 # forward: x in A
            ([(kk - 1) * d - p for kk, d, (p, _) in zip(k, dil, geom.pads)], geom.out_spatial, geom.spatial))):
        plan = real(*args)
        kinds = plan.live_kind if plan.edges else plan.kind   # (edge blocks: their rows, summed by edge loops)
        summed = int(sum(plan.chunk_len[plan.chunk_ptr[c]:plan.chunk_ptr[c + 1]].sum() for c in kinds))
        sp = args[0].coalesced()
        outer = len(args[0].dims) - (len(args[0].dims) - len(sp.dims) + 1) - 1
        assert outer >= 1
        want = 0
        for pos in np.ndindex(*args[0].dims[1:1 + outer]):   # a run's outer coordinates, per image
            alive = 1
            for d in range(outer):
                alive *= sum(0 <= pos[d] + t * dil[d] - lo[d] < size[d] for t in range(k[d]))
            want += alive * int(np.prod(k[outer:]))
        runs = len(plan.bases) // plan.per_run
        channels = args[4]
        assert summed == channels * want * plan.per_run * runs // int(np.prod(args[0].dims[1:1 + outer]))
        if forward:   # the padding reaches past the kernel, or makes a ring of the outer axes: taps skipped
            assert summed < channels * int(np.prod(k)) * len(plan.bases)


VALID_CASES = [
    ConvCase((1, 8, 11, 10, 12), (8, 8, 5, 4, 5), seed=114),                 # 3-D: x fills gx's grid
    ConvCase((2, 8, 6, 7, 6, 9), (8, 8, 3, 3, 3, 3), seed=115),             # 4-D
    ConvCase((1, 16, 9, 10, 11), (8, 16, 4, 3, 5), dilation=(2, 1, 1), seed=116),
]


@pytest.mark.parametrize("case", VALID_CASES, ids=[f"valid{i}" for i in range(len(VALID_CASES))])
def test_valid_input_gradient_runs_rows_and_skips_the_front(case, passes, monkeypatch):
    """Unpadded, x fills the input gradient's grid: its space is one contiguous box, whose one long run
    would sum every tap everywhere (gy lies in a corner of the grid). ``_live_plan`` cuts it into rows
    instead, each skipping the taps that read only gy's zero front and ring on the axes outside it, and
    along each row, per position (``edge_kernel``), those whose read lands outside gy: as many
    multiply-adds as a brute-force count of those (position, tap) pairs, under SHORTER_RUNS_BELOW of the
    long runs'. JAX confirms the values; with the rule off (0), the long runs, and the same values."""
    chosen = []
    real = direct_conv._live_plan.__wrapped__
    monkeypatch.setattr(direct_conv, "_live_plan", lambda *a: chosen.append((a, real(*a))) or chosen[-1][1])
    check_case(NUMPY, case, jax_reference(case), np.float32, "direct", layer=True)
    assert passes["out"] == 2
    args, (gx_space, gx_plan) = chosen[-1]
    geom = convcore.geometry.make_geometry(case.x_shape, case.W_shape, dilation=case.dilation)
    N, k, dil = geom.ndim, case.W_shape[2:], geom.dilation
    assert gx_space.coalesced().dims == gx_space.dims   # rows of the last axis
    want = 0
    for pos in np.ndindex(*geom.spatial[:-1]):   # per row: the taps whose read on the outer axes lands in gy
        alive = 1
        for d in range(N - 1):
            alive *= sum(0 <= pos[d] - (k[d] - 1 - t) * dil[d] < geom.out_spatial[d] for t in range(k[d]))
        want += alive
    # along the row, position j (its micro-blocks' padding too) sums the taps whose read lands in gy
    along = sum(0 <= j - (k[-1] - 1 - t) * dil[-1] < geom.out_spatial[-1]
                for j in range(gx_plan.P * gx_plan.per_run) for t in range(k[-1]))
    assert gx_plan.edges   # gy lies in a corner: rows cross its border
    assert direct_conv._plan_rows(gx_plan) == case.x_shape[0] * case.W_shape[0] * want * along
    long_runs = direct_conv._output_plan(args[0]._replace(run_axes=0), *args[1:])
    assert long_runs.L == case.x_shape[0] * math.prod(case.x_shape[2:])   # one run: the box
    assert direct_conv._plan_rows(gx_plan) < direct_conv.SHORTER_RUNS_BELOW * direct_conv._plan_rows(long_runs)
    monkeypatch.setattr(direct_conv, "SHORTER_RUNS_BELOW", 0.0)
    chosen.clear()
    check_case(NUMPY, case, jax_reference(case), np.float32, "direct", layer=True)
    assert len(chosen[-1][1][0].coalesced().dims) == 1   # the whole box as one run


PHASE_CASES = [
    ConvCase((2, 8, 32, 30), (8, 8, 9, 9), stride=2, padding=4, seed=117),                     # 2-D, k 9
    ConvCase((1, 8, 14, 15, 13), (8, 8, 5, 5, 3), stride=2, padding=((2, 2), (2, 1), (1, 1)), seed=118),   # 3-D
    ConvCase((2, 8, 19, 22), (8, 4, 7, 5), stride=(3, 2), padding=((3, 2), (2, 2)), groups=2, seed=119),
    ConvCase((1, 8, 24, 25), (8, 8, 5, 5), stride=2, padding=4, dilation=2, seed=120),           # dilated taps
    ConvCase((2, 8, 26, 20), (8, 8, 7, 1), stride=3, padding=((3, 3), (0, 0)), seed=121),        # k 1 < stride 3: zeros
    ConvCase((1, 8, 27, 18), (8, 8, 7, 7), stride=(2, 1), padding=((3, 0), (3, 3)), seed=122),   # x's tail never read
]


def _phase_taps_brute_force(geom) -> int:
    """Sum over x's cells that some output reads of the taps that may read them: cell j of axis d is
    read by tap t from output i = (j + lo - t) / s where that is a whole number (gy's zeros where i is
    outside it: those taps the passes skip only for finite filters). Cells past the last output's
    reach (``read``) count nothing."""
    total = 0
    read = tuple((o - 1) * s + k for o, s, k in zip(geom.out_spatial, geom.stride, geom.kernel))
    for cell in np.ndindex(*geom.spatial):
        taps = 1
        for d, j in enumerate(cell):
            s, lo = geom.stride[d], geom.pads[d][0]
            taps *= sum(1 for t in range(geom.kernel[d]) if (j + lo - t) % s == 0) if j + lo < read[d] else 0
        total += taps
    return total


@pytest.mark.parametrize("case", PHASE_CASES, ids=[f"phase{i}" for i in range(len(PHASE_CASES))])
def test_strided_input_gradient_runs_phase_by_phase(case, passes, monkeypatch):
    """A strided layer's input gradient as one pass per phase of x (``DirectConv._phases``), against
    JAX: x's cells of each phase only (not the polyphase grid's ring) and each phase's own taps (not the
    polyphase filters' zeros), written a stride apart by the scatter; a kernel narrower than its stride
    leaves phases with no tap, whose cells get 0. With the taps that read only gy's zeros counted too
    (as for non-finite filters), the phases' (position, tap) pairs are a brute-force count of the taps
    that may read each cell of x (undilated cases). With the rule off
    (PHASE_MIN_FRACTION 2), the whole polyphase grid folded into x, the same values."""
    monkeypatch.setattr(direct_conv, "PHASE_MIN_SAVING", 0)
    monkeypatch.setattr(direct_conv, "PHASE_MIN_FRACTION", 0.0)
    direct_conv.clear_shape_memo()
    phased = []
    real = direct_conv.DirectConv._compiled_phase_passes
    monkeypatch.setattr(direct_conv.DirectConv, "_compiled_phase_passes",
                        lambda self, *a, **k: phased.append(self._phases()) or real(self, *a, **k))
    check_case(NUMPY, case, jax_reference(case), np.float32, "direct", layer=True)
    assert phased and passes["fold"] == 0 and passes["out"] == 1 + len(phased[-1])
    geom = convcore.geometry.make_geometry(case.x_shape, case.W_shape, stride=case.stride, padding=case.padding,
                                           dilation=case.dilation, groups=case.groups)
    pairs = sum(space.count // geom.batch * int(np.prod(T)) for _, T, space, _, _ in phased[-1])
    if geom.dilation == (1,) * geom.ndim:   # (dilated: the holes between taps are taps of zeros here)
        assert pairs == _phase_taps_brute_force(geom)
    monkeypatch.setattr(direct_conv, "PHASE_MIN_FRACTION", 2.0)
    direct_conv.clear_shape_memo()
    check_case(NUMPY, case, jax_reference(case), np.float32, "direct", layer=True)
    assert passes["fold"] == 1


def test_phase_passes_with_non_finite_filters(monkeypatch):
    """An inf in W: the phases then skip no tap that reads gy's zeros (0 * inf is NaN), so gx is what the
    whole polyphase grid gives, NaN and all (there JAX and PyTorch leave the zeros' products out: finite
    values where this engine, either way, has NaN; known, not changed here). Its infs are JAX's, and its
    finite cells JAX's values. The 9x9 stride-2 layer of PHASE_CASES, one image."""
    import jax
    import jax.numpy as jnp
    rng = np.random.default_rng(7)
    x = rng.standard_normal((1, 8, 32, 30)).astype(np.float32)
    W = rng.standard_normal((8, 8, 9, 9)).astype(np.float32)
    W[1, 2, 0, 0] = np.inf
    with jax.default_device(jax.devices("cpu")[0]):
        ref_y, vjp = jax.vjp(lambda a: jax.lax.conv_general_dilated(a, jnp.asarray(W), (2, 2), ((4, 4), (4, 4))),
                             jnp.asarray(x))
        ref_gx = np.asarray(vjp(jnp.ones_like(ref_y))[0])
    grads = []
    for fraction in (0.0, 2.0):   # phase by phase, then the whole grid
        monkeypatch.setattr(direct_conv, "PHASE_MIN_SAVING", 0)
        monkeypatch.setattr(direct_conv, "PHASE_MIN_FRACTION", fraction)
        direct_conv.clear_shape_memo()
        op = convcore.Convolution(algorithm="direct", stride=2, padding=4)
        y = op.forward(x, W)
        assert (op._engine._phases() is not None) == (fraction == 0.0)
        grads.append(op.backward(np.ones_like(y))[0])
    phased, whole = grads
    assert np.isinf(ref_gx).any()
    np.testing.assert_array_equal(np.isinf(phased), np.isinf(ref_gx))
    np.testing.assert_array_equal(np.isnan(phased), np.isnan(whole))
    finite = np.isfinite(phased)
    np.testing.assert_allclose(phased[finite], ref_gx[finite], rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("shape, padding", [((1, 8, 6, 20), ((2, 2), (1, 1))), ((1, 8, 5, 6, 18), ((1, 1),) * 3)])
def test_non_finite_filters_spread_as_in_jax(shape, padding):
    """0 * inf is NaN: with an inf in W no padding tap is skipped, so y and gx have NaN where JAX's
    have (at the borders: zero padding times inf), not finite values."""
    import jax
    import jax.numpy as jnp
    rng = np.random.default_rng(5)
    N = len(shape) - 2
    x = rng.standard_normal(shape).astype(np.float32)
    W = rng.standard_normal((8, 8) + (3,) * N).astype(np.float32)
    W[0, 0, (0,) * N] = np.inf
    with jax.default_device(jax.devices("cpu")[0]):
        ref_y, vjp = jax.vjp(lambda a: jax.lax.conv_general_dilated(a, jnp.asarray(W), (1,) * N, padding),
                             jnp.asarray(x))
        ref_gx = vjp(jnp.ones_like(ref_y))[0]
    op = convcore.Convolution(algorithm="direct", padding=padding)
    y = op.forward(x, W)
    gx = op.backward(np.ones_like(y), x, W)[0]
    for ours, theirs in ((y, np.asarray(ref_y)), (gx, np.asarray(ref_gx))):
        assert np.isnan(theirs).any()
        np.testing.assert_array_equal(np.isnan(ours), np.isnan(theirs))
        np.testing.assert_array_equal(np.isinf(ours), np.isinf(theirs))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", LIVE_CASES, ids=[f"live{i}" for i in range(len(LIVE_CASES))])
def test_the_weight_pass_skips_the_taps_that_read_only_padding(case, dtype, passes, monkeypatch):
    """The weight pass's runs span the last two axes (a whole-axis space): on the axes before them (3-D
    and up) each run broadcasts only the blocks of R (tap, channel) rows that hold a tap whose reads
    land in x: every such row (a brute-force count), and no block without one; along each row, only the
    positions where one of its rows' last-axis taps reads x (``_row_windows``, also brute-force); JAX's
    gW confirms the sums. A 2-D layer skips nothing."""
    plans = []
    real = direct_conv._weight_plan.__wrapped__
    monkeypatch.setattr(direct_conv, "_weight_plan", lambda *a: plans.append(a) or real(*a))
    check_case(NUMPY, case, jax_reference(case), dtype, "direct", layer=True)
    assert passes["w"] == 1 and len(plans) == 1
    plan = real(*plans[0])
    geom = convcore.geometry.make_geometry(case.x_shape, case.W_shape, stride=case.stride, padding=case.padding,
                                           dilation=case.dilation, groups=case.groups)
    N, k, C, R = geom.ndim, case.W_shape[2:], case.W_shape[1], plan.blocking.R
    if N == 2:
        assert not plan.tap_major and list(zip(plan.span_lo, plan.span_hi)) == [(0, len(plan.koff))]
        return
    assert plan.tap_major
    # its blocks of R rows lie within one tap where some R' <= R from MIN_TAP_BLOCK on divides C
    assert C % R == 0 or all(C % r for r in range(direct_conv.MIN_TAP_BLOCK, R + 1))
    outer, lo = N - 2, [p for p, _ in geom.pads]
    per_run = len(plan.seg_kind) // (geom.batch * int(np.prod(geom.out_spatial[:outer])))
    skipped = False
    for r, pos in enumerate(np.ndindex(*((geom.batch,) + geom.out_spatial[:outer]))):   # a run's coordinates
        kind = plan.seg_kind[r * per_run]
        spans = [(plan.span_lo[q], plan.span_hi[q]) for q in range(plan.kind_ptr[kind], plan.kind_ptr[kind + 1])]
        summed = np.zeros(len(plan.koff), bool)
        for a, b in spans:
            summed[a:b] = True
        alive = np.zeros(len(plan.koff), bool)
        for tap, t in enumerate(np.ndindex(*k)):   # rows tap * C + c
            alive[tap * C:(tap + 1) * C] = all(0 <= pos[1 + d] + t[d] * geom.dilation[d] - lo[d] < geom.spatial[d]
                                              for d in range(outer))
        assert not (alive & ~summed).any()                                   # every live row summed
        assert alive.reshape(-1, R).any(axis=1)[summed.reshape(-1, R).any(axis=1)].all()   # no dead block
        skipped |= not summed[:C * int(np.prod(k))].all()
    assert skipped
    # along each row, a block of R rows sums the positions where one of its rows' last-axis taps reads x
    # (a brute-force union over its rows); the last axis's border triangles left out somewhere
    taps = list(np.ndindex(*k))
    keep = plan.keep or geom.out_spatial[-1]
    trimmed = False
    s, d = geom.stride[-1], geom.dilation[-1]
    for b in range(len(plan.koff) // R):
        rows = [r for r in range(b * R, (b + 1) * R) if r < C * len(taps)]
        reads = [any(0 <= c * s + taps[r // C][-1] * d - lo[-1] < geom.spatial[-1] for r in rows) for c in range(keep)]
        window = [plan.win_lo[b] <= c < plan.win_hi[b] for c in range(keep)]
        assert reads == window, b
        trimmed |= not all(reads)
    assert trimmed   # every 3-D case here pads the last axis past what its taps reach from a border


@pytest.mark.parametrize("case", [
    ConvCase((1, 8, 40, 30), (8, 8, 3, 3), padding=1, seed=114),          # runs of 40 rows of 32: segments of 8 rows
    ConvCase((2, 8, 5, 6, 9), (16, 8, 3, 3, 3), padding=1, seed=115),     # a run of 6 rows of 11, taps skipped too
    ConvCase((2, 3, 12, 13), (64, 3, 3, 3), padding=1, seed=116),         # columns first
], ids=["2d", "3d", "columns"])
def test_the_weight_pass_leaves_out_each_rows_ring(case, passes, monkeypatch):
    """The weight pass runs over whole-axis rows (q_N positions, so that rows join into long runs) but
    sums only each row's first o_N, the outputs (gy is zero on the ring): its segments are whole rows,
    every output is summed once, and JAX's gW confirms the sums."""
    plans = []
    real = direct_conv._weight_plan.__wrapped__
    monkeypatch.setattr(direct_conv, "_weight_plan", lambda *a: plans.append(a) or real(*a))
    check_case(NUMPY, case, jax_reference(case), np.float32, "direct", layer=True)
    assert passes["w"] == 1 and len(plans) == 1
    plan = real(*plans[0])
    q, o = case.x_shape[-1] + 2, case.x_shape[-1]
    assert (plan.row_len, plan.keep) == (q, o)
    assert (plan.seg_len % q == 0).all() and (plan.seg_len <= direct_kernel.SEGMENT).all()
    assert int(plan.seg_len.sum()) // q * o == case.x_shape[0] * int(np.prod(case.x_shape[2:]))


def test_non_finite_gy_spreads_in_gw_as_in_jax():
    """gy * 0 is NaN: with an inf in gy the weight pass skips no padding tap, so gW has NaN where JAX's
    has (the taps that read padding at that output: inf * 0), not finite values."""
    import jax
    import jax.numpy as jnp
    rng = np.random.default_rng(7)
    x = rng.standard_normal((1, 8, 5, 6, 18)).astype(np.float32)
    W = rng.standard_normal((8, 8, 3, 3, 3)).astype(np.float32)
    gy = np.ones((1, 8, 5, 6, 18), np.float32)
    gy[0, 0, 0, 0, 3] = np.inf
    with jax.default_device(jax.devices("cpu")[0]):
        _, vjp = jax.vjp(lambda w: jax.lax.conv_general_dilated(jnp.asarray(x), w, (1,) * 3, [(1, 1)] * 3),
                         jnp.asarray(W))
        ref = np.asarray(vjp(jnp.asarray(gy))[0])
    op = convcore.Convolution(algorithm="direct", padding=1)
    op.forward(x, W)
    gW = op.backward(gy)[1]
    assert np.isnan(ref).any()
    np.testing.assert_array_equal(np.isnan(gW), np.isnan(ref))
    np.testing.assert_array_equal(np.isinf(gW), np.isinf(ref))


def test_weight_gradient_columns_first_where_the_rule_says(passes, monkeypatch):
    """The weight pass turns its roles (gy's rows broadcast, the columns gathered) exactly where
    ``columns_first`` says, and matches JAX either way (the rule flipped: the other loop)."""
    built = []
    real = direct_conv._weight_plan.__wrapped__
    monkeypatch.setattr(direct_conv, "_weight_plan", lambda *a: built.append(a[8] > 0) or real(*a))
    first, other = ConvCase((2, 3, 12, 13), (64, 3, 3, 3), padding=1, seed=104), CASES[0][0]
    for case in (first, other):
        check_case(NUMPY, case, jax_reference(case), np.float32, "direct", layer=True)
    assert built == [True, False]
    monkeypatch.setattr(direct_kernel, "columns_first", lambda columns, rows: not (2 * columns <= rows or (
        rows >= 64 and columns <= 2 * rows)))
    for case in (first, other):
        check_case(NUMPY, case, jax_reference(case), np.float32, "direct", layer=True)
    assert built == [True, False, False, True]


@pytest.mark.parametrize("count,threads,madds", [(1000, 2, 10**8), (7, 2, 10), (1000, 3, 10**6), (5, 5, 10**9),
                                                 (2, 2, 1), (10**6, 2, 10**12)])
def test_the_calling_threads_part_leads_by_a_bounded_amount(count, threads, madds):
    """The cuts cover [0, count) in order; only the first part (the caller's) grows, by LEAD_S's worth of
    multiply-adds at most half the next part; deferred parts (run beside another pass) stay even."""
    cuts = direct_conv._cuts(count, threads, madds, deferred=False)
    even = direct_conv._cuts(count, threads, madds, deferred=True)
    assert even == [count * t // threads for t in range(threads + 1)]
    assert cuts[0] == 0 and cuts[-1] == count and cuts[2:] == even[2:]
    assert all(a <= b for a, b in zip(cuts, cuts[1:]))
    lead = cuts[1] - even[1]
    assert 0 <= lead <= (even[2] - even[1]) // 2
    assert lead == min(int(count * direct_conv.LEAD_S * direct_conv.LEAD_RATE / madds), (even[2] - even[1]) // 2)


def test_pass_split_rules():
    """Side by side only where both passes are large enough and the shares keep them balanced: within
    SIDE_BY_SIDE_SLACK of an even split, SIDE_BY_SIDE_SLACK_LARGE for passes of SIDE_BY_SIDE_LARGE."""
    from convcore import costs
    big, large = costs.SIDE_BY_SIDE_MIN, costs.SIDE_BY_SIDE_LARGE
    assert costs.pass_split(big, big, 2) == (1, 1)
    assert costs.pass_split(big, big, 1) is None
    assert costs.pass_split(big - 1, 10 * big, 2) is None        # one pass too small to hand off
    assert costs.pass_split(big, 2 * big, 2) is None             # 1:2 on two threads: 1.33x an even split
    assert costs.pass_split(big, 3 * big, 4) == (1, 3)          # 1:3 on four threads: even
    assert costs.pass_split(3 * big, 2 * big, 5) == (3, 2)
    assert costs.pass_split(big, big * 3 // 2, 2) == (1, 1)       # 1:1.5 on two threads: 1.2x, small passes
    assert costs.pass_split(large, large * 3 // 2, 2) is None     # large ones: one after the other
    assert costs.pass_split(large, large * 6 // 5, 2) == (1, 1)   # 1:1.2: 1.09x


def test_the_input_gradients_work_leaves_out_skipped_taps():
    """The input gradient's multiply-adds as the compiled pass computes them, for ``pass_split``: a 4-D
    3^4 layer padded by 1 on 8^4 sums, on each of the three axes outside a run, 22 of its 8 x 3
    (row, tap) pairs (the edge rows read one tap of padding), and each run is cut to x's 8 cells, one
    micro-block whose two ends skip the same way (``edge_kernel``: 22 pairs along it; the weight pass:
    10 cells a run, every tap, 1.8x the work)."""
    x = np.random.default_rng(5).standard_normal((1, 8, 8, 8, 8, 8)).astype(np.float32)
    W = np.random.default_rng(6).standard_normal((8, 8, 3, 3, 3, 3)).astype(np.float32)
    engine = convcore.Convolution(algorithm="direct", padding=1).prepare(x, W)._engine
    runs_live_taps = 22 ** 3 * 22   # over the runs: live taps of the three outer axes; along a run, 22 pairs
    assert engine._input_grad_madds(engine._input_space(), 8, True) == runs_live_taps * 8 * 8
    W[0, 0, 0, 0, 0, 0] = np.inf   # no tap skipped: 0 * inf is NaN
    engine = convcore.Convolution(algorithm="direct", padding=1).prepare(x, W)._engine
    assert engine._input_grad_madds(engine._input_space(), 8, False) == 8 * 8 ** 3 * 81 * 8 * 8


@pytest.mark.parametrize("large", [False, True])
def test_unbalanced_large_gradients_run_one_after_the_other(large, passes, monkeypatch, request):
    """The 4-D layer above without border blocks (``EDGE_MIN_MADDS`` out of reach): its weight pass is
    1.62x the input gradient's work; side by side as small passes, one after the other as large ones
    (``SIDE_BY_SIDE_LARGE`` lowered to them). Both against JAX."""
    from convcore import costs
    monkeypatch.setattr(direct_conv, "EDGE_MIN_MADDS", 1 << 62)
    _forget_plans(request)
    monkeypatch.setenv("CONVCORE_NUM_THREADS", "2")
    monkeypatch.setattr(costs, "SIDE_BY_SIDE_MIN", 1)
    if large:
        monkeypatch.setattr(costs, "SIDE_BY_SIDE_LARGE", 1)
    sides = []
    real = direct_conv.DirectConv._both_gradients
    monkeypatch.setattr(direct_conv.DirectConv, "_both_gradients",
                        lambda self, split, *args: sides.append(split) or real(self, split, *args))
    case = ConvCase((1, 8, 8, 8, 8, 8), (8, 8, 3, 3, 3, 3), padding=1, seed=106)
    check_case(NUMPY, case, jax_reference(case), np.float32, "direct", layer=True)
    assert sides == ([] if large else [(1, 1)])
    assert passes["out"] == 2 and passes["w"] == 1


def test_switched_off_runs_blas(passes, monkeypatch):
    """``CONVCORE_COMPILED=0``: the BLAS passes, same results."""
    monkeypatch.setenv("CONVCORE_COMPILED", "0")
    case = CASES[0][0]
    check_case(NUMPY, case, jax_reference(case), np.float32, "direct", layer=True)
    assert passes == {"out": 0, "w": 0, "fold": 0}


def test_one_shape_memo_serves_every_variant_of_a_layer(passes, monkeypatch):
    """The per-shape memo (spaces, cuts, grid tails) is keyed on all they depend on: one layer run
    with the compiled passes off, then on in float64, float32 and float64 again, then with the
    stride read in place, split into phases and in place again, without clearing it in between,
    matches JAX every time (a tail left from another variant reads past a grid: BLAS's is none,
    float64's micro-blocks of a run of 45 read 1 cell past it, float32's 2)."""
    from convcore import costs
    cases = [ConvCase((2, 8, 41), (16, 8, 5), padding=2, seed=112),                  # runs of 45
             ConvCase((2, 8, 6, 7), (16, 8, 5, 5), padding=2, seed=110),            # "same": cut
             ConvCase((2, 8, 13, 12), (16, 8, 3, 3), stride=2, padding=1, seed=111)]
    for case in cases:
        reference = jax_reference(case)
        monkeypatch.setenv("CONVCORE_COMPILED", "0")
        check_case(NUMPY, case, reference, np.float32, "direct", layer=True)
        monkeypatch.setenv("CONVCORE_COMPILED", "1")
        for dtype in (np.float64, np.float32, np.float64):
            check_case(NUMPY, case, reference, dtype, "direct", layer=True)
        for saving in (0.0, float("inf"), 0.0):   # the stride read in place, then phases, then in place
            monkeypatch.setattr(costs, "NATIVE_STRIDE_MIN_SAVING", saving)
            check_case(NUMPY, case, reference, np.float32, "direct", layer=True)
    assert direct_conv._SHAPE_MEMO   # it was used (the fixture empties it after the test)
    assert passes["out"] == 2 * 3 * 6   # every variant but the BLAS one ran both output passes compiled


def test_a_registered_subclass_keeps_its_own_memo(passes):
    """The memo's key holds the engine's class: a registered DirectConv that runs every pass on BLAS
    (no grid tails) and the plain engine, on one layer shape in turns, both match JAX (the plain
    engine once took the subclass's tail of 0 and stopped on its tail check)."""
    class BlasDirect(direct_conv.DirectConv):
        def _compiled(self, rows):
            return False

    case = ConvCase((2, 8, 41), (16, 8, 5), padding=2, seed=113)
    reference = jax_reference(case)
    convcore.register_engine("blas-direct", BlasDirect)
    try:
        for algorithm in ("blas-direct", "direct", "blas-direct", "direct"):
            check_case(NUMPY, case, reference, np.float32, algorithm, layer=True)
    finally:
        convcore.unregister_engine("blas-direct")
    assert passes["out"] == 2 * 2   # the plain engine's two runs, compiled


@pytest.mark.parametrize("length,stride", [(20003, 1000), (100003, 100000)])
def test_huge_strides_stay_within_the_memory_estimate(length, stride):
    """The grid arrays get only the cells the compiled passes read past them (a run padded to whole
    micro-blocks), not a tail proportional to the stride, and the packed filters are one copy:
    forward + backward hold no more than ``estimate_memory`` says (stride 100000 once held 3.7x it)."""
    x, W = np.ones((1, 8, length), np.float32), np.ones((8, 8, 3), np.float32)

    def peak() -> int:
        tracemalloc.start()
        try:
            op = convcore.Convolution(stride=stride, algorithm="direct")
            y = op.forward(x, W)
            op.backward(np.ones_like(y))
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    peak()   # first-call caches (compiled loops) are not the call's
    estimate = convcore.estimate_memory(x.shape, W.shape, np.float32, algorithm="direct", stride=stride)
    assert peak() <= estimate["peak_bytes"]


def test_without_a_jit_runs_blas():
    """``NUMBA_DISABLE_JIT=1`` (coverage runs set it): Numba's decorators return plain functions, so
    the compiled passes are unavailable and the direct engine runs on BLAS, with the same results."""
    script = (
        "import numpy as np, convcore\n"
        "from convcore import direct_kernel\n"
        "assert not direct_kernel.available(np, np.float32)\n"
        "rng = np.random.default_rng(0)\n"
        "x = rng.standard_normal((2, 8, 9, 9)); W = rng.standard_normal((8, 8, 3, 3))\n"
        "op = convcore.Convolution(padding=1, algorithm='direct'); y = op.forward(x, W)\n"
        "import sys; sys.stdout.buffer.write(y.astype('<f8').tobytes())\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=120,
                          env={**os.environ, "NUMBA_DISABLE_JIT": "1"})
    assert done.returncode == 0, done.stderr.decode()
    y = np.frombuffer(done.stdout, "<f8").reshape(2, 8, 9, 9)
    rng = np.random.default_rng(0)
    x, W = rng.standard_normal((2, 8, 9, 9)), rng.standard_normal((8, 8, 3, 3))
    expected = torch.nn.functional.conv2d(torch.from_numpy(x), torch.from_numpy(W), padding=1).numpy()
    np.testing.assert_allclose(y, expected, rtol=1e-10, atol=1e-10)


def test_blocking_rules(monkeypatch):
    """Lanes halve while rows would leave most of them empty; V divides the vectors; P fills the
    registers; micro-blocks pad a run as little as they can."""
    monkeypatch.setattr(direct_kernel, "machine", lambda: (64, 32))
    b = direct_kernel.Blocking(32, 4)
    assert (b.VW, b.V, b.nob, b.padded, b.P) == (16, 2, 1, 32, 14)
    b = direct_kernel.Blocking(8, 4)
    assert (b.VW, b.V, b.padded) == (8, 1, 8)
    b = direct_kernel.Blocking(5, 8)
    assert (b.VW, b.V, b.padded) == (8, 1, 8)
    b = direct_kernel.Blocking(64, 4)             # 4 vectors: two blocks of two (4 x 6 positions ran slower)
    assert (b.VW, b.V, b.nob, b.P) == (16, 2, 2, 14)
    b = direct_kernel.Blocking(80, 4)             # 5 vectors: V = 1, five blocks
    assert (b.VW, b.V, b.nob, b.P) == (16, 1, 5, 28)
    monkeypatch.setattr(direct_kernel, "machine", lambda: (32, 16))
    b = direct_kernel.Blocking(32, 4)
    assert (b.VW, b.V, b.nob, b.P) == (8, 2, 2, 6)
    assert direct_kernel.micro_blocks(32, 14) == 8           # 4 blocks of 8 pad nothing (of 14: 10; of 11: 1)
    assert direct_kernel.micro_blocks(33, 14) == 11          # 3 blocks of 11: none (of 7, the smallest: 2)
    assert direct_kernel.micro_blocks(1090, 6) == 5          # 218 blocks of 5 pad nothing (of 6: 2)
    assert direct_kernel.micro_blocks(64, 28) == 16          # 4 blocks of 16 (of 22: 2 cells)
    assert direct_kernel.micro_blocks(5, 14) == 5
    assert direct_kernel.micro_blocks(28, 14) == 14


@pytest.mark.parametrize("step", [1, 3])
@pytest.mark.parametrize("T, dtype", [(16, np.float32), (8, np.float32), (4, np.float32), (8, np.float64)])
@pytest.mark.parametrize("dims, merged, limits, shifts, P, rows, width", [
    ((3, 5, 40), 2, (3, 4, 37), (0, 1, 2), 14, 16, 16),    # ring on both merged axes, one tile of channels
    ((2, 70), 1, (2, 64), (0, 3), 22, 20, 32),             # 20 channels: a full tile and a part of one
    ((4, 9), 1, (4, 7), (0, 1), 5, 6, 8),                  # pieces shorter than a tile: cell by cell
    ((2, 3, 300), 1, (2, 3, 300), (0, 0, 0), 28, 8, 8),    # long runs, nothing cropped
])
def test_scatter_writes_each_cell_once_however_the_threads_cut_the_runs(T, dtype, dims, merged, limits, shifts, P,
                                                                         rows, width, step):
    """The compiled scatter against a brute-force copy: every position of a run that lands in the
    destination gets out[position, o] + bias[o] in channel o, nothing else is written, for thread
    ranges that cut runs anywhere (a tile never crosses a cut: each cell has one writer); with
    ``step`` 3, the destination's cells 3 apart along its last axis (a stride's phase of x)."""
    if width % T:
        pytest.skip(f"out's width {width} is not a whole number of {T}-lane tiles (the engine pads it to one)")
    rng = np.random.default_rng(T * 1000 + rows)
    strides = tuple(int(np.prod(limits[d + 1:])) * step for d in range(len(dims)))
    run = int(np.prod(dims[len(dims) - merged:]))
    per_run = -(-run // P)
    run_len = per_run * P
    segs = direct_kernel.destinations(dims, merged, strides, limits, shifts, P, per_run, step)
    runs = int(np.prod(dims[:len(dims) - merged]))
    ch_stride, offset = int(np.prod(limits)) * step + 3, 5
    out = rng.standard_normal((runs * run_len, width)).astype(dtype)
    bias = rng.standard_normal(rows).astype(dtype)
    want = np.full(offset + rows * ch_stride, np.nan, dtype)
    for r, outer in enumerate(np.ndindex(*dims[:len(dims) - merged])):
        for i, coords in enumerate(np.ndindex(*dims[len(dims) - merged:])):
            cs = [c - sh for c, sh in zip(outer + coords, shifts)]
            if all(0 <= c < lim for c, lim in zip(cs, limits)):
                at = offset + int(np.dot(cs, strides))
                want[at + np.arange(rows) * ch_stride] = out[r * run_len + i, :rows] + bias
    cuts = np.unique(np.concatenate([[0, runs * run_len], rng.integers(0, runs * run_len, 5)]))
    got = np.full_like(want, np.nan)
    loop = direct_kernel.scatter_loop(T, np.dtype(dtype).itemsize)
    for lo, hi in zip(cuts[:-1], cuts[1:]):
        loop(out, got, *segs, rows, ch_stride, offset, run_len, int(lo), int(hi), bias, step)
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("step", [1, 2])
@pytest.mark.parametrize("dims, merged, limits, shifts, P", [
    ((2, 5, 9), 2, (2, 4, 7), (0, 1, 1), 6),     # a ring on both merged axes, blocks across rows
    ((3, 34), 1, (3, 32), (0, 0), 28),           # the last axis cropped at its end only
    ((2, 3, 10), 2, (2, 3, 10), (0, 0, 0), 7),   # nothing cropped: a run is one segment
    ((4, 6), 1, (4, 3), (0, 2), 4),              # cropped at both ends, blocks past the run's end
])
def test_scatter_segments_cover_exactly_the_cells_in_x(dims, merged, limits, shifts, P, step):
    """Each position of a run that lands inside the destination is in exactly one segment, at the
    cell its coordinates give; the others (ring, padding past the run) in none. Brute force per
    position, not the helper's own arithmetic. With ``step``, segments of cells that far apart."""
    strides = tuple(int(np.prod(limits[d + 1:])) * step for d in range(len(dims)))
    run = dims[len(dims) - merged:]
    per_run = -(-int(np.prod(run)) // P)
    dest_run, seg_j, seg_len, seg_dst = direct_kernel.destinations(dims, merged, strides, limits, shifts, P, per_run,
                                                                   step)
    want = {}
    for i, coords in enumerate(np.ndindex(*run)):
        cs = [c - sh for c, sh in zip(coords, shifts[len(dims) - merged:])]
        if all(0 <= c < lim for c, lim in zip(cs, limits[len(dims) - merged:])):
            want[i] = sum(c * st for c, st in zip(cs, strides[len(dims) - merged:]))
    got = {}
    for s in range(len(seg_j)):
        for j in range(seg_len[s]):
            assert seg_j[s] + j not in got and seg_j[s] + j < per_run * P
            got[seg_j[s] + j] = seg_dst[s] + j * step
    assert got == want
    outer = [int(np.dot(c, strides[:len(dims) - merged])) for c in np.ndindex(*dims[:len(dims) - merged])]
    assert list(dest_run) == outer
