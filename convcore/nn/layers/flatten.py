"""Flatten: (n, c, d_1..d_N) -> (n, c * d_1 * ... * d_N), C order as in PyTorch."""
from __future__ import annotations

import math

from .base import Layer


class Flatten(Layer):
    type_name = "flatten"

    def output_shape(self, in_shape):
        return (math.prod(in_shape),)

    def forward(self, x, training=False):
        self._shape = x.shape
        return x.reshape(x.shape[0], -1)

    def backward(self, gy):
        return gy.reshape(self._shape)
