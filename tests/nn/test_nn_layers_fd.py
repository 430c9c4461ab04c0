"""Every layer's backward against central finite differences of its forward (float64).

The scalar checked is L = sum(forward(x) * r) for a fixed random r, so dL/dy = r.
"""
import numpy as np
import pytest

from convcore import nn

EPS = 1e-6


def numeric_grad(f, a, rng, samples=40):
    """Central differences of scalar f() w.r.t. array ``a`` (perturbed in place) at sampled entries."""
    flat = a.reshape(-1)
    picks = rng.choice(flat.size, size=min(samples, flat.size), replace=False)
    out = {}
    for i in picks:
        old = flat[i]
        flat[i] = old + EPS
        hi = f()
        flat[i] = old - EPS
        lo = f()
        flat[i] = old
        out[int(i)] = (hi - lo) / (2 * EPS)
    return out


def check_layer(layer, in_shape, batch=3, seed=0, training=True, before_forward=lambda: None):
    rng = np.random.default_rng(seed)
    out_shape = layer.build(in_shape, rng, np.float64)
    x = rng.standard_normal((batch,) + tuple(in_shape))
    r = rng.standard_normal((batch,) + out_shape)

    def loss():
        before_forward()
        return float((layer.forward(x, training) * r).sum())

    before_forward()
    y = layer.forward(x, training)
    assert y.shape == (batch,) + out_shape
    gx = layer.backward(r)
    grads = {name: g.copy() for name, g in layer.grads.items()}
    assert set(grads) == set(layer.params)
    for target, analytic in [(x, gx)] + [(layer.params[k], grads[k]) for k in layer.params]:
        assert analytic.shape == target.shape
        for i, value in numeric_grad(loss, target, rng).items():
            assert analytic.reshape(-1)[i] == pytest.approx(value, rel=1e-5, abs=1e-7)


CONV_CASES = [
    dict(in_shape=(2, 9), kw=dict(out_channels=3, kernel_size=3)),
    dict(in_shape=(4, 7, 6), kw=dict(out_channels=4, kernel_size=3, stride=2, padding=1, groups=2)),
    dict(in_shape=(2, 7, 8), kw=dict(out_channels=3, kernel_size=[3, 2], dilation=[2, 1], padding="same")),
    dict(in_shape=(2, 6, 6), kw=dict(out_channels=2, kernel_size=3, padding=2, padding_mode="reflect")),
    dict(in_shape=(2, 6, 5), kw=dict(out_channels=2, kernel_size=3, padding=[[1, 2], [0, 1]], padding_mode="circular", bias=False)),
    dict(in_shape=(2, 5, 4, 6), kw=dict(out_channels=3, kernel_size=2, stride=[1, 2, 2], padding_mode="replicate", padding=1)),
    dict(in_shape=(1, 4, 4, 3, 4), kw=dict(out_channels=2, kernel_size=2)),
]


@pytest.mark.parametrize("algorithm", ["direct", "fft"])
@pytest.mark.parametrize("case", CONV_CASES, ids=lambda c: f"{len(c['in_shape']) - 1}d")
def test_conv(case, algorithm):
    check_layer(nn.ConvND(**case["kw"], algorithm=algorithm), case["in_shape"])


def test_conv_backward_reuses_forward_and_skips_gx_when_first():
    layer = nn.ConvND(out_channels=2, kernel_size=3)
    layer.build((1, 6, 6), np.random.default_rng(0), np.float64)
    layer.input_grad = False
    x = np.random.default_rng(1).standard_normal((2, 1, 6, 6))
    y = layer.forward(x)
    assert layer.backward(np.ones_like(y)) is None and layer.grads["W"].shape == (2, 1, 3, 3)


@pytest.mark.parametrize("in_shape", [(5,), (3, 4, 5)])
def test_dense_and_activations(in_shape):
    if len(in_shape) == 1:
        check_layer(nn.Dense(out_features=4), in_shape)
    for layer in (nn.ReLU(), nn.LeakyReLU(negative_slope=0.1), nn.Tanh(), nn.Flatten()):
        check_layer(layer, in_shape)


@pytest.mark.parametrize("in_shape, kw", [
    ((2, 9), dict(kernel_size=3)),
    ((2, 7, 6), dict(kernel_size=2)),
    ((2, 7, 7), dict(kernel_size=3, stride=2)),          # overlapping windows
    ((2, 6, 5), dict(kernel_size=[2, 3], stride=[2, 1])),
    ((1, 4, 5, 4), dict(kernel_size=2)),
    ((1, 3, 3, 4, 3), dict(kernel_size=[1, 2, 2, 1], stride=1)),
])
@pytest.mark.parametrize("cls", [nn.MaxPool, nn.AvgPool])
def test_pooling(cls, in_shape, kw):
    check_layer(cls(**kw), in_shape)


@pytest.mark.parametrize("in_shape", [(3, 5), (2, 4, 3, 2)])
def test_global_avgpool(in_shape):
    check_layer(nn.GlobalAvgPool(), in_shape)


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("in_shape", [(4,), (3, 5), (2, 4, 3), (2, 3, 2, 3)])
def test_batchnorm(in_shape, training):
    layer = nn.BatchNorm()
    # Non-trivial running statistics and affine parameters for the evaluation branch.
    check_layer(layer, in_shape, batch=4, training=training,
                before_forward=lambda: layer.buffers.update(running_mean=np.full(in_shape[0], 0.3),
                                                            running_var=np.full(in_shape[0], 1.7)))


def test_dropout_fixed_mask():
    layer = nn.Dropout(rate=0.3)
    check_layer(layer, (3, 6), before_forward=lambda: layer.reseed(np.random.SeedSequence(7)))


def test_dropout_statistics_and_eval_identity():
    layer = nn.Dropout(rate=0.25)
    layer.build((1000,), np.random.default_rng(0), np.float64)
    layer.reseed(np.random.SeedSequence(3))
    x = np.ones((20, 1000))
    y = layer.forward(x, training=True)
    assert set(np.unique(y)) == {0.0, 1 / 0.75}
    assert abs((y == 0).mean() - 0.25) < 0.01
    assert layer.forward(x, training=False) is x
