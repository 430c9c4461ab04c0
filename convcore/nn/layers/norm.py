"""Batch normalisation over the batch and all spatial axes, for (n, c) or (n, c, d_1..d_N) inputs.

Training uses the batch statistics and updates running ones (momentum and the
unbiased running variance as in PyTorch); evaluation uses the running ones.
    gamma, beta: (c,);  running_mean, running_var: (c,) buffers
"""
from __future__ import annotations

from ...backend import get_array_module
from .base import Layer, check_float


class BatchNorm(Layer):
    type_name = "batchnorm"

    def __init__(self, momentum=0.1, eps=1e-5):
        super().__init__()
        self.momentum = check_float("momentum", momentum, 0.0, 1.0)
        self.eps = check_float("eps", eps, 0.0, 1.0)
        if self.eps <= 0:
            raise ValueError(f"eps must be > 0, got {eps!r}")

    def output_shape(self, in_shape):
        if len(in_shape) < 1:
            raise ValueError(f"batchnorm needs an input (c,) or (c, d_1, ..., d_N), got {in_shape}")
        return tuple(in_shape)

    def param_count(self, in_shape):
        return 2 * in_shape[0]   # gamma and beta per channel

    def init_params(self, rng, dtype, xp):
        c = self.in_shape[0]
        self.params = {"gamma": xp.ones((c,), dtype=dtype), "beta": xp.zeros((c,), dtype=dtype)}
        self.buffers = {"running_mean": xp.zeros((c,), dtype=dtype),
                        "running_var": xp.ones((c,), dtype=dtype)}

    def _shape(self, x):
        """Reduction axes and the broadcast shape of a per-channel vector."""
        return (0,) + tuple(range(2, x.ndim)), (1, -1) + (1,) * (x.ndim - 2)

    def forward(self, x, training=False):
        xp = get_array_module(x)
        axes, bshape = self._shape(x)
        if training:
            mean = x.mean(axis=axes)
            var = x.var(axis=axes)
            count = x.size // x.shape[1]
            if count < 2:
                raise ValueError(f"batchnorm in training needs more than one value per channel, got x shape {x.shape}")
            m = x.dtype.type(self.momentum)
            self.buffers["running_mean"] = (1 - m) * self.buffers["running_mean"] + m * mean
            self.buffers["running_var"] = ((1 - m) * self.buffers["running_var"]
                                           + m * var * x.dtype.type(count / (count - 1)))
        else:
            mean, var = self.buffers["running_mean"], self.buffers["running_var"]
        self._training = training
        self._inv_std = (1 / xp.sqrt(var + x.dtype.type(self.eps))).reshape(bshape)
        self._xhat = (x - mean.reshape(bshape)) * self._inv_std
        return self._xhat * self.params["gamma"].reshape(bshape) + self.params["beta"].reshape(bshape)

    def backward(self, gy):
        axes, bshape = self._shape(gy)
        xhat = self._xhat
        self.grads["gamma"] = (gy * xhat).sum(axis=axes)
        self.grads["beta"] = gy.sum(axis=axes)
        if not self.input_grad:
            return None
        g = gy * self.params["gamma"].reshape(bshape)
        if not self._training:  # running statistics are constants
            return g * self._inv_std
        # d xhat/dx through the batch mean and variance:
        g_mean = g.mean(axis=axes, keepdims=True)
        gx_mean = (g * xhat).mean(axis=axes, keepdims=True)
        return self._inv_std * (g - g_mean - xhat * gx_mean)

    def config(self):
        return {"momentum": self.momentum, "eps": self.eps}
