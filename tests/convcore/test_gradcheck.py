"""convcore.gradcheck: it passes conv_backward, and it names the classic wrong backward passes.

The wrong gradients are produced the way real hand-written layers produce them:
a per-channel-pair ``scipy.signal.fftconvolve`` layer (forward = a true
convolution with K, so convcore's W is K flipped in every spatial axis) with one
bug at a time, and the layer of the question that started the project, ported
from CuPy to NumPy for its single-channel case.
"""
from __future__ import annotations

import importlib
import json

import numpy as np
import pytest
from conv_oracles import ConvCase, torch_reference
from numpy.lib.stride_tricks import sliding_window_view
from scipy.signal import fftconvolve

from convcore.gradcheck import _fd_b, _fd_W, _fd_x, gradcheck

gradcheck_module = importlib.import_module("convcore.gradcheck")   # the name is shadowed by the function


def flip(a):
    """Reverse every axis (the question's FlipAllAxes)."""
    return a[(slice(None, None, -1),) * a.ndim]


def flip_spatial(a):
    return a[(slice(None), slice(None)) + (slice(None, None, -1),) * (a.ndim - 2)]


# ---- a per-pair fftconvolve layer, correct unless told otherwise ------------------
def layer_forward(x, K, mode):
    """y[s, o] = sum_c fftconvolve(x[s, c], K[o, c], mode): a true convolution with K."""
    return np.array([[sum(fftconvolve(x[s, c], K[o, c], mode) for c in range(x.shape[1]))
                      for o in range(K.shape[0])] for s in range(x.shape[0])])


def layer_input_grad(gy, K, x_shape, mode, *, kernel=flip, accumulate=True, mean=False, lr=1.0):
    """gx[s, c] = sum_o fftconvolve(gy[s, o], flip(K[o, c]), mode): 'full' after a 'valid' forward."""
    gx = np.zeros(x_shape)
    for s in range(x_shape[0]):
        for o in range(K.shape[0]):
            for c in range(x_shape[1]):
                term = fftconvolve(gy[s, o], kernel(K[o, c]), mode)
                if accumulate:
                    gx[s, c] += term
                else:            # the bug: '=' where '+=' belongs
                    gx[s, c] = term
    return (gx / K.shape[0] if mean else gx) * lr


def layer_weight_grad(x, gy, *, flip_gy=True, accumulate=True, mean=False, mode="valid"):
    """gW[o, c] = sum_s fftconvolve(x[s, c], flip(gy[s, o]), 'valid'): a valid correlation."""
    gW = None
    for s in range(x.shape[0]):
        g = flip_spatial(gy[s:s + 1])[0] if flip_gy else gy[s]
        term = np.array([[fftconvolve(x[s, c], g[o], mode) for c in range(x.shape[1])]
                         for o in range(gy.shape[1])])
        gW = term if gW is None or not accumulate else gW + term
    return gW / x.shape[0] if mean else gW


@pytest.fixture
def valid_layer():
    """A 2-D layer (n=3, c_in=2, c_out=3, 3x3 kernels, 'valid') and its correct gradients."""
    rng = np.random.default_rng(7)
    x, K = rng.standard_normal((3, 2, 7, 6)), rng.standard_normal((3, 2, 3, 3))
    gy = rng.standard_normal(layer_forward(x, K, "valid").shape)
    return x, K, gy


def check(x, K, gy, padding="valid", **user):
    """gradcheck with convcore's W = flip(K); conv_backward itself must pass."""
    report = gradcheck(x, flip_spatial(K).copy(), None, gy, padding=padding, **user)
    assert all(c.passed for c in report.finite_differences.values()), str(report)
    json.dumps(report.to_dict())
    return report


# ---- conv_backward against finite differences --------------------------------------
CONFIGS = [
    dict(x=(2, 3, 9), W=(4, 3, 3), padding=1),
    dict(x=(1, 2, 11), W=(2, 2, 4), stride=2, dilation=2, padding=[(2, 1)]),
    dict(x=(2, 4, 8), W=(4, 1, 3), groups=4, padding="full", padding_mode="zeros"),
    dict(x=(2, 2, 6, 5), W=(3, 2, 3, 2), padding="same", padding_mode="reflect"),
    dict(x=(1, 4, 7, 6), W=(4, 2, 3, 2), groups=2, stride=(2, 1), dilation=(1, 2), padding=[(1, 0), (2, 1)]),
    dict(x=(2, 2, 5, 6), W=(2, 2, 2, 3), padding=(1, 2), padding_mode="circular"),
    dict(x=(1, 2, 5, 4, 5), W=(2, 2, 2, 3, 2), stride=2, padding="valid"),
    dict(x=(1, 2, 4, 5, 4), W=(2, 1, 3, 2, 2), groups=2, padding=1, padding_mode="replicate"),
    dict(x=(1, 1, 4, 3, 4, 3), W=(2, 1, 2, 2, 2, 2), padding="same"),
]


@pytest.mark.parametrize("algorithm", ["fft", "direct"])
@pytest.mark.parametrize("cfg", CONFIGS, ids=[f"N{len(c['x']) - 2}-{i}" for i, c in enumerate(CONFIGS)])
def test_conv_backward_passes(cfg, algorithm):
    cfg = dict(cfg)
    rng = np.random.default_rng(len(cfg))
    x, W = rng.standard_normal(cfg.pop("x")), rng.standard_normal(cfg.pop("W"))
    report = gradcheck(x, W, rng.standard_normal(W.shape[0]), algorithm=algorithm, **cfg)
    assert report.passed, str(report)
    assert set(report.finite_differences) == {"gx", "gW", "gb"}
    for check_ in report.finite_differences.values():
        assert check_.checked == check_.total and not check_.sampled
        assert check_.max_rel_error < 1e-7


def test_finite_differences_match_torch():
    """The finite-difference machinery itself against PyTorch autograd (no conv_backward involved)."""
    case = ConvCase((2, 4, 7, 6), (4, 2, 3, 2), stride=(2, 1), dilation=(1, 2), groups=2,
                    padding=[(1, 0), (2, 1)], seed=3)
    ref = torch_reference(case)
    params = dict(case.params, algorithm="direct")
    for fd, want, pick in ((_fd_x, ref.gx, np.arange(0, ref.gx.size, 7)),
                           (_fd_W, ref.gW, np.arange(ref.gW.size)),
                           (_fd_b, ref.gb, np.arange(ref.gb.size))):
        got = fd(ref.x, ref.W, ref.b, ref.gy, params, pick, 1e-6)
        np.testing.assert_allclose(got, want.reshape(-1)[pick], rtol=0, atol=1e-7 * np.abs(want).max())


def test_diagnosis_in_a_strided_grouped_dilated_layer():
    """Wrong gradients derived from PyTorch's on a geometry no fftconvolve loop handles."""
    case = ConvCase((3, 4, 9, 8), (4, 2, 3, 2), stride=(2, 1), dilation=(1, 2), groups=2,
                    padding=[(1, 0), (2, 1)], seed=4)
    ref = torch_reference(case)
    report = gradcheck(ref.x, ref.W, ref.b, ref.gy, **case.params, gx=-0.3 * ref.gx,
                       gW=ref.gW / 3, gb=ref.gb)
    assert report.wrong == ["gx", "gW"], str(report)
    assert report.user["gx"].cause_codes == ["sign_flipped", "scaled"]
    assert report.user["gW"].cause_codes == ["mean_over_batch"]


GROUPED = ConvCase((2, 6, 7, 6), (6, 2, 3, 3), groups=3, padding=[(1, 0), (2, 1)], seed=8)


@pytest.mark.parametrize("groups", [1, 3])
def test_mean_over_channels_counts_the_channels_of_one_group(groups):
    """Each input channel feeds c_O / groups outputs: the mean divides by that, not by c_O."""
    case = ConvCase(GROUPED.x_shape, (6, 6 // groups, 3, 3), groups=groups, padding=GROUPED.padding, seed=8)
    ref = torch_reference(case)
    per_group = 6 // groups
    report = gradcheck(ref.x, ref.W, ref.b, ref.gy, **case.params, gx=ref.gx / per_group)
    cause = report.user["gx"].causes[0]
    assert report.user["gx"].cause_codes == ["mean_over_channels"], str(report)
    assert cause.details["factor"] == pytest.approx(1 / per_group) and f"({per_group})" in cause.message


def test_missing_channel_sum_in_each_group():
    """gx from only the last output channel of each group (a '=' where '+=' belongs, per group)."""
    import torch
    import torch.nn.functional as F

    ref = torch_reference(GROUPED)
    kept = np.zeros_like(ref.gy)
    last = [1, 3, 5]                                     # channel 1 of each of the 3 groups of 2
    kept[:, last] = ref.gy[:, last]
    xt = torch.tensor(ref.x, requires_grad=True)
    flat = [v for pair in reversed(GROUPED.explicit_pads()) for v in pair]
    F.conv2d(F.pad(xt, flat), torch.tensor(ref.W), groups=3).backward(torch.tensor(kept))
    report = gradcheck(ref.x, ref.W, ref.b, ref.gy, **GROUPED.params, gx=xt.grad.numpy())
    assert report.user["gx"].cause_codes == ["missing_channel_sum"], str(report)
    cause = report.user["gx"].causes[0]
    assert cause.details["channel"] == 1 and "of each group" in cause.message


def test_large_arrays_are_sampled_and_reported():
    rng = np.random.default_rng(0)
    x, W = rng.standard_normal((2, 3, 20, 20)), rng.standard_normal((4, 3, 5, 5))
    report = gradcheck(x, W, padding=2, max_checks=25)
    assert report.passed
    gx = report.finite_differences["gx"]
    assert (gx.checked, gx.total, gx.sampled) == (25, x.size, True)
    assert "gb" not in report.finite_differences   # no bias, no gb given
    assert json.loads(json.dumps(report.to_dict()))["finite_differences"]["gx"]["checked"] == 25


# ---- gradcheck's verdict on a wrong conv_backward ------------------------------------
def break_conv_backward(monkeypatch, corrupt):
    """gradcheck sees the real conv_backward's result passed through corrupt(grads, gy).

    This is the mutation under test (a wrong backward), not a stand-in for the
    finite differences: those still run the real conv_forward.
    """
    real = gradcheck_module.conv_backward

    def wrong(gy, *args, **kwargs):
        return corrupt(real(gy, *args, **kwargs), gy)

    monkeypatch.setattr(gradcheck_module, "conv_backward", wrong)


@pytest.fixture
def grouped_layer():
    """x (3, 4, 7, 6), W (4, 2, 3, 3) with groups=2 and a bias: every gradient is checked."""
    rng = np.random.default_rng(11)
    return (rng.standard_normal((3, 4, 7, 6)), rng.standard_normal((4, 2, 3, 3)), rng.standard_normal(4),
            dict(groups=2, padding=[(1, 0), (2, 1)], algorithm="direct"))


@pytest.mark.parametrize("wrong, corrupt", [
    ("gx", lambda g, gy: g._replace(gx=g.gx * 1.001)),                                 # a stray factor
    ("gW", lambda g, gy: g._replace(gW=g.gW.swapaxes(-1, -2))),                        # kernel.T
    ("gW", lambda g, gy: g._replace(gW=flip_spatial(g.gW))),                           # not flipped
    ("gb", lambda g, gy: g._replace(gb=gy[0].sum(axis=(1, 2)))),                       # first sample only
], ids=["gx-scaled", "gW-transposed", "gW-flipped", "gb-missing-batch-sum"])
def test_wrong_conv_backward_fails_the_finite_difference_check(monkeypatch, grouped_layer, wrong, corrupt):
    x, W, b, params = grouped_layer
    assert gradcheck(x, W, b, **params).passed     # the real backward passes on this layer
    break_conv_backward(monkeypatch, corrupt)
    report = gradcheck(x, W, b, **params)
    failed = [name for name, c in report.finite_differences.items() if not c.passed]
    assert not report.passed and failed == [wrong], str(report)
    assert report.finite_differences[wrong].max_rel_error > 1e-4
    assert f"conv_backward {wrong}:" in str(report) and "WRONG" in str(report)
    assert json.loads(json.dumps(report.to_dict()))["passed"] is False


def test_finite_difference_verdict_follows_rtol_and_atol(monkeypatch, grouped_layer):
    """gx off by 1e-6 relative: inside rtol=1e-5, outside rtol=1e-7, inside again with a large atol."""
    x, W, b, params = grouped_layer
    break_conv_backward(monkeypatch, lambda g, gy: g._replace(gx=g.gx * (1 + 1e-6)))
    loose = gradcheck(x, W, b, **params, rtol=1e-5, atol=0.0)
    assert loose.passed, str(loose)
    tight = gradcheck(x, W, b, **params, rtol=1e-7, atol=0.0)
    assert not tight.passed and not tight.finite_differences["gx"].passed, str(tight)
    assert tight.finite_differences["gW"].passed and tight.finite_differences["gb"].passed
    gx_scale = tight.finite_differences["gx"].max_abs_error / tight.finite_differences["gx"].max_rel_error
    assert gradcheck(x, W, b, **params, rtol=0.0, atol=1e-5 * gx_scale).passed
    assert not gradcheck(x, W, b, **params, rtol=0.0, atol=1e-7 * gx_scale).passed


def test_finite_difference_step_is_eps(grouped_layer):
    """L is linear, so the step only matters through rounding: eps=1e-12 loses ~4 more digits."""
    x, W, b, params = grouped_layer
    fine = gradcheck(x, W, b, **params).finite_differences["gx"]
    tiny = gradcheck(x, W, b, **params, eps=1e-12, rtol=1.0).finite_differences["gx"]
    assert fine.max_rel_error < 1e-8 and tiny.max_rel_error > 1e-6, (fine, tiny)


# ---- the user's gradients -------------------------------------------------------------
def test_correct_fftconvolve_layer_passes(valid_layer):
    x, K, gy = valid_layer
    report = check(x, K, gy, gx=layer_input_grad(gy, K, x.shape, "full"), gW=layer_weight_grad(x, gy),
                   gb=gy.sum(axis=(0, 2, 3)))
    assert report.passed and report.wrong == [], str(report)


@pytest.mark.parametrize("ndim, code", [(1, "kernel_not_flipped"), (2, "kernel_transposed"),
                                        (3, "kernel_transposed")])
def test_question_layer_input_gradient(ndim, code):
    """The question's Backprop: d_A += fftconvolve(d_L_d_out_f, kernel.T, 'same'); d_A * learn_rate."""
    rng = np.random.default_rng(ndim)
    x1 = rng.standard_normal((7,) * ndim)                      # one image, one channel
    filters = rng.standard_normal((2,) + (3,) * ndim)          # channels=2, kernel_size=3
    gy = rng.standard_normal((2,) + x1.shape)                  # forward: fftconvolve(x, kernel, 'same')
    learn_rate = 0.05
    d_A = np.zeros_like(x1)
    for kernel, d_L_d_out_f in zip(filters, gy):
        d_A += fftconvolve(d_L_d_out_f, kernel.T, "same")
    output = d_A * learn_rate
    report = check(x1[None, None], filters[:, None], gy[None], padding="same", gx=output[None, None])
    gx = report.user["gx"]
    assert report.wrong == ["gx"] and gx.cause_codes == [code, "scaled"], str(report)
    assert gx.causes[1].details["factor"] == pytest.approx(learn_rate, rel=1e-9)


def test_question_layer_weight_gradient_is_flagged():
    """The question's d_W (a sum of windows of fftconvolve(gy, x, 'same')) is no known mistake."""
    rng = np.random.default_rng(5)
    x1, filters = rng.standard_normal((6, 6)), rng.standard_normal((2, 3, 3))
    gy = rng.standard_normal((2, 6, 6))
    d_W = np.zeros_like(filters)
    for i, d_L_d_out_f in enumerate(gy):
        conv = fftconvolve(d_L_d_out_f, x1, "same")
        d_W[i] = sliding_window_view(conv, filters[i].shape).reshape((-1,) + filters[i].shape).sum(axis=0)
    report = check(x1[None, None], filters[:, None], gy[None], padding="same",
                   gW=flip_spatial(d_W[:, None]).copy())
    assert report.wrong == ["gW"] and report.user["gW"].cause_codes == ["unknown"], str(report)


def test_even_kernel_same_mode_is_shifted():
    """fftconvolve's 'same' is its own adjoint only for odd kernels: with k=4 the gradient is off by one."""
    rng = np.random.default_rng(2)
    x, K = rng.standard_normal((2, 2, 9, 8)), rng.standard_normal((2, 2, 4, 4))
    gy = layer_forward(x, K, "same")
    gy = rng.standard_normal(gy.shape)
    pads = [(2, 1), (2, 1)]                # scipy's 'same' with k=4: two cells before, one after
    report = check(x, K, gy, padding=pads, gx=layer_input_grad(gy, K, x.shape, "same"))
    causes = report.user["gx"].causes
    assert [c.code for c in causes] == ["shifted"], str(report)
    assert causes[0].details["shift"] == [-1, -1]
    # the same with kernel.T: two causes found together, plus the learning rate
    gx = layer_input_grad(gy, K, x.shape, "same", kernel=lambda k: k.T, lr=0.1)
    report = check(x, K, gy, padding=pads, gx=gx)
    assert report.user["gx"].cause_codes == ["kernel_transposed", "shifted", "scaled"], str(report)


@pytest.mark.parametrize("bug, codes", [
    (dict(kernel=lambda k: k), ["kernel_not_flipped"]),
    (dict(kernel=lambda k: flip(k).T), ["kernel_flipped_and_transposed"]),
    (dict(lr=-1.0), ["sign_flipped"]),
    (dict(lr=0.003), ["scaled"]),
    (dict(accumulate=False), ["missing_channel_sum"]),
    (dict(mean=True), ["mean_over_channels"]),
    (dict(kernel=lambda k: k, accumulate=False), ["kernel_not_flipped", "missing_channel_sum"]),
])
def test_wrong_input_gradients(valid_layer, bug, codes):
    x, K, gy = valid_layer
    report = check(x, K, gy, gx=layer_input_grad(gy, K, x.shape, "full", **bug))
    assert report.wrong == ["gx"] and report.user["gx"].cause_codes == codes, str(report)
    assert report.user["gx"].max_rel_error > 1e-3
    if not bug.get("accumulate", True):
        assert report.user["gx"].causes[-1].details["channel"] == K.shape[0] - 1   # the last one stays


@pytest.mark.parametrize("bug, codes", [
    (dict(accumulate=False), ["missing_batch_sum"]),
    (dict(mean=True), ["mean_over_batch"]),
    (dict(flip_gy=False), ["gy_not_flipped"]),
    (dict(mode="same"), ["wrong_shape"]),
])
def test_wrong_weight_gradients(valid_layer, bug, codes):
    x, K, gy = valid_layer
    report = check(x, K, gy, gW=layer_weight_grad(x, gy, **bug))
    assert report.wrong == ["gW"] and report.user["gW"].cause_codes == codes, str(report)


def test_convolution_convention_weight_gradient(valid_layer):
    """Passing gK (the gradient of the true-convolution kernel) instead of gW = flip(gK)."""
    x, K, gy = valid_layer
    gK = flip_spatial(layer_weight_grad(x, gy))
    report = check(x, K, gy, gW=gK)
    assert report.user["gW"].cause_codes == ["gradient_flipped"], str(report)


@pytest.mark.parametrize("gb, codes", [
    (lambda gy: gy.sum(axis=(2, 3)).mean(axis=0), ["mean_over_batch"]),
    (lambda gy: gy.mean(axis=(0, 2, 3)), ["mean_over_batch_and_positions"]),
    (lambda gy: -gy[-1].sum(axis=(1, 2)), ["missing_batch_sum", "sign_flipped"]),
    (lambda gy: gy.sum(axis=0), ["wrong_shape"]),
])
def test_wrong_bias_gradients(valid_layer, gb, codes):
    x, K, gy = valid_layer
    report = check(x, K, gy, gb=gb(gy))
    assert report.wrong == ["gb"] and report.user["gb"].cause_codes == codes, str(report)


def test_same_mode_after_valid_forward_is_a_shape_error(valid_layer):
    x, K, gy = valid_layer
    report = check(x, K, gy, gx=layer_input_grad(gy, K, gy.shape[:1] + x.shape[1:2] + gy.shape[2:], "same"))
    cause = report.user["gx"].causes[0]
    assert cause.code == "wrong_shape" and "output's spatial shape" in cause.message
    assert report.user["gx"].max_abs_error is None and not report.passed


# ---- bad arguments ------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, error, words", [
    (dict(x=[[[1.0, 2.0]]]), TypeError, "x must be a numpy"),
    (dict(W=np.ones((1, 1, 2), dtype=int)), TypeError, "W must hold real floating"),
    (dict(b=np.ones(3)), ValueError, "b must have shape"),
    (dict(gy=np.ones((1, 1, 4))), ValueError, "gy must have the output's shape"),
    (dict(gx="grad"), TypeError, "gx must be a numpy"),
    (dict(eps=0.0), ValueError, "eps must be > 0"),
    (dict(rtol=-1e-3), ValueError, "rtol must be >= 0"),
    (dict(max_checks=0), ValueError, "max_checks must be >= 1"),
    (dict(seed=1.5), TypeError, "seed must be an int"),
    (dict(seed=-1), ValueError, "seed must be >= 0, got -1"),
    (dict(W=np.ones((1, 2, 2))), ValueError, "channels do not match"),
    (dict(algorithm="magic"), ValueError, "algorithm must be one of"),
])
def test_bad_arguments_name_the_argument(kwargs, error, words):
    args = dict(x=np.ones((1, 1, 6)), W=np.ones((1, 1, 2)))
    args.update(kwargs)
    with pytest.raises(error, match=words):
        gradcheck(**args)


def test_float32_rounding_is_a_precision_issue(valid_layer):
    x, K, gy = valid_layer
    gx = layer_input_grad(gy, K, x.shape, "full").astype(np.float32)
    report = gradcheck(x, flip_spatial(K).copy(), None, gy, gx=gx, rtol=1e-9, atol=0.0)
    assert report.user["gx"].cause_codes == ["precision"], str(report)
    assert gradcheck(x, flip_spatial(K).copy(), None, gy, gx=gx, rtol=1e-4).passed


@pytest.mark.gpu
def test_cupy_arrays_are_checked_on_the_host(gpu_backend, valid_layer):
    x, K, gy = valid_layer
    gx = layer_input_grad(gy, K, x.shape, "full", lr=0.5)
    on_gpu = [gpu_backend.asarray(a) for a in (x, flip_spatial(K).copy(), gy, gx)]
    report = gradcheck(*on_gpu[:2], None, on_gpu[2], gx=on_gpu[3], algorithm="fft")
    assert report.user["gx"].cause_codes == ["scaled"], str(report)


@pytest.mark.parametrize("scale", [1e-6, 1.0, 1e8])
def test_finite_differences_hold_at_any_scale(valid_layer, scale):
    """The step is eps * max(1, |entry|): with x and W near 1e8 an absolute step of 1e-6 moved
    outputs near 1e16 by 1e2, and their rounding made the exact gradients read 1.5e-2 wrong. A user's
    gradient 1 % off is still caught at every scale (PyTorch's autograd gives the reference)."""
    torch = pytest.importorskip("torch")
    x, K, gy = valid_layer
    x, W = scale * x, scale * flip_spatial(K).copy()
    report = gradcheck(x, W, None, gy)
    assert all(c.passed for c in report.finite_differences.values()), str(report)
    tx, tW = torch.from_numpy(x).requires_grad_(), torch.from_numpy(W).requires_grad_()
    torch.nn.functional.conv2d(tx, tW).backward(torch.from_numpy(gy))
    good = gradcheck(x, W, None, gy, gx=tx.grad.numpy(), gW=tW.grad.numpy())
    assert good.passed, str(good)
    off = gradcheck(x, W, None, gy, gx=1.01 * tx.grad.numpy(), gW=tW.grad.numpy())
    assert not off.passed and off.wrong == ["gx"], str(off)
