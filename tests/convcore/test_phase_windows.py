"""The polyphase helpers of layout.py against a plain NumPy reference written cell by cell.

``depth_to_space_window(a, s, read, start, size)`` must equal: interleave the phases (cell j of an
axis comes from phase j % s, position j // s), keep cells below ``read``, take the window of
``size`` cells from ``start`` (zeros past ``read``). The reference below builds that with index
arithmetic over every output cell, not with the helpers' strided slices. The convolutions that use
these helpers are checked end to end against JAX and PyTorch elsewhere (test_conv_vs_jax.py,
test_padding_modes.py, test_conv_hypothesis.py); this pins the edge cases of the windows.
"""
from __future__ import annotations

import itertools

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from convcore import layout


def reference_window(a, s, read, start, size):
    B = a.shape[0]
    C = a.shape[1] // int(np.prod(s))
    q = a.shape[2:]
    phases = a.reshape((B, C) + tuple(s) + tuple(q))
    out = np.zeros((B, C) + tuple(size), a.dtype)
    for i in itertools.product(*(range(n) for n in size)):
        j = tuple(ii + lo for ii, lo in zip(i, start))          # cell of the interleaved axis
        if any(jj >= L for jj, L in zip(j, read)):
            continue                                            # past read: zero
        r = tuple(jj % ss for jj, ss in zip(j, s))
        m = tuple(jj // ss for jj, ss in zip(j, s))
        out[(slice(None), slice(None)) + i] = phases[(slice(None), slice(None)) + r + m]
    return out


@st.composite
def windows(draw):
    N = draw(st.integers(1, 3))
    s = tuple(draw(st.integers(1, 3)) for _ in range(N))
    q = tuple(draw(st.integers(1, 4)) for _ in range(N))
    read = tuple(draw(st.integers(1, qq * ss)) for qq, ss in zip(q, s))
    start = tuple(draw(st.integers(0, rr + 1)) for rr in read)       # may start past read
    size = tuple(draw(st.integers(1, 2 * qq * ss)) for qq, ss in zip(q, s))
    return s, q, read, start, size


@settings(max_examples=200, deadline=None)
@given(windows(), st.integers(0, 2**31 - 1))
def test_depth_to_space_window_matches_the_cell_by_cell_reference(case, seed):
    s, q, read, start, size = case
    a = np.random.default_rng(seed).standard_normal((2, 3 * int(np.prod(s))) + q)
    got = layout.depth_to_space_window(np, a, s, read, start, size)
    np.testing.assert_array_equal(got, reference_window(a, s, read, start, size))


@settings(max_examples=200, deadline=None)
@given(windows())
def test_phase_windows_cover_each_kept_cell_once(case):
    """Every cell j of the window with j < read is named by exactly one phase, at its own place."""
    s, _q, read, start, size = case
    seen = np.zeros(size, int)
    for r, cells, places in layout.phase_windows(s, read, start, size):
        seen[places] += 1
        for axis, (cell, place) in enumerate(zip(cells, places)):
            ms = range(cell.start, cell.stop)
            js = range(place.start + start[axis], place.stop + start[axis], place.step)
            assert [m * s[axis] + r[axis] for m in ms] == list(js)
    kept = np.ones(size, bool)
    for axis, (n, lo, L) in enumerate(zip(size, start, read)):
        shape = [1] * len(size)
        shape[axis] = n
        kept &= (np.arange(n) + lo < L).reshape(shape)
    np.testing.assert_array_equal(seen, kept.astype(int))
