"""The layer protocol shared by every ``convcore.nn`` layer.

A layer is built once for a per-sample input shape (no batch axis), then runs
``forward(x, training)`` / ``backward(gy)`` on batches. Trainable arrays live in
``params`` and their gradients, written by ``backward``, in ``grads`` under the
same names; non-trained state (running statistics) lives in ``buffers``.
``backward`` overwrites ``grads`` (one backward per forward) and returns gx.
"""
from __future__ import annotations

import numpy as np


class Layer:
    """Base class: a stateless identity with no parameters."""

    type_name = ""  # the "type" of this layer in a JSON spec

    def __init__(self):
        self.params: dict = {}
        self.grads: dict = {}
        self.buffers: dict = {}
        self.input_grad = True  # False for the first layer: nothing upstream needs gx
        self.in_shape = None
        self.out_shape = None

    def output_shape(self, in_shape: tuple) -> tuple:
        """Per-sample output shape for a per-sample input shape; ValueError if impossible."""
        return tuple(in_shape)

    def build(self, in_shape: tuple, rng: np.random.Generator, dtype, xp=np) -> tuple:
        """Check the input shape, create parameters (initialised from ``rng``), return the output shape."""
        self.in_shape = tuple(in_shape)
        self.out_shape = self.output_shape(self.in_shape)
        self.init_params(rng, np.dtype(dtype), xp)
        return self.out_shape

    def param_count(self, in_shape: tuple) -> int:
        """Trainable values this layer creates for a per-sample input shape (before building it)."""
        return 0

    def init_params(self, rng, dtype, xp) -> None:
        """Create ``self.params`` / ``self.buffers``; layers without parameters do nothing."""

    def reseed(self, seed_seq) -> None:
        """Reset any random stream (Dropout) from a ``np.random.SeedSequence``."""

    def forward(self, x, training: bool = False):
        raise NotImplementedError

    def backward(self, gy):
        raise NotImplementedError

    def config(self) -> dict:
        """The JSON-able options this layer was built from (without "type")."""
        return {}

    def spec(self) -> dict:
        return {"type": self.type_name, **self.config()}

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self.config().items())
        return f"{type(self).__name__}({opts})"


def check_int(name: str, value, low: int = 1) -> int:
    """An int >= low, or ValueError naming the option."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    return int(value)


def check_float(name: str, value, low: float, high: float, *, high_open: bool = False) -> float:
    """A finite float in [low, high] (or [low, high) with ``high_open``), or ValueError naming the option."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        raise ValueError(f"{name} must be a number, got {value!r}")
    v = float(value)
    if not (low <= v <= high) or (high_open and v >= high):
        bracket = ")" if high_open else "]"
        raise ValueError(f"{name} must be in [{low}, {high}{bracket}, got {value!r}")
    return v


def per_dim_option(name: str, value, ndim: int) -> tuple:
    """An int or a list of ``ndim`` ints (all >= 1) as a tuple."""
    if isinstance(value, (list, tuple)):
        if len(value) != ndim:
            raise ValueError(f"{name} needs one value per spatial dim ({ndim}), got {list(value)}")
        return tuple(check_int(name, v) for v in value)
    return (check_int(name, value),) * ndim


def check_sizes(name: str, value) -> None:
    """Early check of an int-or-list size option whose dimensionality is not known yet."""
    per_dim_option(name, value, len(value) if isinstance(value, (list, tuple)) else 1)


def as_json(value):
    """Tuples to lists so a config round-trips through JSON unchanged."""
    if isinstance(value, tuple):
        return [as_json(v) for v in value]
    return value
