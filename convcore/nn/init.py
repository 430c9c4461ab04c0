"""Weight initialisation: He (Kaiming) normal for ReLU nets, Glorot (Xavier) uniform otherwise, and
zeros (the last layer of a residual branch: the block starts as the identity, as in Goyal et al. 2017).

fan_in / fan_out count the inputs / outputs that touch one weight:
Dense W (out, in): fan_in = in;  Conv W (c_O, c_I/g, k...): fan_in = c_I/g * prod(k),
fan_out = c_O/g * prod(k)  (the same convention as PyTorch).
"""
from __future__ import annotations

import math

import numpy as np

INITS = ("he", "glorot", "zeros")


def fans(shape: tuple, groups: int = 1) -> tuple:
    """(fan_in, fan_out) of a Dense (out, in) or Conv (c_O, c_I/g, k...) weight shape."""
    receptive = math.prod(shape[2:]) if len(shape) > 2 else 1
    return shape[1] * receptive, shape[0] // groups * receptive


def init_weight(rng: np.random.Generator, shape: tuple, method: str, dtype, groups: int = 1):
    """A NumPy array of ``shape`` drawn by ``method`` ("he", "glorot" or "zeros")."""
    fan_in, fan_out = fans(shape, groups)
    if method == "he":
        w = rng.standard_normal(shape) * math.sqrt(2.0 / fan_in)
    elif method == "zeros":
        w = np.zeros(shape)
    elif method == "glorot":
        limit = math.sqrt(6.0 / (fan_in + fan_out))
        w = rng.uniform(-limit, limit, size=shape)
    else:
        raise ValueError(f"init must be one of {INITS}, got {method!r}")
    return w.astype(dtype)


def check_init(method) -> str:
    if method not in INITS:
        raise ValueError(f"init must be one of {INITS}, got {method!r}")
    return method
