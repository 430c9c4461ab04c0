"""Forward, backward and gradcheck through HTTP -> Celery -> worker -> Redis, against PyTorch and convcore."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from service_helpers import array, tensor

import convcore

TORCH_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
CASES = [  # (x shape, W shape, params)
    ((2, 3, 9), (4, 3, 3), dict(stride=2, padding=1)),
    ((1, 4, 6, 7), (6, 2, 3, 2), dict(padding=[1, 0], dilation=[1, 2], groups=2)),
    ((2, 2, 5, 4, 6), (3, 2, 2, 3, 2), dict(stride=[1, 2, 1], padding=1)),
]


def _draw(x_shape, W_shape, dtype, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(x_shape).astype(dtype), rng.standard_normal(W_shape).astype(dtype),
            rng.standard_normal(W_shape[0]).astype(dtype))


def _torch_forward(x, W, b, params):
    return TORCH_CONV[x.ndim - 2](torch.from_numpy(x), torch.from_numpy(W), torch.from_numpy(b), **params)


@pytest.mark.parametrize("dtype,tol", [(np.float32, 1e-4), (np.float64, 1e-12)], ids=["FP32", "FP64"])
@pytest.mark.parametrize("x_shape,W_shape,params", CASES, ids=["1d", "2d", "3d"])
def test_forward_matches_torch_and_convcore(client, x_shape, W_shape, params, dtype, tol):
    x, W, b = _draw(x_shape, W_shape, dtype)
    r = client.post("/v1/conv/forward", json={"x": tensor(x), "W": tensor(W), "b": tensor(b), **params})
    assert r.status_code == 200, r.text
    body = r.json()
    y = array(body["y"])
    devices = {w["device"] for w in client.get("/readyz").json()["workers"]}  # the CPU, or this machine's GPU
    assert y.dtype == dtype and body["device"] in devices and body["algorithm"] in convcore.engine_names()
    np.testing.assert_allclose(y, _torch_forward(x, W, b, params).numpy(), rtol=tol, atol=tol)
    np.testing.assert_allclose(y, convcore.conv_forward(x, W, b, **params), rtol=tol, atol=tol)


@pytest.mark.parametrize("algorithm", ["direct", "fft"])
def test_padding_mode_and_algorithm_reach_the_worker(client, algorithm):
    """Through HTTP, Celery and the worker: replicate padding as PyTorch does it, with the algorithm asked for."""
    x, W, b = _draw((1, 2, 6, 5), (3, 2, 3, 3), np.float64, seed=6)
    r = client.post("/v1/conv/forward", json={"x": tensor(x), "W": tensor(W), "padding": 1,
                                              "padding_mode": "replicate", "algorithm": algorithm})
    assert r.status_code == 200, r.text
    assert r.json()["algorithm"] == algorithm
    ref = F.conv2d(F.pad(torch.from_numpy(x), (1, 1, 1, 1), mode="replicate"), torch.from_numpy(W)).numpy()
    np.testing.assert_allclose(array(r.json()["y"]), ref, rtol=1e-10, atol=1e-10)
    assert np.abs(ref - F.conv2d(torch.from_numpy(x), torch.from_numpy(W), padding=1).numpy()).max() > 0.1


def test_winograd_by_name_runs_on_a_cpu_worker(client):
    """A CPU-only engine asked for by name: the job goes to a CPU worker (device auto), runs there and
    matches PyTorch, and its answer says so."""
    x, W, b = _draw((2, 3, 9, 8), (4, 3, 3, 3), np.float32, seed=7)
    r = client.post("/v1/conv/forward", json={"x": tensor(x), "W": tensor(W), "b": tensor(b), "padding": 1,
                                              "algorithm": "winograd"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["algorithm"] == "winograd" and body["device"] == "cpu"
    ref = F.conv2d(torch.from_numpy(x), torch.from_numpy(W), torch.from_numpy(b), padding=1).numpy()
    np.testing.assert_allclose(array(body["y"]), ref, rtol=1e-5, atol=1e-5)


def test_forward_hand_computed_nested_data(client):
    """[1,2,3,4] correlated with [1,-1] is [-1,-1,-1]; nested data accepted."""
    r = client.post("/v1/conv/forward", json={
        "x": {"shape": [1, 1, 4], "datatype": "FP64", "data": [[[1, 2, 3, 4]]]},
        "W": {"shape": [1, 1, 2], "datatype": "FP64", "data": [1, -1]},
        "b": {"shape": [1], "datatype": "FP64", "data": [0.5]}, "padding": "valid"})
    assert r.status_code == 200, r.text
    assert r.json()["y"] == {"shape": [1, 1, 3], "datatype": "FP64", "data": [-0.5, -0.5, -0.5]}


@pytest.mark.parametrize("x_shape,W_shape,params", CASES, ids=["1d", "2d", "3d"])
def test_backward_matches_torch_autograd(client, x_shape, W_shape, params):
    x, W, b = _draw(x_shape, W_shape, np.float64, seed=1)
    tx, tW, tb = (torch.tensor(a, requires_grad=True) for a in (x, W, b))
    y = TORCH_CONV[x.ndim - 2](tx, tW, tb, **params)
    gy = np.random.default_rng(2).standard_normal(tuple(y.shape))
    y.backward(torch.from_numpy(gy))
    r = client.post("/v1/conv/backward", json={"gy": tensor(gy), "x": tensor(x), "W": tensor(W), **params})
    assert r.status_code == 200, r.text
    body = r.json()
    for name, ref in (("gx", tx.grad), ("gW", tW.grad), ("gb", tb.grad)):
        np.testing.assert_allclose(array(body[name]), ref.numpy(), rtol=1e-10, atol=1e-10)


def test_backward_computes_only_what_is_needed(client):
    x, W, _ = _draw((1, 2, 6), (3, 2, 3), np.float64)
    gy = np.ones((1, 3, 4))
    r = client.post("/v1/conv/backward", json={"gy": tensor(gy), "x": tensor(x), "W": tensor(W), "need": ["W"]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert "gx" not in body and "gb" not in body, sorted(body)   # only the gradients asked for
    ref = convcore.conv_backward(gy, x, W, need=("W",)).gW
    np.testing.assert_allclose(array(body["gW"]), ref, rtol=1e-12)


def test_gradcheck_from_shapes_and_seed_passes(client):
    tolerances = {"eps": 1e-5, "rtol": 1e-4, "atol": 1e-7}
    r = client.post("/v1/conv/gradcheck", json={"x_shape": [2, 2, 5, 4], "W_shape": [3, 2, 2, 2], "padding": 1,
                                                "stride": [2, 1], "seed": 3, "samples": 8, **tolerances})
    assert r.status_code == 200, r.text
    report = r.json()["report"]
    assert {k: report["settings"][k] for k in tolerances} == tolerances  # what convcore was called with
    assert report["passed"] is True and report["user"] == {}
    assert set(report["finite_differences"]) == {"gx", "gW", "gb"}
    sizes = {"gx": 2 * 2 * 5 * 4, "gW": 3 * 2 * 2 * 2, "gb": 3}
    for name, g in report["finite_differences"].items():
        assert g["checked"] == min(8, sizes[name]) and g["max_abs_error"] < 1e-6, (name, g)


def test_gradcheck_of_user_gradients_catches_a_wrong_one(client):
    """The user's gW is off by 1% in one entry: reported not ok; the correct gx (from torch) is ok."""
    x, W, b = _draw((1, 2, 7), (2, 2, 3), np.float64, seed=4)
    gy = np.random.default_rng(5).standard_normal((1, 2, 5))
    tx, tW = torch.tensor(x, requires_grad=True), torch.tensor(W, requires_grad=True)
    F.conv1d(tx, tW).backward(torch.from_numpy(gy))
    bad_gW = tW.grad.numpy().copy()
    bad_gW[0, 0, 0] *= 1.01
    r = client.post("/v1/conv/gradcheck", json={
        "x": tensor(x), "W": tensor(W), "gy": tensor(gy), "gx": tensor(tx.grad.numpy()), "gW": tensor(bad_gW),
        "samples": 12})
    assert r.status_code == 200, r.text
    report = r.json()["report"]
    assert report["passed"] is False and set(report["user"]) == {"gx", "gW"}
    assert report["user"]["gx"]["passed"] is True and report["user"]["gW"]["passed"] is False
