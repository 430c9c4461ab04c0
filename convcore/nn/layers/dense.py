"""Dense (fully connected): x (n, in) -> y (n, out) = x W^T + b, with W (out, in) as in PyTorch."""
from __future__ import annotations

from ..init import check_init, init_weight
from .base import Layer, check_int


class Dense(Layer):
    type_name = "dense"

    def __init__(self, out_features, bias=True, init="he"):
        super().__init__()
        self.out_features = check_int("out_features", out_features)
        if not isinstance(bias, bool):
            raise ValueError(f"bias must be true or false, got {bias!r}")
        self.bias = bias
        self.init = check_init(init)
        self._x = None

    def output_shape(self, in_shape):
        if len(in_shape) != 1:
            raise ValueError(f"dense needs a flat input (features,), got {tuple(in_shape)}; "
                             f"add a 'flatten' or 'global_avgpool' layer before it")
        return (self.out_features,)

    def param_count(self, in_shape):
        return self.out_features * (in_shape[0] + (1 if self.bias else 0))

    def init_params(self, rng, dtype, xp):
        W = init_weight(rng, (self.out_features, self.in_shape[0]), self.init, dtype)
        self.params["W"] = xp.asarray(W)
        if self.bias:
            self.params["b"] = xp.zeros((self.out_features,), dtype=dtype)

    def forward(self, x, training=False):
        self._x = x
        y = x @ self.params["W"].T
        if self.bias:
            y += self.params["b"]
        return y

    def backward(self, gy):
        self.grads["W"] = gy.T @ self._x          # (out, in)
        if self.bias:
            self.grads["b"] = gy.sum(axis=0)
        return gy @ self.params["W"] if self.input_grad else None

    def config(self):
        return {"out_features": self.out_features, "bias": self.bias, "init": self.init}
