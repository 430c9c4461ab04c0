"""Gradient check of a convolution by central finite differences (float64, on the host).

The scalar checked is L = sum(gy * conv_forward(x, W, b)), whose exact gradients are
conv_backward(gy, ...). At up to ``samples`` seeded entries of each of x, W and b,
(L(a + eps e_i) - L(a - eps e_i)) / (2 eps) is compared to the analytic gradient,
which is convcore's own or the one the user supplies (gx, gW, gb).
"""
from __future__ import annotations

import numpy as np

import convcore

from .params import conv_kwargs

DEFAULTS = {"eps": 1e-6, "atol": 1e-6, "rtol": 1e-4, "samples": 16}


def draw_arrays(params: dict) -> dict:
    """x, W (and b when ``bias``) ~ N(0, 1) from ``seed``, of the requested shapes and dtype."""
    rng = np.random.default_rng(params.get("seed", 0))
    dtype = np.float32 if params.get("datatype") == "FP32" else np.float64
    out = {"x": rng.standard_normal(params["x_shape"]).astype(dtype),
           "W": rng.standard_normal(params["W_shape"]).astype(dtype)}
    if params.get("bias", True):
        out["b"] = rng.standard_normal(params["W_shape"][0]).astype(dtype)
    return out


def check(arrays: dict, params: dict) -> dict:
    """Report {"ok", "source", "gradients": {name: {"max_abs_err", "max_rel_err", "checked", "ok"}}, ...}."""
    opts = {k: float(params.get(k, v)) for k, v in DEFAULTS.items()}
    kw = conv_kwargs(params)
    x, W = arrays["x"].astype(np.float64), arrays["W"].astype(np.float64)
    b = arrays["b"].astype(np.float64) if arrays.get("b") is not None else None
    rng = np.random.default_rng(params.get("seed", 0))
    y = convcore.conv_forward(x, W, b, **kw)
    gy = arrays["gy"].astype(np.float64) if "gy" in arrays else rng.standard_normal(y.shape)
    user = {k: arrays[g] for k, g in (("x", "gx"), ("W", "gW"), ("b", "gb")) if g in arrays}
    need = ("x", "W") + (("b",) if b is not None else ())
    exact = convcore.conv_backward(gy, x, W, **kw, need=need)._asdict()
    analytic = {k: np.asarray(user.get(k, exact["g" + k]), dtype=np.float64) for k in need}
    inputs = {"x": x, "W": W, "b": b}

    def loss():
        return float(np.sum(gy * convcore.conv_forward(inputs["x"], inputs["W"], inputs["b"], **kw)))

    report = {}
    for name in need:
        a, g = inputs[name], analytic[name]
        if g.shape != a.shape:
            raise ValueError(f"g{name} must have {name}'s shape {a.shape}, got {g.shape}")
        idx = rng.choice(a.size, size=min(int(opts["samples"]), a.size), replace=False)
        numeric = np.empty(len(idx))
        flat = a.reshape(-1)
        for j, i in enumerate(idx):
            keep = flat[i]
            flat[i] = keep + opts["eps"]
            up = loss()
            flat[i] = keep - opts["eps"]
            down = loss()
            flat[i] = keep
            numeric[j] = (up - down) / (2 * opts["eps"])
        err = np.abs(numeric - g.reshape(-1)[idx])
        rel = err / np.maximum(np.abs(numeric), 1e-12)
        report[name] = {"max_abs_err": float(err.max()), "max_rel_err": float(rel.max()), "checked": len(idx),
                        "ok": bool(np.all(err <= opts["atol"] + opts["rtol"] * np.abs(numeric)))}
    return {"ok": all(r["ok"] for r in report.values()), "source": "user" if user else "convcore",
            "gradients": report, **opts}
