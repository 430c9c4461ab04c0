"""Hypothesis strategy for convolution configurations (ConvCase) in every padding form."""
from __future__ import annotations

from conv_oracles import ConvCase
from hypothesis import strategies as st

PADDING_FORMS = ("int", "per-dim", "pairs", "valid", "same", "full")


@st.composite
def conv_cases(draw, padding_modes=("zeros",), max_ndim=5):
    """A valid ConvCase whose input holds at most a few hundred elements per channel."""
    N = draw(st.integers(1, max_ndim))
    max_k = {1: 5, 2: 4, 3: 3, 4: 2, 5: 2}[N]
    groups = draw(st.sampled_from([1, 1, 2, 3]))
    c_in, c_out = groups * draw(st.integers(1, 2)), groups * draw(st.integers(1, 2))
    form = draw(st.sampled_from(PADDING_FORMS))
    mode = draw(st.sampled_from(padding_modes))
    kernel = tuple(draw(st.integers(1, max_k)) for _ in range(N))
    dilation = tuple(draw(st.integers(1, 2)) for _ in range(N))
    stride = (1,) * N if form == "same" else tuple(draw(st.integers(1, 3)) for _ in range(N))
    pairs = tuple((draw(st.integers(0, 2)), draw(st.integers(0, 2))) for _ in range(N))
    padding = {"int": pairs[0][0], "per-dim": tuple(lo for lo, _ in pairs), "pairs": pairs}.get(form, form)
    case = ConvCase((1, c_in) + (1,) * N, (c_out, c_in // groups) + kernel, stride=stride,
                    padding=padding, dilation=dilation, groups=groups, padding_mode=mode)
    # Smallest input that the (padded) dilated kernel fits, and that reflect/circular can pad.
    spatial = []
    for (lo, hi), k, dl in zip(case.explicit_pads(), kernel, dilation):
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
