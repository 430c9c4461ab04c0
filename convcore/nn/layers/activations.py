"""Element-wise activations; each keeps only what its backward needs (a mask or the output)."""
from __future__ import annotations

from ...backend import get_array_module
from .base import Layer, check_float


class ReLU(Layer):
    type_name = "relu"

    def forward(self, x, training=False):
        self._mask = x > 0
        return x * self._mask

    def backward(self, gy):
        return gy * self._mask


class LeakyReLU(Layer):
    type_name = "leaky_relu"

    def __init__(self, negative_slope=0.01):
        super().__init__()
        self.negative_slope = check_float("negative_slope", negative_slope, 0.0, 1.0)

    def forward(self, x, training=False):
        xp = get_array_module(x)
        self._mask = x > 0
        return xp.where(self._mask, x, x * self.negative_slope)

    def backward(self, gy):
        xp = get_array_module(gy)
        return xp.where(self._mask, gy, gy * self.negative_slope)

    def config(self):
        return {"negative_slope": self.negative_slope}


class Tanh(Layer):
    type_name = "tanh"

    def forward(self, x, training=False):
        self._y = get_array_module(x).tanh(x)
        return self._y

    def backward(self, gy):
        return gy * (1 - self._y * self._y)


class Sigmoid(Layer):
    type_name = "sigmoid"

    def forward(self, x, training=False):
        xp = get_array_module(x)
        e = xp.exp(-xp.abs(x))   # never overflows: 1/(1+e^-x) for x >= 0, e^x/(1+e^x) below
        self._y = xp.where(x >= 0, 1 / (1 + e), e / (1 + e))
        return self._y

    def backward(self, gy):
        return gy * self._y * (1 - self._y)


class Softmax(Layer):
    """Softmax over the channel axis (axis 1) of (n, c) or (n, c, d_1..d_N)."""
    type_name = "softmax"

    def forward(self, x, training=False):
        xp = get_array_module(x)
        e = xp.exp(x - x.max(axis=1, keepdims=True))
        self._y = e / e.sum(axis=1, keepdims=True)
        return self._y

    def backward(self, gy):
        return self._y * (gy - (gy * self._y).sum(axis=1, keepdims=True))
