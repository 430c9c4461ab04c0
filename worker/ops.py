"""What the tasks compute: convcore calls on stored arrays, moved to the worker's device.

Each op takes ({name: ndarray on the host}, params) and returns (result metadata,
{name: ndarray on the host}); it raises ValueError/TypeError for bad input, as convcore does.
"""
from __future__ import annotations

import time

import numpy as np

import convcore
from convcore import backend

from .kinds import conv_kwargs


def _to_device(xp, arrays: dict) -> dict:
    return {k: (None if v is None else xp.asarray(v)) for k, v in arrays.items()}


def _to_host(arrays: dict) -> dict:
    return {k: backend.to_host(v) for k, v in arrays.items()}


def forward(xp, arrays: dict, params: dict):
    """y = conv(x, W) + b."""
    a = _to_device(xp, arrays)
    op = convcore.Convolution(**conv_kwargs(params))
    start = time.perf_counter()
    y = op.forward(a["x"], a["W"], a.get("b"))
    _sync(xp)
    meta = {"algorithm": op.algorithm_used, "device": op.device, "compute_s": time.perf_counter() - start}
    return meta, _to_host({"y": y})


def backward(xp, arrays: dict, params: dict):
    """(gx, gW, gb) for gy, limited to ``params['need']``."""
    a = _to_device(xp, arrays)
    op = convcore.Convolution(**conv_kwargs(params))
    start = time.perf_counter()
    grads = op.backward(a["gy"], a["x"], a["W"], need=tuple(params.get("need", ("x", "W", "b"))))
    _sync(xp)
    meta = {"algorithm": op.algorithm_used, "device": op.device, "compute_s": time.perf_counter() - start}
    out = {k: v for k, v in grads._asdict().items() if v is not None}
    return meta, _to_host(out)


def gradcheck(xp, arrays: dict, params: dict):
    """convcore.gradcheck's report for the posted (or seeded) arrays and the user's gradients, if any."""
    if "x" not in arrays:
        arrays = {**draw_arrays(params), **arrays}
    start = time.perf_counter()
    # Finite differences run in float64 on the host, whatever the worker's device.
    report = convcore.gradcheck(
        arrays["x"], arrays["W"], arrays.get("b"), arrays.get("gy"), **conv_kwargs(params),
        gx=arrays.get("gx"), gW=arrays.get("gW"), gb=arrays.get("gb"),
        eps=params.get("eps", 1e-6), rtol=params.get("rtol", 1e-5), atol=params.get("atol", 1e-8),
        seed=params.get("seed", 0), max_checks=params.get("samples"))
    return {"report": report.to_dict(), "device": "cpu", "compute_s": time.perf_counter() - start}, {}


def draw_arrays(params: dict) -> dict:
    """x, W (and b when ``bias``) ~ N(0, 1) from ``seed``, of the requested shapes and dtype."""
    rng = np.random.default_rng(params.get("seed", 0))
    dtype = np.float32 if params.get("datatype") == "FP32" else np.float64
    out = {"x": rng.standard_normal(params["x_shape"]).astype(dtype),
           "W": rng.standard_normal(params["W_shape"]).astype(dtype)}
    if params.get("bias", True):
        out["b"] = rng.standard_normal(params["W_shape"][0]).astype(dtype)
    return out


def _sync(xp) -> None:
    backend.synchronize(xp)   # this thread's stream: a fast-lane job does not wait for a training job
