"""Max pooling on the compiled host loops (convcore/nn/layers/pool_kernel.py) and on the NumPy path,
against PyTorch's max_pool1d/2d/3d (values and the gradient routed to the first maximum)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from convcore import nn
from convcore.nn.layers import pool_kernel

MAXPOOL = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}

if pool_kernel._loops() is None:   # pragma: no cover - CI installs Numba
    pytest.skip("Numba does not import here: only the NumPy path runs", allow_module_level=True)

CASES = [
    # (x shape, kernel, stride)
    ((4, 3, 8, 8), 2, None),                # tiled, covers x
    ((2, 3, 11, 13), 3, 2),                 # overlapping windows, a ragged edge
    ((3, 2, 17), 4, 3),                     # 1-D, gaps between windows
    ((2, 2, 6, 7, 5), 2, 1),                # 3-D, stride 1
    ((1, 2, 9, 9, 9), 7, 1),                # 343 taps: int32 arg-max
    ((2, 3, 9, 10), (3, 2), (2, 3)),        # per-axis kernel and stride
]


@pytest.fixture(params=["compiled", "numpy"])
def path(request, monkeypatch):
    monkeypatch.setenv("CONVCORE_COMPILED", "1" if request.param == "compiled" else "0")
    return request.param


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape,kernel,stride", CASES)
def test_max_pool_matches_torch(shape, kernel, stride, dtype, path):
    rng = np.random.default_rng(7)
    # few distinct values: many ties, each window's gradient must go to its first maximum
    x = rng.integers(0, 4, shape).astype(dtype) + rng.standard_normal(shape).astype(dtype) * (rng.random(shape) < 0.5)
    layer = nn.MaxPool(kernel, stride)
    layer.build(shape[1:], None, dtype)
    y = layer.forward(x, training=True)
    assert layer._compiled == (path == "compiled")
    gy = rng.standard_normal(y.shape).astype(dtype)
    gx = layer.backward(gy)
    tx = torch.tensor(x, requires_grad=True)
    ty = MAXPOOL[len(shape) - 2](tx, kernel, stride)
    ty.backward(torch.tensor(gy))
    assert y.dtype == dtype and gx.dtype == dtype
    np.testing.assert_array_equal(y, ty.detach().numpy())
    tol = 1e-6 if dtype == np.float32 else 1e-13   # overlapping windows add into a cell in another order
    np.testing.assert_allclose(gx, tx.grad.numpy(), rtol=tol, atol=tol)


def test_nan_and_inf_behave_as_on_the_numpy_path(monkeypatch):
    """NaN wins the maximum (np.maximum) and the arg-max stays on the first tap strictly larger
    before it; +-inf are ordinary values: both paths give the same y and gx."""
    x = np.random.default_rng(8).standard_normal((2, 3, 6, 6))
    x[0, 0, 0, 1] = np.nan          # a NaN after the first tap
    x[0, 1, 2, 2] = np.nan          # a NaN first
    x[1, 2, 3, 3], x[1, 2, 5, 5] = np.inf, -np.inf
    gy = np.random.default_rng(9).standard_normal((2, 3, 3, 3))
    results = []
    for flag in ("1", "0"):
        monkeypatch.setenv("CONVCORE_COMPILED", flag)
        layer = nn.MaxPool(2)
        layer.build((3, 6, 6), None, np.float64)
        results.append((layer.forward(x, training=True), layer.backward(gy), layer._compiled))
    (y1, g1, c1), (y0, g0, c0) = results
    assert c1 and not c0
    np.testing.assert_array_equal(y1, F.max_pool2d(torch.tensor(x), 2).numpy())   # NaN where PyTorch has it
    np.testing.assert_array_equal(y1, y0)
    assert np.isnan(y1[0, 0, 0, 0]) and np.isnan(y1[0, 1, 1, 1]) and y1[1, 2, 1, 1] == np.inf
    np.testing.assert_array_equal(g1, g0)


def test_gy_it_cannot_read_takes_the_checked_path():
    """The compiled backward reads gy without bounds checks, so it runs only for a gy of the forward's
    shape and dtype kind: a wrong shape raises (it once read and wrote past the arrays), a float16
    gy and an empty batch take the NumPy path."""
    layer = nn.MaxPool(2)
    layer.build((2, 8, 8), None, np.float32)
    x = np.random.default_rng(10).standard_normal((2, 2, 8, 8)).astype(np.float32)
    y = layer.forward(x, training=True)
    assert layer._compiled
    for shape in ((2, 2, 5, 5), (2, 2, 3, 3), (4, 2, 4, 4)):
        with pytest.raises(ValueError, match=rf"gy must have the forward output's shape \(2, 2, 4, 4\), got \({shape[0]}, "):
            layer.backward(np.ones(shape, np.float32))
    gx16 = layer.backward(np.ones(y.shape, np.float16))
    gx32 = layer.backward(np.ones(y.shape, np.float32))
    assert gx16.dtype == np.float16
    np.testing.assert_array_equal(gx16.astype(np.float32), gx32)
    empty = layer.forward(np.zeros((0, 2, 8, 8), np.float32), training=True)
    assert empty.shape == (0, 2, 4, 4) and layer.backward(np.zeros((0, 2, 4, 4), np.float32)).shape == (0, 2, 8, 8)


def test_warm_builds_both_dtypes():
    """What a service worker calls at start: the forward and backward loops for float32 and float64."""
    pool_kernel.warm()
    forward, backward = pool_kernel._loops()
    for loop in (forward, backward):
        dtypes = {str(sig[0].dtype) for sig in loop.overloads}
        assert {"float32", "float64"} <= dtypes
