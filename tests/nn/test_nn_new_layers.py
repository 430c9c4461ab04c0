"""The layers for dense networks (conv_transpose, upsample, add, concat, sigmoid, softmax, group_norm):
backward against central finite differences (float64), forward and backward against PyTorch."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_nn_layers_fd import check_layer, numeric_grad

from convcore import nn


@pytest.mark.parametrize("algorithm", ["direct", "fft"])
@pytest.mark.parametrize("in_shape, kw", [
    ((3, 5), dict(out_channels=2, kernel_size=3, stride=2, padding=1, output_padding=1)),
    ((4, 3, 4), dict(out_channels=4, kernel_size=[2, 3], stride=[2, 1], groups=2, dilation=[1, 2])),
    ((2, 3, 2, 3), dict(out_channels=3, kernel_size=2, stride=2, bias=False)),
    ((2, 2, 3, 2, 2), dict(out_channels=2, kernel_size=2, stride=[2, 1, 1, 2])),
])
def test_conv_transpose_fd(in_shape, kw, algorithm):
    check_layer(nn.ConvTransposeND(**kw, algorithm=algorithm), in_shape, batch=2)


@pytest.mark.parametrize("mode", ["nearest", "linear"])
@pytest.mark.parametrize("in_shape, scale", [((2, 5), 3), ((2, 3, 4), [2, 1]), ((1, 3, 2, 3), 2),
                                             ((1, 2, 3, 2, 2), [2, 1, 3, 2])])
def test_upsample_fd(in_shape, scale, mode):
    check_layer(nn.Upsample(scale=scale, mode=mode), in_shape, batch=2)


@pytest.mark.parametrize("in_shape", [(3, 5), (4, 3, 2)])
def test_activations_and_group_norm_fd(in_shape):
    for layer in (nn.Sigmoid(), nn.Softmax(), nn.GroupNorm(groups=in_shape[0] // 2 or 1),
                  nn.GroupNorm(groups=1, affine=False)):
        check_layer(layer, in_shape)


@pytest.mark.parametrize("layer, shapes", [(nn.Add(), [(2, 3, 4)] * 3), (nn.Concat(), [(1, 3, 4), (3, 3, 4)])])
def test_merges_fd(layer, shapes):
    rng = np.random.default_rng(0)
    out_shape = layer.build(shapes, rng, np.float64)
    xs = [rng.standard_normal((2,) + s) for s in shapes]
    r = rng.standard_normal((2,) + out_shape)
    loss = lambda: float((layer.forward(xs) * r).sum())  # noqa: E731
    gxs = layer.backward(r) if layer.forward(xs) is not None else None
    for x, gx in zip(xs, gxs):
        for i, value in numeric_grad(loss, x, rng).items():
            assert gx.reshape(-1)[i] == pytest.approx(value, rel=1e-6, abs=1e-8)


def _torch_grads(fn, x, params, gy):
    """(y, gx, {name: g}) of fn(x, **params) under PyTorch autograd."""
    xt = torch.tensor(x, requires_grad=True)
    pt = {k: torch.tensor(v, requires_grad=True) for k, v in params.items()}
    yt = fn(xt, **pt)
    yt.backward(torch.tensor(gy))
    return yt.detach().numpy(), xt.grad.numpy(), {k: v.grad.numpy() for k, v in pt.items()}


def _ours(layer, x, gy, params=None):
    layer.build(x.shape[1:], np.random.default_rng(0), np.float64)
    layer.params.update(params or {})
    y = layer.forward(x, training=True)
    return y, layer.backward(gy), layer.grads


LINEAR = {1: "linear", 2: "bilinear", 3: "trilinear"}


@pytest.mark.parametrize("nd", [1, 2, 3])
@pytest.mark.parametrize("mode", ["nearest", "linear"])
def test_upsample_matches_torch(nd, mode):
    rng = np.random.default_rng(nd)
    x = rng.standard_normal((2, 3) + (4, 3, 5)[:nd])
    scale = [2, 3, 1][:nd]
    torch_mode = "nearest" if mode == "nearest" else LINEAR[nd]
    gy = rng.standard_normal(x.shape[:2] + tuple(d * s for d, s in zip(x.shape[2:], scale)))
    extra = {} if mode == "nearest" else {"align_corners": False}
    ty, tgx, _ = _torch_grads(lambda t: F.interpolate(t, scale_factor=tuple(float(s) for s in scale),
                                                      mode=torch_mode, **extra), x, {}, gy)
    y, gx, _ = _ours(nn.Upsample(scale=scale, mode=mode), x, gy)
    np.testing.assert_allclose(y, ty, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(gx, tgx, rtol=1e-12, atol=1e-12)


def test_group_norm_sigmoid_softmax_and_conv_transpose_match_torch():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 6, 4, 3, 5))
    gy = rng.standard_normal(x.shape)
    gamma, beta = rng.standard_normal(6), rng.standard_normal(6)
    ty, tgx, tg = _torch_grads(lambda t, weight, bias: F.group_norm(t, 3, weight, bias, eps=1e-5), x,
                               {"weight": gamma, "bias": beta}, gy)
    y, gx, g = _ours(nn.GroupNorm(groups=3), x, gy, {"gamma": gamma, "beta": beta})
    for ours, theirs in ((y, ty), (gx, tgx), (g["gamma"], tg["weight"]), (g["beta"], tg["bias"])):
        np.testing.assert_allclose(ours, theirs, rtol=1e-10, atol=1e-12)
    for layer, fn in ((nn.Sigmoid(), torch.sigmoid), (nn.Softmax(), lambda t: torch.softmax(t, dim=1))):
        ty, tgx, _ = _torch_grads(fn, 30 * x, {}, gy)   # large values: no overflow
        y, gx, _ = _ours(layer, 30 * x, gy)
        np.testing.assert_allclose(y, ty, rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(gx, tgx, rtol=1e-10, atol=1e-14)
    W, b = rng.standard_normal((6, 2, 2, 3, 2)), rng.standard_normal(4)
    gy = rng.standard_normal((2, 4, 8, 5, 10))
    ty, tgx, tg = _torch_grads(lambda t, weight, bias: F.conv_transpose3d(t, weight, bias, stride=2, padding=(0, 1, 0),
                                                                          groups=2), x, {"weight": W, "bias": b}, gy)
    layer = nn.ConvTransposeND(out_channels=4, kernel_size=[2, 3, 2], stride=2, padding=[0, 1, 0], groups=2)
    y, gx, g = _ours(layer, x, gy, {"W": W, "b": b})
    for ours, theirs in ((y, ty), (gx, tgx), (g["W"], tg["weight"]), (g["b"], tg["bias"])):
        np.testing.assert_allclose(ours, theirs, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("kw, pattern", [
    (dict(type="upsample", mode="cubic"), r"mode must be one of \('nearest', 'linear'\), got 'cubic'"),
    (dict(type="upsample", scale=0), r"scale must be an int >= 1, got 0"),
    (dict(type="group_norm", groups=4), r"group_norm needs an input \(c, d...\) whose c is divisible by groups=4"),
    (dict(type="conv_transpose", out_channels=3, kernel_size=2, groups=2),
     r"groups=2 must divide out_channels=3"),
    (dict(type="conv_transpose", out_channels=2, kernel_size=2, stride=2, output_padding=2),
     r"output_padding must be smaller than stride or dilation"),
])
def test_layer_option_errors_name_the_option(kw, pattern):
    with pytest.raises(ValueError, match=pattern):
        nn.validate_spec([kw], (6, 4, 4))


def test_pool_shape_inference_leaves_the_built_layer_alone():
    """output_shape is a pure function: checking another shape does not change a built layer."""
    layer = nn.MaxPool(kernel_size=2)
    layer.build((1, 4, 6), None, np.float64)
    assert layer.output_shape((1, 8, 8, 8)) == (1, 4, 4, 4)
    assert layer.k == (2, 2) and layer.forward(np.zeros((1, 1, 4, 6))).shape == (1, 1, 2, 3)
