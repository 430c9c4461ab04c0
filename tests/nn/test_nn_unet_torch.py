"""The example 3-D U-Net (examples/unet-3d-segmentation.json: transposed convolutions, concatenated
skips) and a residual net: loss and every parameter gradient equal those of the same network
written in PyTorch with the weights copied (float64, relative 1e-9); dense losses against PyTorch."""
import json
import pathlib

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from convcore import nn

EXAMPLES = pathlib.Path(__file__).resolve().parents[2] / "examples"
CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
CONV_T = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}
MAXPOOL = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}


def torch_layer(layer: dict, p: dict, ins: list, nd: int):
    """One node of a convcore model spec, written with torch.nn.functional."""
    kind, t = layer["type"], ins[0]
    if kind == "conv":
        pad = "same" if layer.get("padding") == "same" else layer.get("padding", 0)
        return CONV[nd](t, p["W"], p.get("b"), stride=layer.get("stride", 1), padding=pad)
    if kind == "conv_transpose":
        return CONV_T[nd](t, p["W"], p.get("b"), stride=layer.get("stride", 1), padding=layer.get("padding", 0),
                          output_padding=layer.get("output_padding", 0))
    if kind == "maxpool":
        return MAXPOOL[nd](t, layer["kernel_size"])
    if kind == "concat":
        return torch.cat(ins, dim=1)
    if kind == "add":
        return sum(ins[1:], ins[0])
    if kind == "group_norm":
        return F.group_norm(t, layer["groups"], p.get("gamma"), p.get("beta"), eps=1e-5)
    if kind == "batchnorm":
        return F.batch_norm(t, None, None, p["gamma"], p["beta"], training=True, eps=1e-5)
    if kind == "upsample":
        return F.interpolate(t, scale_factor=float(layer["scale"]), mode="nearest")
    return {"relu": F.relu, "tanh": torch.tanh, "sigmoid": torch.sigmoid}[kind](t)


def torch_forward(spec: dict, params: dict, x, nd: int):
    """The graph run node by node in PyTorch: same wiring rules as convcore (default input: previous)."""
    outs, prev = {"x": x}, x
    for i, node in enumerate(spec["graph"]):
        p = {k.split(".", 1)[1]: v for k, v in params.items() if k.startswith(f"{i}.")}
        ins = [outs[n] for n in node["inputs"]] if "inputs" in node else [outs[node["input"]] if "input" in node
                                                                         else prev]
        prev = torch_layer(node, p, ins, nd)
        if "name" in node:
            outs[node["name"]] = prev
    return outs[spec["output"]] if "output" in spec else prev


def run_both(spec, in_shape, y, loss, torch_loss, seed=0):
    rng = np.random.default_rng(seed)
    model = nn.build_model(spec, in_shape, seed=seed, dtype="float64")
    for p in model.parameters().values():   # biases and norms off their trivial init
        p += 0.05 * rng.standard_normal(p.shape)
    x = rng.standard_normal((2,) + in_shape)
    out = model.forward(x, training=True)
    value, gout = nn.get_loss(loss)(out, y)
    model.backward(gout)
    tp = {k: torch.tensor(v, requires_grad=True) for k, v in model.parameters().items()}
    tout = torch_forward(spec, tp, torch.tensor(x), len(in_shape) - 1)
    tloss = torch_loss(tout)
    tloss.backward()
    np.testing.assert_allclose(out, tout.detach().numpy(), rtol=1e-9, atol=1e-12)
    assert value == pytest.approx(tloss.item(), rel=1e-9)
    grads = model.gradients()
    assert set(grads) == set(tp)
    for k, t in tp.items():
        scale = np.abs(t.grad.numpy()).max()
        np.testing.assert_allclose(grads[k], t.grad.numpy(), rtol=1e-9, atol=1e-9 * scale, err_msg=k)


def torch_dice(logits, labels, smooth=1e-5):
    """Soft multi-class Dice loss written out in PyTorch (MONAI's DiceLoss(softmax=True, to_onehot_y=True))."""
    p = torch.softmax(logits, dim=1)
    t = F.one_hot(labels, logits.shape[1]).movedim(-1, 1).double()
    axes = tuple(range(2, logits.ndim))
    dice = (2 * (p * t).sum(axes) + smooth) / (p.sum(axes) + t.sum(axes) + smooth)
    return 1 - dice.mean()


@pytest.mark.parametrize("loss", ["cross_entropy", "dice"])
def test_unet_example_matches_torch(loss):
    spec = json.loads((EXAMPLES / "unet-3d-segmentation.json").read_text())["model"]
    y = np.random.default_rng(1).integers(0, 4, (2, 8, 8, 8))
    ty = torch.tensor(y)
    run_both(spec, (1, 8, 8, 8), y, loss, lambda out: F.cross_entropy(out, ty) if loss == "cross_entropy"
             else torch_dice(out, ty))


def test_residual_net_with_group_norm_and_l1_matches_torch():
    spec = {"graph": [
        {"name": "a", "type": "conv", "out_channels": 4, "kernel_size": 3, "padding": "same"},
        {"type": "group_norm", "groups": 2},
        {"type": "relu"},
        {"name": "b", "type": "conv", "out_channels": 4, "kernel_size": 3, "padding": "same"},
        {"name": "r", "type": "add", "inputs": ["a", "b"]},
        {"type": "upsample", "scale": 2},
        {"type": "maxpool", "kernel_size": 2},
        {"name": "head", "type": "conv", "out_channels": 1, "kernel_size": 1},
        {"name": "out", "type": "add", "inputs": ["x", "head"]},
    ], "output": "out"}
    target = np.random.default_rng(2).standard_normal((2, 1, 6, 5))
    run_both(spec, (1, 6, 5), target, "l1", lambda out: F.l1_loss(out, torch.tensor(target)))


def test_weighted_dense_cross_entropy_matches_torch():
    rng = np.random.default_rng(3)
    logits, labels = rng.standard_normal((3, 4, 5, 6)) * 5, rng.integers(0, 4, (3, 5, 6))
    weights = [0.2, 1.0, 2.5, 0.7]
    value, g = nn.get_loss({"type": "cross_entropy", "class_weights": weights})(logits, labels)
    t = torch.tensor(logits, requires_grad=True)
    tl = F.cross_entropy(t, torch.tensor(labels), weight=torch.tensor(weights, dtype=torch.float64))
    tl.backward()
    assert value == pytest.approx(tl.item(), rel=1e-12)
    np.testing.assert_allclose(g, t.grad.numpy(), rtol=1e-10, atol=1e-15)
    value, g = nn.mse(logits, labels)   # labels one-hot encoded along the channels
    t = torch.tensor(logits, requires_grad=True)
    tl = F.mse_loss(t, F.one_hot(torch.tensor(labels), 4).movedim(-1, 1).double())
    tl.backward()
    assert value == pytest.approx(tl.item(), rel=1e-12)
    np.testing.assert_allclose(g, t.grad.numpy(), rtol=1e-10, atol=1e-15)
