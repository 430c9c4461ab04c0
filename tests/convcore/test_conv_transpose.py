"""conv_transpose_forward / conv_transpose_backward against PyTorch's conv_transposeNd (N <= 3) and
JAX (N = 4, 5), for the result and all three gradients, both algorithms, both dtypes.

The JAX reference writes the transposed convolution independently of convcore's construction
(the input gradient of a convolution): a stride-1 convolution of the input dilated by the stride
(``lhs_dilation``) with the flipped, regrouped kernel and padding dilation * (k - 1) - padding
(+ output_padding at the high end); its gradients come from jax.vjp.
"""
from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conv_oracles import assert_close

import convcore

# (x shape, W shape, options)
CASES = [
    ((2, 3, 7), (3, 2, 3), dict(stride=2, padding=1, output_padding=1)),
    ((1, 4, 6), (4, 1, 4), dict(groups=2, dilation=2, padding=2)),
    ((2, 1, 5), (1, 2, 3), dict(stride=1, dilation=3, output_padding=2)),      # output_padding >= stride
    ((2, 2, 4, 5), (2, 3, 3, 2), dict(stride=(2, 1), padding=(1, 0), output_padding=(1, 0))),
    ((1, 4, 3, 4), (4, 1, 2, 3), dict(stride=3, groups=4, dilation=(2, 1), output_padding=(2, 1))),
    ((1, 2, 3, 4, 3), (2, 2, 2, 3, 2), dict(stride=2, padding=(0, 1, 1), output_padding=(1, 0, 1))),
    ((2, 2, 3, 3, 2, 3), (2, 2, 3, 2, 2, 2), dict(stride=(2, 1, 2, 1), padding=1, output_padding=(1, 0, 0, 0))),
    ((1, 4, 2, 3, 2, 2), (4, 1, 2, 2, 3, 2), dict(groups=2, stride=2, dilation=(1, 2, 1, 1), padding=(0, 1, 0, 1))),
    ((1, 2, 2, 2, 3, 2, 2), (2, 1, 2, 2, 2, 2, 2), dict(stride=(2, 1, 1, 2, 1), output_padding=(1, 0, 0, 0, 0))),
    # kernel == stride tiles the output: one GEMM per group ("direct"), the adjoint convolution ("fft")
    ((2, 3, 4, 5), (3, 2, 2, 2), dict(stride=2)),
    ((2, 4, 2, 3, 2), (4, 3, 2, 3, 1), dict(stride=(2, 3, 1), groups=2)),
    ((1, 2, 2, 1, 2, 3), (2, 3, 2, 2, 2, 2), dict(stride=2)),
    ((4, 4, 3, 2, 2), (4, 3, 2, 2, 2), dict(stride=2, groups=2)),   # batch 4: the split over the batch (below)
]
TORCH = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}


def _inputs(index):
    x_shape, W_shape, kw = CASES[index]
    rng = np.random.default_rng(index)
    draw = lambda shape: rng.standard_normal(shape).astype(np.float32).astype(np.float64)  # noqa: E731
    return draw(x_shape), draw(W_shape), draw((W_shape[1] * kw.get("groups", 1),)), rng, draw


@functools.lru_cache(maxsize=None)
def reference(index):
    """(x, W, b, gy, y, gx, gW, gb) in float64 from PyTorch (N <= 3) or JAX (N > 3)."""
    x, W, b, rng, draw = _inputs(index)
    kw = CASES[index][2]
    N = x.ndim - 2
    if N <= 3:
        xt, Wt, bt = (torch.tensor(a, requires_grad=True) for a in (x, W, b))
        yt = TORCH[N](xt, Wt, bt, **kw)
        gy = draw(tuple(yt.shape))
        yt.backward(torch.tensor(gy))
        return x, W, b, gy, yt.detach().numpy(), xt.grad.numpy(), Wt.grad.numpy(), bt.grad.numpy()
    return _jax_reference(x, W, b, draw, kw)


def _jax_reference(x, W, b, draw, kw):
    from conv_oracles import jax  # configured for float64 on the CPU

    N, g = x.ndim - 2, kw.get("groups", 1)
    per = lambda v: (v,) * N if isinstance(v, int) else tuple(v)  # noqa: E731
    stride, dilation = per(kw.get("stride", 1)), per(kw.get("dilation", 1))
    padding, out_pad = per(kw.get("padding", 0)), per(kw.get("output_padding", 0))
    k = W.shape[2:]
    pads = [(dl * (kk - 1) - p, dl * (kk - 1) - p + op) for dl, kk, p, op in zip(dilation, k, padding, out_pad)]

    def f(xx, WW, bb):
        c_in, c_out_g = WW.shape[:2]
        # (c_I, c_O/g, k...) -> (g, c_I/g, c_O/g, k...) -> (c_O, c_I/g, k...), flipped in space
        Wc = WW.reshape((g, c_in // g, c_out_g) + k).swapaxes(1, 2).reshape((g * c_out_g, c_in // g) + k)
        Wc = Wc[(slice(None), slice(None)) + (slice(None, None, -1),) * N]
        y = jax.lax.conv_general_dilated(xx, Wc, (1,) * N, pads, lhs_dilation=stride, rhs_dilation=dilation,
                                         feature_group_count=g, precision=jax.lax.Precision.HIGHEST)
        return y + bb.reshape((1, -1) + (1,) * N)

    y = np.asarray(f(x, W, b))
    gy = draw(y.shape)
    _, vjp = jax.vjp(f, x, W, b)
    return (x, W, b, gy, y) + tuple(np.asarray(a) for a in vjp(gy))


@pytest.mark.parametrize("algorithm", ["direct", "fft"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("index", range(len(CASES)), ids=[f"N{len(c[0]) - 2}-{i}" for i, c in enumerate(CASES)])
def test_matches_reference(backend, index, dtype, algorithm):
    x, W, b, gy, y_ref, gx_ref, gW_ref, gb_ref = reference(index)
    kw = CASES[index][2]
    x, W, b, gy = (backend.asarray(a.astype(dtype)) for a in (x, W, b, gy))
    y = convcore.conv_transpose_forward(x, W, b, algorithm=algorithm, **kw)
    gx, gW, gb = convcore.conv_transpose_backward(gy, x, W, algorithm=algorithm, **kw)
    assert isinstance(y, backend.xp.ndarray)
    for name, got, want in (("y", y, y_ref), ("gx", gx, gx_ref), ("gW", gW, gW_ref), ("gb", gb, gb_ref)):
        assert_close(name, backend.to_numpy(got), want, dtype, f"[case {index}, {algorithm}]")


TILED = [i for i, (x_shape, W_shape, kw) in enumerate(CASES) if set(kw) <= {"stride", "groups"}
         and all(k == s for k, s in zip(W_shape[2:], np.broadcast_to(kw["stride"], len(W_shape) - 2)))]


@pytest.mark.parametrize("index", TILED)
def test_tiled_products_split_over_threads_match_reference(index, monkeypatch):
    """The tiled transpose's GEMMs split across two threads, as large layers are (its filters are
    broadcast over the batch: once that split sliced them along their group axis and failed)."""
    monkeypatch.setenv("CONVCORE_NUM_THREADS", "2")
    monkeypatch.setattr(convcore.backend, "SPLIT_WORK", 1)
    x, W, b, gy, y_ref, gx_ref, gW_ref, gb_ref = reference(index)
    kw = CASES[index][2]
    y = convcore.conv_transpose_forward(x, W, b, algorithm="direct", **kw)
    gx, gW, gb = convcore.conv_transpose_backward(gy, x, W, algorithm="direct", **kw)
    for name, got, want in (("y", y, y_ref), ("gx", gx, gx_ref), ("gW", gW, gW_ref), ("gb", gb, gb_ref)):
        assert_close(name, got, want, np.float64, f"[case {index}, split]")


def test_tiled_cases_include_a_batch_split():
    assert len(TILED) >= 4 and any(CASES[i][0][0] >= 4 for i in TILED)


@pytest.mark.parametrize("index", [0, 4, 6])
def test_op_backward_reuses_forward_arrays(index):
    x, W, b, gy, y_ref, gx_ref, gW_ref, gb_ref = reference(index)
    op = convcore.ConvTranspose(**CASES[index][2])
    assert_close("y", op.forward(x, W, b), y_ref, np.float64)
    gx, gW, gb = op.backward(gy)
    assert_close("gx", gx, gx_ref, np.float64)
    assert_close("gW", gW, gW_ref, np.float64)
    only_W = op.backward(gy, need=("W",))
    assert only_W.gx is None and only_W.gb is None
    assert_close("gW", only_W.gW, gW_ref, np.float64)


@pytest.mark.parametrize("kwargs, pattern", [
    (dict(x=(2, 3, 5), W=(4, 2, 3)), r"W must have shape \(c_in, c_out // groups, k...\) with c_in = 3"),
    (dict(x=(2, 4, 5), W=(4, 2, 3), groups=3), r"groups=3 must divide c_in=4"),
    (dict(x=(2, 4, 5), W=(4, 2, 3, 3)), r"W must have shape .* to match x's 1 spatial dims"),
    (dict(x=(2, 4, 5), W=(4, 2, 3), stride=2, output_padding=2),
     r"output_padding must be smaller than stride or dilation .* output_padding=\(2,\), stride=\(2,\)"),
    (dict(x=(2, 4, 5), W=(4, 2, 3), padding=-1), r"padding must be >= 0 in every dim, got padding=\(-1,\)"),
    (dict(x=(2, 4, 2), W=(4, 2, 2), padding=2), r"the output would be empty: size \(-1,\)"),
    (dict(x=(2, 4, 5, 5), W=(4, 2, 3, 3), stride=[1, 2, 3]), r"stride needs one value per spatial dim \(2\)"),
    (dict(x=(4, 5), W=(4, 2, 3)), r"x must have shape \(n, c_in, d_1, ..., d_N\)"),
])
def test_errors_name_the_argument(kwargs, pattern):
    x, W = np.zeros(kwargs.pop("x")), np.zeros(kwargs.pop("W"))
    with pytest.raises(ValueError, match=pattern):
        convcore.conv_transpose_forward(x, W, **kwargs)


def test_dtype_and_shape_errors():
    x, W = np.zeros((1, 2, 4)), np.zeros((2, 3, 3))
    with pytest.raises(TypeError, match="W must have x's dtype float64, got float32"):
        convcore.conv_transpose_forward(x, W.astype(np.float32))
    with pytest.raises(ValueError, match=r"b must have shape \(c_out,\) = \(3,\), got \(2,\)"):
        convcore.conv_transpose_forward(x, W, np.zeros(2))
    with pytest.raises(ValueError, match=r"gy must have the output's shape \(1, 3, 6\), got \(1, 3, 5\)"):
        convcore.conv_transpose_backward(np.zeros((1, 3, 5)), x, W)
