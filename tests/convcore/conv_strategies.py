"""Hypothesis strategy for convolution configurations (ConvCase), and the seed of this run.

Examples are random, not derandomized: each run draws a new seed (or takes
HYPOTHESIS_SEED from the environment) and every property test here uses it via
``@reproducible``; a failure prints ``HYPOTHESIS_SEED=<seed>`` with the
falsifying example, and rerunning with that variable set draws the same examples.
"""
from __future__ import annotations

import os
import random

from conv_oracles import ConvCase
from hypothesis import note, seed
from hypothesis import strategies as st

PADDING_FORMS = ("int", "per-dim", "pairs", "valid", "same", "full")
RUN_SEED = int(os.environ.get("HYPOTHESIS_SEED") or random.SystemRandom().randrange(2**32))


def reproducible(test):
    """Draw ``test``'s examples from RUN_SEED (put it above ``@given``)."""
    return seed(RUN_SEED)(test)


def note_seed() -> None:
    """Print the seed with a falsifying example (call inside the test body)."""
    note(f"reproduce with HYPOTHESIS_SEED={RUN_SEED}")


@st.composite
def conv_cases(draw, padding_modes=("zeros",), max_ndim=5):
    """A valid ConvCase whose input holds at most a few hundred elements per channel.

    Drawn on purpose: a mode other than "zeros" always comes with padding on at
    least one side (else it has no effect), and kernels are 1 in every dim only
    in about one case in eight (hypothesis otherwise favours the smallest sizes).
    """
    N = draw(st.integers(1, max_ndim))
    max_k = {1: 5, 2: 4, 3: 3, 4: 2, 5: 2}[N]
    groups = draw(st.sampled_from([1, 1, 2, 3]))
    c_in, c_out = groups * draw(st.integers(1, 2)), groups * draw(st.integers(1, 2))
    mode = draw(st.sampled_from(padding_modes))
    form = draw(st.sampled_from(PADDING_FORMS if mode == "zeros" else PADDING_FORMS[:3] + PADDING_FORMS[4:]))
    kernel = [draw(st.integers(1, max_k)) for _ in range(N)]
    dilation = tuple(draw(st.integers(1, 2)) for _ in range(N))
    stride = (1,) * N if form == "same" else tuple(draw(st.integers(1, 3)) for _ in range(N))
    pairs = [[draw(st.integers(0, 2)), draw(st.integers(0, 2))] for _ in range(N)]
    # One axis made to matter: a kernel wider than 1 and, for a mode, a non-zero pad there.
    axis = draw(st.integers(0, N - 1))
    if mode != "zeros" or not draw(st.sampled_from([False] * 7 + [True])):
        kernel[axis] = max(kernel[axis], draw(st.integers(2, max_k)))
    if mode != "zeros":
        side = 0 if form in ("int", "per-dim") else draw(st.integers(0, 1))
        pairs[axis][side] = max(pairs[axis][side], draw(st.integers(1, 2)))
        if form == "int":
            pairs[0][0] = pairs[axis][0]
    kernel = tuple(kernel)
    padding = {"int": pairs[0][0], "per-dim": tuple(lo for lo, _ in pairs),
               "pairs": tuple(map(tuple, pairs))}.get(form, form)
    case = ConvCase((1, c_in) + (1,) * N, (c_out, c_in // groups) + kernel, stride=stride,
                    padding=padding, dilation=dilation, groups=groups, padding_mode=mode)
    pads = case.explicit_pads()
    assert mode == "zeros" or any(lo or hi for lo, hi in pads), f"a {mode} case without padding: {case}"
    # Smallest input that the (padded) dilated kernel fits, and that reflect/circular can pad.
    spatial = []
    for (lo, hi), k, dl in zip(pads, kernel, dilation):
        need = max(1, dl * (k - 1) + 1 - lo - hi)
        if mode == "reflect":
            need = max(need, lo + 1, hi + 1)
        elif mode == "circular":
            need = max(need, lo, hi)
        spatial.append(draw(st.integers(need, need + (4 if N <= 3 else 2))))
    return ConvCase((draw(st.integers(1, 2)), c_in) + tuple(spatial), case.W_shape,
                    bias=draw(st.booleans()), stride=case.stride, padding=case.padding,
                    dilation=case.dilation, groups=groups, padding_mode=mode,
                    seed=draw(st.integers(0, 2**16)))
