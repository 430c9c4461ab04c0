"""What the tasks compute: convcore calls on stored arrays, moved to the worker's device.

Each op takes ({name: ndarray on the host}, params) and returns (result metadata,
{name: ndarray on the host}); it raises ValueError/TypeError for bad input, as convcore does.
"""
from __future__ import annotations

import time

import numpy as np

import convcore

from . import gradcheck as gradcheck_mod
from .params import conv_kwargs


def _to_device(xp, arrays: dict) -> dict:
    return {k: (None if v is None else xp.asarray(v)) for k, v in arrays.items()}


def _to_host(arrays: dict) -> dict:
    return {k: (v if v is None or isinstance(v, np.ndarray) else v.get()) for k, v in arrays.items()}


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
    """Finite-difference check of convcore's (or the user's) gradients; arrays drawn from a seed if absent."""
    if "x" not in arrays:
        arrays = {**gradcheck_mod.draw_arrays(params), **arrays}
    start = time.perf_counter()
    report = gradcheck_mod.check(arrays, params)
    # Finite differences need float64 on the host, whatever the worker's device.
    return {"report": report, "device": "cpu", "compute_s": time.perf_counter() - start}, {}


def _sync(xp) -> None:
    if xp is not np:
        xp.cuda.Device().synchronize()
