"""A small network's loss and every parameter gradient against the same network in PyTorch
(weights copied, float64), for 1-D, 2-D and 3-D inputs, and the losses on extreme logits."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from convcore import nn

CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
MAXPOOL = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}
AVGPOOL = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}

SPEC = [
    {"type": "conv", "out_channels": 4, "kernel_size": 3, "padding": "same"},
    {"type": "batchnorm"},
    {"type": "relu"},
    {"type": "maxpool", "kernel_size": 2},
    {"type": "conv", "out_channels": 6, "kernel_size": 3, "stride": 2, "padding": 1, "groups": 2},
    {"type": "leaky_relu", "negative_slope": 0.05},
    {"type": "avgpool", "kernel_size": 2, "stride": 1},
    {"type": "flatten"},
    {"type": "dense", "out_features": 5},
    {"type": "tanh"},
    {"type": "dense", "out_features": 3},
]
SIZES = {1: (10,), 2: (8, 10), 3: (8, 6, 8)}


def torch_forward(spec, params, x, nd):
    """The same network written directly with torch.nn.functional (training-mode batchnorm)."""
    t = x
    for i, layer in enumerate(spec):
        p = {k.split(".", 1)[1]: v for k, v in params.items() if k.startswith(f"{i}.")}
        kind = layer["type"]
        if kind == "conv":
            pad = "same" if layer.get("padding") == "same" else layer.get("padding", 0)
            t = CONV[nd](t, p["W"], p["b"], stride=layer.get("stride", 1), padding=pad, groups=layer.get("groups", 1))
        elif kind == "batchnorm":
            t = F.batch_norm(t, None, None, p["gamma"], p["beta"], training=True, eps=1e-5)
        elif kind == "relu":
            t = F.relu(t)
        elif kind == "leaky_relu":
            t = F.leaky_relu(t, layer["negative_slope"])
        elif kind == "maxpool":
            t = MAXPOOL[nd](t, layer["kernel_size"])
        elif kind == "avgpool":
            t = AVGPOOL[nd](t, layer["kernel_size"], layer["stride"])
        elif kind == "flatten":
            t = t.flatten(1)
        elif kind == "dense":
            t = F.linear(t, p["W"], p["b"])
        elif kind == "tanh":
            t = torch.tanh(t)
    return t


@pytest.mark.parametrize("loss", ["cross_entropy", "mse"])
@pytest.mark.parametrize("nd", [1, 2, 3])
def test_network_matches_torch(nd, loss):
    rng = np.random.default_rng(nd)
    model = nn.Sequential.from_spec(SPEC, (2,) + SIZES[nd], seed=nd, dtype="float64")
    for p in model.parameters().values():  # move gamma/beta/b off their trivial init
        p += 0.1 * rng.standard_normal(p.shape)
    x = rng.standard_normal((5, 2) + SIZES[nd])
    y = rng.integers(0, 3, 5)

    out = model.forward(x, training=True)
    value, gout = nn.get_loss(loss)(out, y)
    model.backward(gout)

    tp = {k: torch.tensor(v, requires_grad=True) for k, v in model.parameters().items()}
    tout = torch_forward(SPEC, tp, torch.tensor(x), nd)
    ty = torch.tensor(y)
    tloss = F.cross_entropy(tout, ty) if loss == "cross_entropy" else F.mse_loss(tout, F.one_hot(ty, 3).double())
    tloss.backward()

    np.testing.assert_allclose(out, tout.detach().numpy(), rtol=1e-10, atol=1e-12)
    assert value == pytest.approx(tloss.item(), rel=1e-12)
    grads = model.gradients()
    assert set(grads) == set(tp)
    for k, t in tp.items():
        np.testing.assert_allclose(grads[k], t.grad.numpy(), rtol=1e-9, atol=1e-12, err_msg=k)


def test_batchnorm_running_stats_match_torch():
    rng = np.random.default_rng(0)
    layer = nn.BatchNorm(momentum=0.2)
    layer.build((3, 4, 5), rng, np.float64)
    tm = torch.nn.BatchNorm2d(3, momentum=0.2, dtype=torch.float64)
    for _ in range(3):
        x = rng.standard_normal((4, 3, 4, 5)) * 2 + 1
        layer.forward(x, training=True)
        tm(torch.tensor(x))
    np.testing.assert_allclose(layer.buffers["running_mean"], tm.running_mean.numpy(), rtol=1e-12)
    np.testing.assert_allclose(layer.buffers["running_var"], tm.running_var.numpy(), rtol=1e-12)
    tm.eval()
    x = rng.standard_normal((2, 3, 4, 5))
    np.testing.assert_allclose(layer.forward(x, training=False), tm(torch.tensor(x)).detach().numpy(), rtol=1e-12)


def test_cross_entropy_stable_on_huge_logits():
    logits = np.array([[1000.0, -1000.0, 0.0], [-5e3, 5e3, 5e3 - 1.0]])
    y = np.array([1, 2])
    value, g = nn.softmax_cross_entropy(logits, y)
    t = torch.tensor(logits, requires_grad=True)
    tl = F.cross_entropy(t, torch.tensor(y))
    tl.backward()
    assert np.isfinite(value) and value == pytest.approx(tl.item(), rel=1e-12)
    np.testing.assert_allclose(g, t.grad.numpy(), atol=1e-15)


def test_loss_label_errors_name_values():
    with pytest.raises(ValueError, match=r"labels must be in \[0, 3\), got min 0 max 3"):
        nn.softmax_cross_entropy(np.zeros((2, 3)), np.array([0, 3]))


@pytest.mark.parametrize("kw", [dict(kernel_size=2), dict(kernel_size=3, stride=2), dict(kernel_size=3, stride=1)])
def test_maxpool_ties_route_gradient_like_torch(kw):
    """Many equal values: the gradient goes to the first maximum of each window, as in PyTorch."""
    x = np.random.default_rng(0).integers(0, 3, (2, 3, 7, 8)).astype(np.float64)
    gy_shape = (2, 3) + tuple((d - kw["kernel_size"]) // kw.get("stride", kw["kernel_size"]) + 1 for d in (7, 8))
    gy = np.random.default_rng(1).standard_normal(gy_shape)
    layer = nn.MaxPool(**kw)
    layer.build((3, 7, 8), None, np.float64)
    y = layer.forward(x)
    gx = layer.backward(gy)
    t = torch.tensor(x, requires_grad=True)
    ty = F.max_pool2d(t, kw["kernel_size"], kw.get("stride"))
    ty.backward(torch.tensor(gy))
    np.testing.assert_array_equal(y, ty.detach().numpy())
    np.testing.assert_allclose(gx, t.grad.numpy(), rtol=1e-15)
