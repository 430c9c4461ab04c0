"""The same network on CuPy (or its strict CPU stand-in) and NumPy (float64): outputs, loss and gradients agree."""
import numpy as np
import pytest

from convcore import nn

SPEC = [
    {"type": "conv", "out_channels": 4, "kernel_size": 3, "padding": "same"},
    {"type": "batchnorm"},
    {"type": "relu"},
    {"type": "maxpool", "kernel_size": 2},
    {"type": "conv", "out_channels": 6, "kernel_size": 3, "stride": 2, "padding": 1},
    {"type": "avgpool", "kernel_size": 2, "stride": 1},
    {"type": "dropout", "rate": 0.3},
    {"type": "flatten"},
    {"type": "dense", "out_features": 3},
]


@pytest.mark.parametrize("nd", [2, 3])
def test_cupy_matches_numpy(gpu_backend, nd):
    xp = gpu_backend.xp
    in_shape = (2,) + (8,) * nd
    x = np.random.default_rng(0).standard_normal((4,) + in_shape)
    y = np.array([0, 1, 2, 1])
    cpu = nn.Sequential.from_spec(SPEC, in_shape, seed=1, dtype="float64")
    gpu = nn.Sequential.from_spec(SPEC, in_shape, seed=1, dtype="float64", xp=xp)
    results = []
    for model, on in ((cpu, np), (gpu, xp)):
        model.reseed(3, 0)
        out = model.forward(on.asarray(x), training=True)
        value, g = nn.softmax_cross_entropy(out, on.asarray(y))
        model.backward(g)
        results.append((float(value), {k: gpu_backend.to_numpy(v) for k, v in model.gradients().items()}))
    assert results[0][0] == pytest.approx(results[1][0], rel=1e-10)
    for k, v in results[0][1].items():
        np.testing.assert_allclose(results[1][1][k], v, rtol=1e-8, atol=1e-12, err_msg=k)


DENSE = {"graph": [
    {"name": "e", "type": "conv", "out_channels": 4, "kernel_size": 3, "padding": "same"},
    {"type": "group_norm", "groups": 2},
    {"type": "relu"},
    {"type": "maxpool", "kernel_size": 2},
    {"name": "up", "type": "conv_transpose", "out_channels": 4, "kernel_size": 2, "stride": 2},
    {"name": "lin", "type": "upsample", "scale": 2, "mode": "linear", "input": "e"},
    {"name": "near", "type": "upsample", "scale": 2, "input": "up"},
    {"name": "cat", "type": "concat", "inputs": ["lin", "near"]},
    {"type": "sigmoid"},
    {"name": "logits", "type": "conv", "out_channels": 3, "kernel_size": 1},
], "output": "logits"}


def test_dense_graph_and_fit_match_numpy(gpu_backend):
    """A graph with every new layer, the Dice loss, per-voxel metrics and a clipped, scheduled epoch."""
    xp = gpu_backend.xp
    rng = np.random.default_rng(0)
    x = rng.standard_normal((6, 1, 4, 6, 4))
    y = rng.integers(0, 3, (6, 8, 12, 8))
    options = nn.TrainOptions.from_spec({"schedule": {"type": "cosine", "warmup_epochs": 1}, "clip_norm": 0.1,
                                         "monitor": "val_dice", "keep_best": True})
    results = []
    for on in (np, xp):
        model = nn.build_model(DENSE, (1, 4, 6, 4), seed=2, dtype="float64", xp=on)
        history = nn.fit(model, x[:4], y[:4], nn.Adam(lr=0.01), "dice", 2, 2, 0, x[4:], y[4:], options=options)
        out = nn.predict_outputs(model, x, loss="dice", task="segment")
        results.append((history, {k: gpu_backend.to_numpy(v) for k, v in out.items()}))
    (h_cpu, o_cpu), (h_dev, o_dev) = results
    for a, b in zip(h_cpu, h_dev):
        for k in ("train_loss", "val_loss", "val_dice", "lr"):
            assert a[k] == pytest.approx(b[k], rel=1e-9, abs=1e-12), k
    for k, v in o_cpu.items():
        np.testing.assert_allclose(o_dev[k], v, rtol=1e-8, atol=1e-12, err_msg=k)
