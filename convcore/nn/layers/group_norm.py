"""Group normalisation (Wu & He 2018, PyTorch's ``GroupNorm``): per sample, over each group of
channels and all spatial positions; no running statistics, so training and evaluation agree.

    x (n, c, d_1..d_N) -> y like x;  gamma, beta (c,);  groups divides c
"""
from __future__ import annotations

from ...backend import get_array_module
from .base import Layer, check_float, check_int


class GroupNorm(Layer):
    type_name = "group_norm"

    def __init__(self, groups, eps=1e-5, affine=True):
        super().__init__()
        self.groups = check_int("groups", groups)
        self.eps = check_float("eps", eps, 0.0, 1.0)
        if self.eps <= 0:
            raise ValueError(f"eps must be > 0, got {eps!r}")
        if not isinstance(affine, bool):
            raise ValueError(f"affine must be true or false, got {affine!r}")
        self.affine = affine

    def output_shape(self, in_shape):
        if len(in_shape) < 1 or in_shape[0] % self.groups:
            raise ValueError(f"group_norm needs an input (c, d...) whose c is divisible by groups={self.groups}, "
                             f"got {tuple(in_shape)}")
        return tuple(in_shape)

    def param_count(self, in_shape):
        return 2 * in_shape[0] if self.affine else 0

    def init_params(self, rng, dtype, xp):
        if self.affine:
            c = self.in_shape[0]
            self.params = {"gamma": xp.ones((c,), dtype=dtype), "beta": xp.zeros((c,), dtype=dtype)}

    def forward(self, x, training=False):
        xp = get_array_module(x)
        n, c = x.shape[:2]
        xg = x.reshape(n, self.groups, -1)                    # (n, G, c/G * prod(d))
        mean = xg.mean(axis=2, keepdims=True)
        var = xg.var(axis=2, keepdims=True)
        self._inv_std = 1 / xp.sqrt(var + x.dtype.type(self.eps))
        self._xhat = ((xg - mean) * self._inv_std).reshape(x.shape)
        if not self.affine:
            return self._xhat
        bshape = (1, c) + (1,) * (x.ndim - 2)
        return self._xhat * self.params["gamma"].reshape(bshape) + self.params["beta"].reshape(bshape)

    def backward(self, gy):
        n, c = gy.shape[:2]
        axes, bshape = (0,) + tuple(range(2, gy.ndim)), (1, c) + (1,) * (gy.ndim - 2)
        g = gy
        if self.affine:
            self.grads["gamma"] = (gy * self._xhat).sum(axis=axes)
            self.grads["beta"] = gy.sum(axis=axes)
            g = gy * self.params["gamma"].reshape(bshape)
        if not self.input_grad:
            return None
        # d xhat / dx through the group's mean and variance (as batchnorm, per sample and group)
        gg, xh = g.reshape(n, self.groups, -1), self._xhat.reshape(n, self.groups, -1)
        gx = self._inv_std * (gg - gg.mean(axis=2, keepdims=True) - xh * (gg * xh).mean(axis=2, keepdims=True))
        return gx.reshape(gy.shape)

    def config(self):
        return {"groups": self.groups, "eps": self.eps, "affine": self.affine}
