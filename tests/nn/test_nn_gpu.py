"""The same network on CuPy and NumPy (float64): outputs, loss and gradients agree."""
import numpy as np
import pytest

from convcore import backend, nn

pytestmark = pytest.mark.gpu

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


@pytest.mark.skipif(not backend.cupy_available(), reason="needs CuPy and a CUDA device")
@pytest.mark.parametrize("nd", [2, 3])
def test_cupy_matches_numpy(nd):
    import cupy

    in_shape = (2,) + (8,) * nd
    x = np.random.default_rng(0).standard_normal((4,) + in_shape)
    y = np.array([0, 1, 2, 1])
    cpu = nn.Sequential.from_spec(SPEC, in_shape, seed=1, dtype="float64")
    gpu = nn.Sequential.from_spec(SPEC, in_shape, seed=1, dtype="float64", xp=cupy)
    results = []
    for model, xp in ((cpu, np), (gpu, cupy)):
        model.reseed(3, 0)
        out = model.forward(xp.asarray(x), training=True)
        value, g = nn.softmax_cross_entropy(out, xp.asarray(y))
        model.backward(g)
        results.append((value, {k: cupy.asnumpy(v) if xp is cupy else v for k, v in model.gradients().items()}))
    assert results[0][0] == pytest.approx(results[1][0], rel=1e-10)
    for k, v in results[0][1].items():
        np.testing.assert_allclose(results[1][1][k], v, rtol=1e-8, atol=1e-12, err_msg=k)
